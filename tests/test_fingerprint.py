"""The three fingerprints: which keys shape the signals, the selection and the output — and which shape nothing."""

from __future__ import annotations

from djray.config import parse_config
from djray.fingerprint import fingerprints, step_sha256s

BASE = {"input": {"path": "/data", "format": "webdataset"}, "output": {"path": "/out"},
        "vision": {"weights": "file:/w.pth", "ratio": 0.5}}
LISTING = [("00000.tar", 1000), ("00001.tar", 2000)]


def _fps(overrides: dict | None = None, listing=LISTING):
    raw = {**BASE, **(overrides or {})}
    return fingerprints(parse_config(raw), listing)


def _vision(**kw):
    return {"vision": {**BASE["vision"], **kw}}


def test_patch_selection_and_sieves_change_the_selection_not_the_signals():
    base = _fps()
    for change in (_vision(ratio=0.25), _vision(strategy="uniform"), _vision(seed=3), _vision(strata=2),
                   {"sieve": [{"op": "random", "keep_fraction": 0.5}]}):
        other = _fps(change)
        assert other.signals == base.signals, change
        assert other.selection != base.selection and other.output != base.output, change


def test_model_decode_and_input_shape_the_signals():
    base = _fps()
    for change in (_vision(image_size=256), _vision(aggregation="max_prob"), _vision(weights="file:/other.pth"),
                   _vision(head={"kind": "dino_linear", "weights": "file:/h.pth"}), {"decode": {"min_side": 64}},
                   {"input": {"path": "/data", "format": "parquet"}}):
        assert _fps(change).signals != base.signals, change
    assert _fps(listing=[("00000.tar", 1000), ("00001.tar", 2001)]).signals != base.signals
    assert _fps(listing=LISTING[:1]).signals != base.signals


def test_text_and_compression_change_only_the_output():
    base = _fps()
    for change in ({"text": {"mode": "concat", "evidence": "none"}},
                   {"output": {"path": "/out", "compression": "snappy"}}):
        other = _fps(change)
        assert (other.signals, other.selection) == (base.signals, base.selection), change
        assert other.output != base.output, change


def test_runtime_keys_and_the_input_root_shape_nothing():
    base = _fps()
    same = _fps({"input": {"path": "s3://moved/corpus", "format": "webdataset", "rows_per_block": 8},
                 "output": {"path": "/elsewhere", "mode": "overwrite"}, "ray": {"num_cpus": 2},
                 "storage": {"endpoint_url": "http://x"}, "signals": {"from": "/run1"},
                 **_vision(batch_size=8, resources={"pool_size": 3})})
    assert same == base


def test_with_random_weights_the_seed_also_shapes_the_signals():
    random = {"vision": {"weights": "random"}}
    assert _fps(random).signals != _fps({"vision": {"weights": "random", "seed": 1}}).signals


def test_step_fingerprints_are_prefixes():
    one = parse_config({**BASE, "sieve": [{"op": "exact_dedup"}, {"op": "random", "keep_fraction": 0.5}]})
    two = parse_config({**BASE, "sieve": [{"op": "exact_dedup"}, {"op": "random", "keep_fraction": 0.2}]})
    a, b = step_sha256s(one, "s"), step_sha256s(two, "s")
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert step_sha256s(one, "other signals")[0] != a[0]


def test_the_clip_section_shapes_the_signals_and_its_runtime_keys_nothing():
    base = _fps()
    clip = _fps({"clip": {"weights": "random"}})
    assert clip.signals != base.signals
    for change in ({"weights": "hub:laion400m_e32"}, {"model": "ViT-B-32"}, {"precision": "bf16"}):
        assert _fps({"clip": {"weights": "random", **change}}).signals != clip.signals, change
    same = _fps({"clip": {"weights": "random", "batch_size": 3, "resources": {"pool_size": 2, "num_cpus": 0.5}}})
    assert same == clip


def test_another_semdedup_eps_keeps_the_scan_step_and_changes_the_cut():
    def steps(eps):
        cfg = parse_config({**BASE, "sieve": [{"op": "exact_dedup"}, {"op": "semdedup", "eps": eps}]})
        return step_sha256s(cfg, "s" * 64)

    a, b = steps(0.05), steps(0.07)
    assert len(a) == 4 and a[:3] == b[:3] and a[3] != b[3]  # key_dedup, exact_dedup, semdedup scan | cut


def test_reference_images_shape_their_step_and_the_selection_only():
    cfg = parse_config({**BASE, "clip": {"weights": "random"}, "sieve": [
        {"op": "exact_dedup"}, {"op": "vas", "target": {"kind": "reference", "images": "/ref"}}]})
    a, b = step_sha256s(cfg, "s", {2: "ref-a"}), step_sha256s(cfg, "s", {2: "ref-b"})
    assert a[:2] == b[:2] and a[2] != b[2]  # key_dedup, exact_dedup | vas
    assert step_sha256s(cfg, "s") != a  # no reference fingerprint: another step identity
    fa, fb = fingerprints(cfg, [("a.tar", 1)], {2: "ref-a"}), fingerprints(cfg, [("a.tar", 1)], {2: "ref-b"})
    assert fa.signals == fb.signals and fa.selection != fb.selection and fa.output != fb.output
