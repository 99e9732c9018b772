"""CLIP training on governed data (DeepSpeed; in process, Ray Train workers or the deepspeed launcher).

Importing this package is cheap (no torch, no DeepSpeed): the heavy modules load when a command runs.

    djray train CONFIG [--set k=v ...]
    djray eval CONFIG --checkpoint PATH [--set k=v ...]
    python -m djray.train CONFIG [--set k=v ...]        # = djray train; djray.jobs.train calls main()
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from djray.train.run import main as _main

    return _main(argv)


__all__ = ["main"]
