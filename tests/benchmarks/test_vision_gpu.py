"""benchmarks/vision_gpu.py runs on a machine without Ray: checked here on CPU with a handful of images."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "vision_gpu.py"

CHILD = """
import runpy, sys
sys.argv = [{bench!r}, "--device", "cpu", "--n", "8", "--batch-sizes", "4", "--workers", "2"]
try:
    runpy.run_path({bench!r}, run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("RAY_IMPORTED", "ray" in sys.modules)
"""


def test_gpu_benchmark_runs_on_cpu_without_importing_ray():
    proc = subprocess.run([sys.executable, "-c", CHILD.format(bench=str(BENCH))], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {m.group(1): m.group(0) for m in re.finditer(r"^BENCH name=(\S+) .*$", proc.stdout, re.M)}
    assert {"decode_1_thread", "decode_draft_1_thread", "decode_2_threads", "model_only_b4", "decode_model_b4"} <= set(lines), proc.stdout
    for line in lines.values():
        assert re.search(r" rows=\d+ wall_s=[\d.]+ peak_rss_mb=\d+ img_s=[\d.]+", line), line
    assert "rows=8 " in lines["model_only_b4"] and "rows=8 " in lines["decode_model_b4"]
    assert "op=DinoPatchScorer" in lines["model_only_b4"]
    assert "RAY_IMPORTED False" in proc.stdout
