"""Every shipped config passes `djray validate` (governance configs against a local corpus instead of their bucket),
and the paper-reproduction presets carry the paper's settings and say which table row they reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest

from djray import cli
from djray.config import load_config
from djray.sample_data import write_sample_corpus

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml"))
TRAIN = {p for p in CONFIGS if "train" in p.relative_to(REPO / "configs").parts}
PAPER = REPO / "configs" / "paper"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shipped")
    write_sample_corpus(str(root / "corpus"), 4, 1, "webdataset", seed=1)
    return root


def test_every_config_is_found():
    names = {str(p.relative_to(REPO / "configs")) for p in CONFIGS}
    assert {"cc3m_juicer.yaml", "demo.yaml", "paper/juicer.yaml", "paper/juicer_vision_only.yaml",
            "paper/juicer_text_only.yaml", "train/clip_s16.yaml", "paper/train/clip_s16_paper.yaml",
            "paper/train/clip_b16_paper.yaml", "paper/train/clip_l16_paper.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_djray_validate_accepts_every_shipped_config(path, corpus, capsys):
    args = ["validate", str(path)]
    if path not in TRAIN:  # read a local corpus instead of the config's bucket; nothing is written
        args += ["--set", f"input.path={corpus / 'corpus'}", "--set", "input.format=webdataset",
                 "--set", f"output.path={corpus / 'out'}"]
    assert cli.main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("train config OK" if path in TRAIN else "config OK")
    assert not (corpus / "out").exists()


def test_validate_refuses_a_bad_training_config(tmp_path, capsys):
    bad = tmp_path / "t.yaml"
    bad.write_text((PAPER / "train" / "clip_s16_paper.yaml").read_text() + "\n")
    assert cli.main(["validate", str(bad), "--set", "patches.ratio=0.5"]) == 2
    assert "patches.ratio only apply to patches.mode: rescore" in capsys.readouterr().err
    assert cli.main(["validate", str(bad), "--set", "deepspeed.config.gradient_accumulation_steps=2"]) == 2
    assert "train.allow_small_contrastive_batch" in capsys.readouterr().err


def test_paper_governance_presets():
    juicer = load_config(PAPER / "juicer.yaml")
    v, t = juicer.vision, juicer.text
    assert (v.model, v.ratio, v.strategy, v.image_size) == ("vit_small_patch16_224.dino", 0.5, "topk", 224)
    assert (v.head.kind, v.head.threshold, v.head.prob) == ("dino_linear", 0.7, "softmax")
    assert (t.mode, t.evidence, t.engine, t.prompt) == ("rewrite", "vision", "vllm", None)
    assert "qwen" in t.model.lower() and "instruct" in t.model.lower()
    vision_only = load_config(PAPER / "juicer_vision_only.yaml")
    assert vision_only.text.mode == "none" and vision_only.vision.ratio == 0.5
    text_only = load_config(PAPER / "juicer_text_only.yaml")
    assert (text_only.text.mode, text_only.text.evidence) == ("rewrite", "none")
    assert text_only.vision.head.kind == "none" and text_only.text.model == t.model
    # juicer.yaml's phase A is cc3m_juicer.yaml's (same signals parameters): one can reuse the other's with signals.from
    from djray.config import params_of

    cc3m = load_config(REPO / "configs" / "cc3m_juicer.yaml")
    assert params_of(cc3m.vision) == params_of(v) and params_of(cc3m.decode) == params_of(juicer.decode)
    assert params_of(cc3m.input) == params_of(juicer.input)
    headers = {p.name: p.read_text().split("\n\n")[0] for p in PAPER.glob("*.yaml")}
    assert 'Tab. 2, row "DataJuicer"' in headers["juicer.yaml"]
    assert 'Tab. 5e, row "none"' in headers["juicer_vision_only.yaml"]
    assert 'Tab. 5e, row "text-only"' in headers["juicer_text_only.yaml"]
    assert "prob: sigmoid" in headers["juicer.yaml"] and "evidence_per_image" in headers["juicer.yaml"]


@pytest.mark.parametrize("size", ["s", "b", "l"])
def test_paper_training_presets(size):
    from djray.train.config import load_train_config

    path = PAPER / "train" / f"clip_{size}16_paper.yaml"
    cfg = load_train_config(path)
    tr = cfg.train
    assert cfg.model.arch == f"clip_{size}16" and cfg.patches.mode == "kept" and cfg.loss == "itc"
    assert (tr.epochs, tr.batch_size, tr.lr, tr.weight_decay, tuple(tr.betas)) == (50, 1024, 5e-4, 0.05, (0.9, 0.999))
    assert (tr.full_patch_tuning, tr.grad_clip, tr.precision) == (0.0, None, "fp32")
    assert cfg.grad_accum() == 1 and cfg.ray.num_workers == 8
    header = path.read_text().split("\ndata:")[0]
    assert "Reproduces: " in header and ("Tab. 2" if size == "s" else "Fig. 3 Middle") in header
    for value in ("3e-4", "5e-5", "5×10⁻⁴", "uses 5e-4"):  # the paper's three learning rates and the choice
        assert value in header
