"""Sample-level governors ("sieves"): the registry and the config's `sieve:` list.

`SIEVES` maps a config `op` name to its parameters; `SieveSpec` is the discriminated union the config validates each
`sieve:` item against (an unknown `op` or key is an error naming it). A configured sieve runs as one or more runtime
steps (`expand_steps`): semdedup as a scan (M per cluster, published) and a cut (ε or an exact count), d4 as
those two and a prune. `build_sieve` makes the sieve object of one step from its parameters' type.

Add a sieve: one module with its Params and class, one line in `_USER` (and in `_STEPS` for its step classes).
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from djray.ops.sieve.base import Decision, GroupSieve, RankSieve, Sieve, SieveParams
from djray.ops.sieve.clip_score import ClipScoreParams, ClipScoreSieve
from djray.ops.sieve.cluster import ClusterParams, ClusterSieve
from djray.ops.sieve.d2pruning import D2PruningParams, D2PruningSieve
from djray.ops.sieve.d4 import D4Params, D4ProtoGlobal, D4ProtoPerCluster
from djray.ops.sieve.exact_dedup import ExactDedup
from djray.ops.sieve.infogrowth import InfoGrowthClean, InfoGrowthGain, InfoGrowthNorm, InfoGrowthParams
from djray.ops.sieve.key_dedup import KeyDedup
from djray.ops.sieve.random import RandomSieve
from djray.ops.sieve.semdedup import SemDedupCut, SemDedupParams, SemDedupScan
from djray.ops.sieve.tldr import TldrItm, TldrParams, TldrStride
from djray.ops.sieve.vas import VasParams, VasSieve

# what a config may name (op → parameters), and the sieve class of every runtime step (by its parameters' type)
_USER: tuple[type[SieveParams], ...] = (KeyDedup.Params, ExactDedup.Params, RandomSieve.Params, ClipScoreParams,
                                        ClusterParams, SemDedupParams, D4Params, VasParams,
                                        D2PruningParams, InfoGrowthParams, TldrParams)
_STEPS: tuple[type[Sieve], ...] = (KeyDedup, ExactDedup, RandomSieve, ClipScoreSieve, ClusterSieve, SemDedupScan,
                                   SemDedupCut, D4ProtoGlobal, D4ProtoPerCluster, VasSieve,
                                   D2PruningSieve, InfoGrowthClean, InfoGrowthGain, InfoGrowthNorm,
                                   TldrItm, TldrStride)
SIEVES: dict[str, type[SieveParams]] = {p.model_fields["op"].default: p for p in _USER}
_BY_PARAMS: dict[type[SieveParams], type[Sieve]] = {cls.Params: cls for cls in _STEPS}

SieveSpec = Annotated[Union[_USER], Field(discriminator="op")]

EMBEDDING_SIEVES = ("cluster", "semdedup", "d4", "d2pruning", "infogrowth", "tldr")  # `embedding: dino | clip_image`
CLIP_SIEVES = ("clip_score", "vas", "d2pruning", "infogrowth", "tldr")  # sieves that read the `clip:` signals


def expand_steps(params: list[SieveParams]) -> list[SieveParams]:
    """Configured sieves → the runtime steps they run as, in order. Cluster columns are prefixed by their k-means's
    tag when the selection runs more than one k-means; two k-means with one tag would publish the same columns."""
    tags = [t for p in params for t in p.kmeans_tags()]
    repeated = sorted({t for t in tags if tags.count(t) > 1})
    if repeated:
        raise ValueError(f"sieve: {', '.join(repeated)} configured twice (their published columns would collide)")
    return [step for p in params for step in p.steps(len(tags) > 1)]


def build_sieve(params: SieveParams) -> Sieve:
    """The sieve of one runtime step (`expand_steps`); a configured single-step sieve is its own step."""
    cls = _BY_PARAMS.get(type(params))
    if cls is None:
        steps = params.steps(False)
        if len(steps) != 1:
            raise ValueError(f"sieve {params.op} runs as {len(steps)} steps: build them from expand_steps()")
        cls, params = _BY_PARAMS[type(steps[0])], steps[0]
    return cls(params)


__all__ = ["SIEVES", "SieveSpec", "build_sieve", "expand_steps", "Decision", "GroupSieve", "RankSieve", "Sieve",
           "SieveParams", "EMBEDDING_SIEVES", "CLIP_SIEVES"]
