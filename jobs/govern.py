"""Ray job entrypoint: govern a corpus, exactly like `djray run CONFIG [--set k=v ...]`.

    python jobs/govern.py CONFIG [--set dotted.key=value ...] [--no-progress]

On a cluster the job driver attaches to the cluster it runs on (Ray sets RAY_ADDRESS for submitted jobs). Exit codes
are those of `djray run`: 0 completed, 2 configuration error (before any work), 1 the job failed (re-run to resume).
"""

import sys

from djray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
