"""Ray job entrypoint: train on governed data, like `djray train CONFIG [--set k=v ...]`.

    python -m djray.jobs.train CONFIG [--set dotted.key=value ...]

Installations without the training extra cannot import `djray.train` (it needs DeepSpeed and open_clip): the job then
exits 2 with one message and does no work.
"""

from __future__ import annotations

import importlib
import sys

UNAVAILABLE = "djray train is not available in this installation"


def main(argv: list[str]) -> int:
    try:
        train = importlib.import_module("djray.train")
    except ImportError as e:
        print(f"{UNAVAILABLE} (importing djray.train failed: {e})", file=sys.stderr)
        return 2
    return train.main(list(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
