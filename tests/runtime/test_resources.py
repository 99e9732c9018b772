"""Model actors sized to the live cluster (djray/runtime/resources.py) and kept out of the decode tasks.

The resolution is checked on `Cluster` values written here (2 cores, a 4-token test instance, GPUs, an attached
cluster); the plan test builds the real Ray Data plan on the session's Ray instance and reads its physical plan."""

from __future__ import annotations

import pytest

from djray.config import ConfigError
from djray.ops.base import Op, Resources
from djray.runtime.resources import TASK_CPUS, Cluster, resolve_phase

class Model(Op):
    name = "model"
    stage = "vision"
    stateful = True

class Clip(Model):
    name = "clip"

class Decode(Op):
    name = "decode"


class SafeModel(Model):
    """A model whose __call__ may run on several threads at once (DINO, CLIP)."""

    name = "safe"
    thread_safe = True

def _auto(**kw) -> Resources:
    return Resources(num_cpus=kw.get("num_cpus"), num_gpus=kw.get("num_gpus"), pool_size=kw.get("pool_size"),
                     threads=kw.get("threads"), calls=kw.get("calls"))

TWO_CORES = Cluster(cpus=2, gpus=0, cores=2, fixed=True)

def test_no_gpu_one_single_thread_actor_per_core_and_one_cpu_left_for_the_read_tasks():
    op = Model(None, _auto())
    resolve_phase([Decode(), op], TWO_CORES)
    r = op.resources
    assert (r.pool_size, r.num_cpus, r.num_gpus, r.threads) == (2, 0.5, 0.0, 1)
    sixteen = Model(None, _auto())
    resolve_phase([sixteen], Cluster(cpus=16, gpus=0, cores=16, fixed=True))
    assert sixteen.resources.pool_size == 16 and sixteen.resources.threads == 1
    assert sixteen.resources.pool_size * sixteen.resources.num_cpus == pytest.approx(16 - TASK_CPUS)

def _shape(r: Resources) -> tuple:
    return r.pool_size, r.num_cpus, r.threads, r.calls


def test_a_thread_safe_model_on_a_local_instance_runs_one_batch_per_core_in_one_actor():
    op = SafeModel(None, _auto())
    lines = resolve_phase([Decode(), op], TWO_CORES)
    assert _shape(op.resources) == (1, 1.0, 1, 2) and op.resources.num_gpus == 0.0
    assert lines == ["vision: 1 actor(s) x 1 CPU, 2 batches at once of 1 torch thread(s) each (no GPU, 2 cores, "
                     "2 CPU tokens, 1 kept for read/decode tasks)"]
    sixteen = SafeModel(None, _auto())  # MAX_CALLS per actor: 2 actors x 8 calls
    resolve_phase([sixteen], Cluster(cpus=16, gpus=0, cores=16, fixed=True))
    assert _shape(sixteen.resources) == (2, 7.5, 1, 8)
    twelve = SafeModel(None, _auto())  # every core busy: 2 x 6, not 1 x 8
    resolve_phase([twelve], Cluster(cpus=12, gpus=0, cores=12, fixed=True))
    assert _shape(twelve.resources) == (2, 5.5, 1, 6)
    tokens = SafeModel(None, _auto())  # the test instance: 4 tokens on 2 cores
    resolve_phase([tokens], Cluster(cpus=4, gpus=0, cores=2, fixed=True))
    assert _shape(tokens.resources) == (1, 3.0, 1, 2)


def test_one_call_per_actor_where_the_runtime_cannot_tell_or_the_config_says():
    attached = SafeModel(None, _auto())  # node sizes unknown: one 1-thread actor per core, as before
    resolve_phase([attached], Cluster(cpus=8, gpus=0, cores=8, fixed=False))
    assert _shape(attached.resources) == (8, 0.875, 1, 1)
    gpu = SafeModel(None, _auto())
    resolve_phase([gpu], Cluster(cpus=16, gpus=2, cores=16, fixed=True))
    assert _shape(gpu.resources) == (2, 1.0, 1, 1) and gpu.resources.num_gpus == 1.0
    safe, unsafe = SafeModel(None, _auto()), Model(None, _auto())  # one phase, one rule: equal pools still fuse
    resolve_phase([safe, unsafe], TWO_CORES)
    assert _shape(safe.resources) == _shape(unsafe.resources) == (2, 0.5, 1, 1)
    sized = SafeModel(None, _auto(pool_size=2))  # a pool size in the config: one call per actor
    resolve_phase([sized], TWO_CORES)
    assert _shape(sized.resources) == (2, 0.5, 1, 1)
    asked = SafeModel(None, _auto(calls=4))
    resolve_phase([asked], Cluster(cpus=8, gpus=0, cores=8, fixed=False))
    assert _shape(asked.resources) == (2, 3.5, 1, 4)


def test_cores_not_tokens_bound_the_pool_of_a_local_instance():
    """The test instance: 4 CPU tokens on 2 cores → 2 actors, not 4 competing for 2 cores."""
    op = Model(None, _auto())
    resolve_phase([op], Cluster(cpus=4, gpus=0, cores=2, fixed=True))
    assert (op.resources.pool_size, op.resources.num_cpus, op.resources.threads) == (2, 1.5, 1)

