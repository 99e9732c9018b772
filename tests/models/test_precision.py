"""`precision: auto` (djray/models/precision.py): bf16 on CUDA and on CPUs with AMX, fp32 on CPUs without bf16
instructions, else measured."""

from __future__ import annotations

import pytest

from djray.models.precision import cpu_flags, resolve_precision


def test_set_precisions_are_kept():
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, "cpu", flags=set())["chosen"] == p


def test_cuda_and_amx_cpus_choose_bf16_without_a_probe():
    def never(precision):
        raise AssertionError("no probe expected")

    assert resolve_precision("auto", "cuda", never)["chosen"] == "bf16"
    rec = resolve_precision("auto", "cpu", never, flags={"avx2", "amx_bf16"})
    assert rec["chosen"] == "bf16" and "amx_bf16" in rec["why"]


def test_other_cpus_are_probed_and_the_faster_precision_wins():
    calls = []
    rec = resolve_precision("auto", "cpu", calls.append, flags={"avx2", "avx512_bf16"})  # no AMX: measured
    assert set(calls) == {"fp32", "bf16"} and len(calls) == 6  # a warm-up and two timed batches each
    s = rec["probe_s"]
    assert rec["chosen"] == ("bf16" if s["bf16"] < s["fp32"] else "fp32") and "probe" in rec["why"]


def test_cpus_without_any_bf16_instruction_choose_fp32_without_a_probe():
    def never(precision):
        raise AssertionError("no probe expected")

    for flags in ({"avx", "avx2", "fma"}, {"avx512f", "avx512_vnni"}, {"fp", "asimd", "sve"}):  # AVX2, AVX-512, ARM
        rec = resolve_precision("auto", "cpu", never, flags=flags)
        assert rec["chosen"] == "fp32" and "without bf16 instructions" in rec["why"] and "probe_s" not in rec


def test_bf16_instructions_without_amx_and_unreadable_flags_are_probed():
    for flags in ({"avx2", "avx_ne_convert"}, {"fp", "asimd", "bf16"}, set()):
        calls = []
        rec = resolve_precision("auto", "cpu", calls.append, flags=flags)
        assert len(calls) == 6 and set(rec["probe_s"]) == {"fp32", "bf16"}, flags


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(f)) == {"fpu", "sse", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
    arm = tmp_path / "cpuinfo_arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n")
    assert cpu_flags(str(arm)) == {"fp", "asimd", "sve", "bf16", "i8mm"}


def test_the_vision_op_records_precision_and_threads():
    from djray._compat import patch_torchvision

    patch_torchvision()
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from djray.ops.base import Resources
    from djray.ops.vision.dino_patch import DinoPatchScorer
    from djray.ops.vision.params import VisionParams

    before = torch.get_num_threads()
    try:
        op = DinoPatchScorer(VisionParams(model="test_vit", weights="random", image_size=160),
                             Resources(num_cpus=0.5, num_gpus=0, pool_size=1, batch_size=4, threads=1))
        op.setup()
        rec = op.describe()
        assert torch.get_num_threads() == 1 and rec["threads"] == 1 and rec["resources"]["threads"] == 1
        assert rec["precision"]["requested"] == "auto" and rec["precision"]["chosen"] in ("fp32", "bf16")
        assert op.precision == rec["precision"]["chosen"] and rec["precision"]["why"]
    finally:
        torch.set_num_threads(before)


def test_block_probe_runs_one_block_on_random_tokens_in_the_precision_asked():
    torch = pytest.importorskip("torch")
    from djray.models.precision import block_probe

    seen = []

    class Block(torch.nn.Module):
        def forward(self, x):
            seen.append((tuple(x.shape), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return x

    run = block_probe(Block(), tokens=197, width=384, device="cpu")
    run("fp32")
    run("bf16")
    assert seen[0][:2] == ((8, 197, 384), False)
    assert seen[1] == ((8, 197, 384), True, torch.bfloat16)
    block_probe(Block(), tokens=50, width=768, device="cpu", batch=4, seq_first=True)("fp32")
    assert seen[2][0] == (50, 4, 768)


def test_the_vision_op_probes_its_first_block_not_whole_forwards(monkeypatch):
    """On a CPU without AMX the probe times one block (a whole-forward probe took 59 s on an AVX2 CPU)."""
    from djray._compat import patch_torchvision

    patch_torchvision()
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    import djray.models.dino as dino
    import djray.models.precision as precision
    import djray.ops.vision.dino_patch as dino_patch
    from djray.ops.base import Resources
    from djray.ops.vision.params import VisionParams

    forwards, probes = [], []
    real_forward, real_probe = dino.forward_dino, dino_patch.block_probe
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2", "avx512_bf16"})
    monkeypatch.setattr(dino, "forward_dino", lambda *a, **k: forwards.append(1) or real_forward(*a, **k))
    monkeypatch.setattr(dino_patch, "block_probe", lambda *a, **k: probes.append(a) or real_probe(*a, **k))
    before = torch.get_num_threads()
    try:
        op = dino_patch.DinoPatchScorer(VisionParams(model="test_vit", weights="random", image_size=160),
                                        Resources(num_cpus=1, num_gpus=0, pool_size=1, batch_size=4, threads=1))
        op.setup()
    finally:
        torch.set_num_threads(before)
    rec = op.describe()["precision"]
    assert forwards == [] and set(rec["probe_s"]) == {"fp32", "bf16"} and "probe" in rec["why"]
    (block, tokens, width, device), = probes
    grid = op.backbone["grid_h"] * op.backbone["grid_w"]
    assert block is op.model.blocks[0] and tokens == grid + op.model.num_prefix_tokens and width == op.model.embed_dim
