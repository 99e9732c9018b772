"""Config validation: strict keys, clear messages naming the key, overrides, the config hash."""

from __future__ import annotations

import pytest

from djray.config import ConfigError, apply_overrides, config_sha256, load_config, parse_config

BASE = {"input": {"path": "/data", "format": "webdataset"}, "output": {"path": "/out"}}


def _err(raw) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    return str(e.value)


def test_minimal_config_runs_read_decode_write():
    cfg = parse_config(BASE)
    assert cfg.stages() == ["read", "decode", "sieve:key_dedup", "write"]
    assert cfg.output.mode == "resume"
    assert (cfg.input.columns.key, cfg.input.columns.image, cfg.input.columns.caption) == ("key", "jpg", "txt")


@pytest.mark.parametrize("raw, key", [
    ({**BASE, "inptu": {}}, "inptu: unknown key"),
    ({**BASE, "input": {**BASE["input"], "colums": {}}}, "input.colums: unknown key"),
    ({**BASE, "input": {**BASE["input"], "columns": {"img": "x"}}}, "input.columns.img: unknown key"),
    ({**BASE, "decode": {"caption": {"on_empty": "drop"}}}, "decode.caption.on_empty"),
    ({**BASE, "input": {"path": "/d", "format": "tar"}}, "input.format"),
    ({**BASE, "output": {"path": "/o", "mode": "append"}}, "output.mode"),
    ({"output": {"path": "/o"}}, "input: required key is missing"),
    ({**BASE, "decode": {"max_pixels": 0}}, "decode.max_pixels"),
    ({**BASE, "storage": {"aws_secret_access_key": "x"}}, "storage.aws_secret_access_key: unknown key"),
    ({**BASE, "storage": {"retries": 0}}, "storage.retries"),
    ({**BASE, "storage": {"timeouts": {"connect_s": 0}}}, "storage.timeouts.connect_s"),
    ({**BASE, "storage": {"timeouts": {"read_s": 5}}}, "storage.timeouts.read_s: unknown key"),
    ({**BASE, "ray": {"task_retries": -1}}, "ray.task_retries"),
])
def test_bad_config_names_the_key(raw, key):
    assert key in _err(raw)


def test_non_mapping_config():
    assert "top level must be a mapping" in _err(["a"])


def test_overrides_parse_yaml_scalars_and_create_sections():
    raw = apply_overrides({"input": {"path": "x"}}, ["input.rows_per_block=64", "output.path=/o",
                                                    "decode.caption.on_empty=keep", "ray.address=null"])
    assert raw["input"]["rows_per_block"] == 64
    assert raw["decode"]["caption"]["on_empty"] == "keep"
    assert raw["ray"]["address"] is None


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_bad_override(bad):
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, [bad])


def test_override_fills_a_section_left_empty():
    raw = apply_overrides({"vision": None}, ["vision.weights=random"])  # YAML `vision:` with nothing under it
    assert raw["vision"] == {"weights": "random"}


def test_override_into_scalar_is_an_error():
    with pytest.raises(ConfigError, match="input.path is not a section"):
        apply_overrides({"input": {"path": "x"}}, ["input.path.sub=1"])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("input: {path: /d, format: parquet}\noutput: {path: /o}\n")
    assert load_config(good, ["input.columns.image=image"]).input.columns.image == "image"


def test_config_hash_ignores_runtime_only_keys():
    a = parse_config(BASE)
    b = parse_config({**BASE, "ray": {"address": "auto", "num_cpus": 8}, "output": {"path": "/elsewhere",
                                                                                    "mode": "overwrite"},
                      "storage": {"endpoint_url": "http://x", "retries": 3, "timeouts": {"connect_s": 1, "request_s": 2}},
                      "input": {**BASE["input"], "rows_per_block": 8}})
    c = parse_config({**BASE, "decode": {"min_side": 64}})
    assert config_sha256(a) == config_sha256(b)
    assert config_sha256(a) != config_sha256(c)


def test_storage_defaults_carry_a_throttled_job():
    """At least 10 attempts per request: with one request in five throttled, 10 failures in a row are ~1e-7."""
    from djray.io.fs import Storage

    cfg = parse_config(BASE)
    assert cfg.storage.retries >= 10 and cfg.ray.task_retries >= 1
    storage = Storage.of(cfg.storage)
    assert (storage.retries, storage.connect_timeout_s, storage.request_timeout_s) == (
        cfg.storage.retries, cfg.storage.timeouts.connect_s, cfg.storage.timeouts.request_s)
    assert Storage() == storage  # one set of defaults, whichever way a Storage is made