def test_gpus_one_actor_per_gpu():
    op = Model(None, _auto())
    resolve_phase([op], Cluster(cpus=64, gpus=4, cores=64, fixed=False))
    assert (op.resources.pool_size, op.resources.num_gpus, op.resources.num_cpus) == (4, 1.0, 1.0)
    cpu_only = Model(None, _auto(num_gpus=0.0, pool_size=3))  # set in the config: kept
    resolve_phase([cpu_only], Cluster(cpus=64, gpus=4, cores=64, fixed=False))
    assert (cpu_only.resources.pool_size, cpu_only.resources.num_gpus) == (3, 0.0)

def test_explicit_keys_are_kept_when_they_fit():
    op = Model(None, _auto(num_cpus=0.5, pool_size=1))
    resolve_phase([op], TWO_CORES)
    assert (op.resources.pool_size, op.resources.num_cpus, op.resources.threads) == (1, 0.5, 1)

def test_pools_holding_every_cpu_token_are_scaled_down_and_keep_their_threads():
    """1 actor x 2 CPUs on 2 CPUs used to be refused; now it reserves what leaves a read task room, 2 threads."""
    op = Model(None, _auto(num_cpus=2.0, pool_size=1))
    resolve_phase([op], TWO_CORES)
    assert op.resources.num_cpus <= 2 - TASK_CPUS and op.resources.threads == 2
    four = Model(None, _auto(num_cpus=1.0, pool_size=4))
    resolve_phase([four], Cluster(cpus=4, gpus=0, cores=2, fixed=True))
    assert four.resources.pool_size * four.resources.num_cpus <= 4 - TASK_CPUS and four.resources.threads == 1

def test_an_attached_cluster_is_not_scaled_it_may_grow():
    op = Model(None, _auto(num_cpus=2.0, pool_size=4))
    resolve_phase([op], Cluster(cpus=4, gpus=0, cores=4, fixed=False))
    assert op.resources.num_cpus == 2.0

def test_equal_auto_pools_fuse_and_count_once():
    """DINO and CLIP both unset resolve alike → one fused pool (runtime/fuse.py), not twice the tokens."""
    a, b = Model(None, _auto()), Clip(None, _auto())
    resolve_phase([Decode(), a, b], TWO_CORES)
    assert a.resources == b.resources and a.resources.num_cpus == 0.5

def test_a_one_cpu_instance_is_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"vision\.resources: the local Ray instance has 1 CPU"):
        resolve_phase([Model(None, _auto())], Cluster(cpus=1, gpus=0, cores=1, fixed=True))

def test_decode_is_never_fused_into_the_model_actor(ray_cluster, tmp_path):
    """Even with equal CPU requests (1 and 1), the physical plan keeps read → decode in tasks and the model pool as
    its own ActorPoolMapOperator (the stage that holds the accelerator runs the model only)."""
    import ray
    from ray.data._internal.logical.optimizers import get_execution_plan

    from djray.runtime.ray_data import add_op

    def decode(batch):
        return batch

    ds = ray.data.range(8, override_num_blocks=2).map_batches(decode, num_cpus=1, batch_format="pyarrow")
    op = Model(None, Resources(num_cpus=1, num_gpus=0, pool_size=1, batch_size=4))
    ds = add_op(ds, op, str(tmp_path), None)
    physical, _ = get_execution_plan(ds._logical_plan)
    text = physical.dag.dag_str
    assert "ActorPoolMapOperator[MapBatches(_OpActor)]" in text, text
    assert "MapBatches(decode)]" in text and "decode)->" not in text, text
    # a GPU pool too (Ray Data needs a batch size there: one block's worth of rows)
    gpu = Model(None, Resources(num_cpus=1, num_gpus=1, pool_size=1, batch_size=4))
    gpu_ds = ray.data.range(8, override_num_blocks=2).map_batches(decode, num_cpus=1, batch_format="pyarrow")
    gpu_text = get_execution_plan(add_op(gpu_ds, gpu, str(tmp_path), None, block_rows=4)._logical_plan)[0].dag.dag_str
    assert "ActorPoolMapOperator[MapBatches(_OpActor)]" in gpu_text and "decode)->" not in gpu_text, gpu_text
    # and the guard is what keeps them apart: the same stages without it fuse
    fused = ray.data.range(8, override_num_blocks=2).map_batches(decode, num_cpus=1, batch_format="pyarrow")
    fused = fused.map_batches(_Echo, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=1))
    assert "MapBatches(decode)->" in get_execution_plan(fused._logical_plan)[0].dag.dag_str

class _Echo:
    def __call__(self, batch):
        return batch


def test_a_multi_call_pool_runs_its_batches_on_threads_of_one_actor():
    from djray.runtime.ray_data import actor_pool

    threaded = actor_pool(Resources(num_cpus=1, num_gpus=0, pool_size=1, calls=2))
    assert (threaded.min_size, threaded.max_size, threaded.max_concurrent_calls_per_actor) == (1, 1, 2)
    assert threaded._enable_true_multi_threading  # else Ray Data runs the calls' UDF one at a time
    one = actor_pool(Resources(num_cpus=1, num_gpus=1, pool_size=3))
    assert (one.min_size, one.max_size, one.max_concurrent_calls_per_actor) == (3, 3, None)
