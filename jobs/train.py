"""Ray job entrypoint: train on governed data, like `djray train CONFIG [--set k=v ...]`.

    python jobs/train.py CONFIG [--set dotted.key=value ...]

Calls `djray.train.main(argv)` (or runs `python -m djray.train` when the module has no `main`). Installations without
the training extra have no `djray.train`: the job then exits 2 with one message and does no work.
"""

import importlib
import importlib.util
import runpy
import sys

UNAVAILABLE = "djray train is not available in this installation"


def main(argv):
    try:
        found = importlib.util.find_spec("djray.train") is not None
    except ImportError:  # djray itself is missing
        found = False
    if not found:
        print(f"{UNAVAILABLE} (this djray has no djray.train module)",
              file=sys.stderr)
        return 2
    try:
        train = importlib.import_module("djray.train")
    except ImportError as e:
        print(f"{UNAVAILABLE} (importing djray.train failed: {e})", file=sys.stderr)
        return 2
    entry = getattr(train, "main", None)
    if callable(entry):
        return entry(list(argv))
    sys.argv = ["djray.train", *argv]
    runpy.run_module("djray.train", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
