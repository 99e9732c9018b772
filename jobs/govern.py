"""`ray job submit --working-dir . -- python jobs/govern.py CONFIG`: the same as `python -m djray.jobs.govern CONFIG`."""

import sys

from djray.jobs.govern import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
