"""Sample-level governors ("sieves"): the registry and the config's `sieve:` list.

`SIEVES` maps a config `op` name to its class; `SieveSpec` is the discriminated union the config validates each
`sieve:` item against (an unknown `op` or key is an error naming it). Add a sieve: one module with its Params and
class, one line in `_CLASSES`.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from djray.ops.sieve.base import Decision, GroupSieve, RankSieve, Sieve, SieveParams
from djray.ops.sieve.exact_dedup import ExactDedup
from djray.ops.sieve.key_dedup import KeyDedup
from djray.ops.sieve.random import RandomSieve

_CLASSES: tuple[type[Sieve], ...] = (KeyDedup, ExactDedup, RandomSieve)
SIEVES: dict[str, type[Sieve]] = {cls.name: cls for cls in _CLASSES}

SieveSpec = Annotated[Union[tuple(cls.Params for cls in _CLASSES)], Field(discriminator="op")]


def build_sieve(params: SieveParams) -> Sieve:
    return SIEVES[params.op](params)


__all__ = ["SIEVES", "SieveSpec", "build_sieve", "Decision", "GroupSieve", "RankSieve", "Sieve", "SieveParams"]
