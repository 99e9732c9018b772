"""`ray job submit --working-dir . -- python jobs/train.py CONFIG`: the same as `python -m djray.jobs.train CONFIG`."""

import sys

from djray.jobs.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
