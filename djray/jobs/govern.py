"""Ray job entrypoint: govern a corpus, exactly like `djray run CONFIG [--set k=v ...]`.

    python -m djray.jobs.govern CONFIG [--set dotted.key=value ...] [--no-progress]

On a cluster the job driver attaches to the cluster it runs on (Ray sets RAY_ADDRESS for submitted jobs). Exit codes
are those of `djray run`: 0 completed, 2 configuration error (before any work), 1 the job failed (re-run to resume).
"""

from __future__ import annotations

import sys

from djray.cli import main as cli_main


def main(argv: list[str]) -> int:
    return cli_main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