def test_sections_switch_stages_on():
    cfg = parse_config({**BASE, "vision": {"weights": "random", "head": {"kind": "dino_linear", "weights": "random"}},
                        "text": {"mode": "concat"}})
    assert cfg.stages() == ["read", "decode", "vision", "sieve:key_dedup", "text", "write"]
    assert parse_config({**BASE, "text": {"mode": "none"}}).stages() == ["read", "decode", "sieve:key_dedup", "write"]


def test_sieve_list_is_validated_per_op_and_key_dedup_runs_first():
    cfg = parse_config({**BASE, "sieve": [{"op": "exact_dedup"}, {"op": "random", "keep_fraction": 0.3, "seed": 7}]})
    assert [s.op for s in cfg.steps()] == ["key_dedup", "exact_dedup", "random"]
    assert cfg.stages()[2:5] == ["sieve:key_dedup", "sieve:exact_dedup", "sieve:random"]
    assert [s.op for s in parse_config({**BASE, "sieve": [{"op": "key_dedup"}]}).steps()] == ["key_dedup"]
    assert "sieve.0" in _err({**BASE, "sieve": [{"op": "semantic_magic"}]})
    assert "semantic_magic" in _err({**BASE, "sieve": [{"op": "semantic_magic"}]})
    assert "sieve.0.random.colour: unknown key" in _err({**BASE, "sieve": [{"op": "random", "keep_fraction": 0.5,
                                                                            "colour": 1}]})
    assert "sieve.0.random.keep_fraction" in _err({**BASE, "sieve": [{"op": "random", "keep_fraction": 1.5}]})
    assert "key_dedup always runs first" in _err({**BASE, "sieve": [{"op": "random", "keep_fraction": 0.5},
                                                                     {"op": "key_dedup"}]})


def test_signals_from_is_a_runtime_key():
    cfg = parse_config({**BASE, "signals": {"from": "/elsewhere"}})
    assert cfg.signals.from_ == "/elsewhere"
    assert config_sha256(cfg) == config_sha256(parse_config(BASE))
    assert "signals.form: unknown key" in _err({**BASE, "signals": {"form": "/x"}})


def test_text_and_vision_errors_name_their_keys():
    assert "vision.strategy" in _err({**BASE, "vision": {"strategy": "best"}})
    assert "text.mode" in _err({**BASE, "text": {"mode": "poetry"}})
    assert "text.colour: unknown key" in _err({**BASE, "text": {"mode": "concat", "colour": 1}})


def test_rewrite_and_concat_without_class_evidence_are_refused_unless_chosen():
    rewrite = {"mode": "rewrite", "engine": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct"}
    for text in (rewrite, {"mode": "concat"}):
        message = _err({**BASE, "text": text})
        assert message.startswith(f"text.mode: {text['mode']}") and "no `vision:` section" in message
        assert "text.evidence: none" in message
        message = _err({**BASE, "vision": {"weights": "random"}, "text": text})
        assert "vision.head.kind: none" in message and f"text.mode: {text['mode']}" in message
        # the text-only ablation (Tab. 5e) on purpose
        for vision in ({}, {"vision": {"weights": "random"}}):
            cfg = parse_config({**BASE, **vision, "text": {**text, "evidence": "none"}})
            assert cfg.text.evidence == "none"
    cfg = parse_config({**BASE, "vision": {"weights": "random", "head": {"kind": "dino_linear", "weights": "random"}},
                        "text": rewrite})
    assert cfg.text.evidence == "vision"
    assert parse_config({**BASE, "text": {"mode": "text_only"}}).text.mode == "text_only"  # needs no evidence
    assert "text.evidence" in _err({**BASE, "text": {"mode": "concat", "evidence": "clip"}})


def test_a_pasted_api_key_is_never_echoed():
    message = _err({**BASE, "text": {"mode": "concat", "api_key_env": "sk-live-abc123 secret"}})
    assert "text.api_key_env" in message and "sk-live-abc123" not in message
