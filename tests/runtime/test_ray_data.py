"""Task workers yield the CPU to model actors (djray/runtime/ray_data.py: TASK_NICENESS): a read task and a task stage
run at the lowest priority, a model actor keeps the niceness Ray gave it (15 by default), which is higher."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from djray.ops.base import Op, Resources
from djray.runtime.ray_data import TASK_NICENESS, ShardDatasource, _OpActor, _run_op_task

pytestmark = pytest.mark.skipif(not hasattr(os, "nice"), reason="no process niceness on this platform")


def test_task_stages_and_read_tasks_run_below_model_actors(ray_cluster, tmp_path):
    import ray

    class _Pass(Op):  # defined here: Ray pickles local classes by value (workers cannot import test modules)
        name = "pass"

        def __call__(self, batch):
            return {}

    class _Model(_Pass):
        name = "model"
        stateful = True

    from corpus import sample_members, write_tar

    from djray.io.fs import Storage
    from djray.io.source import ReadSpec, read_shard

    batch = pa.table({"x": [1, 2]})

    @ray.remote(num_cpus=0.1)
    def task_stage():
        for _ in range(3):  # a worker runs many tasks: set once
            _run_op_task(batch, _Pass())
        return os.nice(0)

    write_tar(tmp_path / "in" / "00000.tar", sample_members("a"))
    spec = ReadSpec(str(tmp_path / "in"), "webdataset", Storage(), rows_per_block=10)
    (read,) = ShardDatasource([("00000.tar", 0)], spec).get_read_tasks(1)

    @ray.remote(num_cpus=0.1)
    def read_task():
        rows = sum(block.num_rows for block in read())
        return rows, os.nice(0)

    @ray.remote(num_cpus=0.1)
    class Actor(_OpActor):
        def nice(self):
            return os.nice(0)

    assert ray.get(task_stage.remote()) == TASK_NICENESS == 19
    here = sum(block.num_rows for block in read_shard("00000.tar", 0, spec))  # the same read, in this process
    assert ray.get(read_task.remote()) == (here, TASK_NICENESS) and here >= 1
    actor = Actor.remote(_Model(None, Resources(num_cpus=0.1, num_gpus=0, pool_size=1)), str(tmp_path / "out"),
                         Storage())
    assert ray.get(actor.nice.remote()) < TASK_NICENESS
    ray.kill(actor)
