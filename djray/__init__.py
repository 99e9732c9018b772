"""djray: govern image-text training data on Ray Data.

From Python (docs/python.md): `djray.run(config, **overrides)` / `djray.validate(...)` return a typed `Manifest` /
`Validation` and raise `ConfigError` (before any work) or `JobError`; `djray.udf(name, **params)` gives an op as a Ray
Data UDF; `djray.sieve(name, **params).select(table)` runs a sieve in this process. Imported on first use, so
`import djray` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "run": "djray.api", "validate": "djray.api", "Manifest": "djray.api", "Validation": "djray.api",
    "ConfigError": "djray.config", "JobError": "djray.runtime.cluster",
    "udf": "djray.udfs", "sieve": "djray.sieves",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'djray' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
