"""djray from Python: `djray.run` / `djray.validate` with paths, dicts, JobConfigs and `--set`-style overrides, the
typed Manifest, the exceptions, and the runnable example of docs/python.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import djray
from djray import pipeline
from djray.config import load_config, parse_config
from djray.sample_data import write_sample_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api_corpus")
    write_sample_corpus(str(root), 24, 2, "webdataset", seed=11)
    return root


def _config(corpus: Path, out: Path) -> dict:
    return {"input": {"path": str(corpus), "format": "webdataset"}, "output": {"path": str(out)}}


def test_public_names_are_the_runtime_ones():
    from djray.config import ConfigError

    assert djray.ConfigError is ConfigError and djray.JobError is pipeline.JobError
    assert {"run", "validate", "udf", "sieve", "Manifest", "ConfigError", "JobError"} <= set(djray.__all__)
    with pytest.raises(AttributeError):
        djray.no_such_name  # noqa: B018


def test_validate_dict_path_and_jobconfig_agree(tmp_path, corpus):
    raw = _config(corpus, tmp_path / "out")
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    by_dict, by_path = djray.validate(raw), djray.validate(path)
    by_model = djray.validate(load_config(path))
    assert by_dict.shards == by_path.shards == by_model.shards == ["00000.tar", "00001.tar"]
    assert by_dict.fingerprints == by_path.fingerprints == by_model.fingerprints
    assert by_dict.stages == ["read", "decode", "sieve:key_dedup", "write"]
    assert not (tmp_path / "out").exists()  # validate writes nothing


def test_overrides_take_dotted_keys_and_keywords(tmp_path, corpus):
    raw = _config(corpus, tmp_path / "out")
    dotted = djray.validate(raw, **{"decode.min_side": 500})
    keyword = djray.validate(raw, decode__min_side=500)
    assert dotted.config.decode.min_side == keyword.config.decode.min_side == 500
    assert dotted.fingerprints == keyword.fingerprints != djray.validate(raw).fingerprints
    assert "decode" not in raw  # the caller's dict is not modified
    model = parse_config(raw)
    assert djray.validate(model, vision__ratio=0.25).config.vision.ratio == 0.25
    assert model.vision is None


@pytest.mark.parametrize("overrides, key", [({"decode.min_sid": 3}, "decode.min_sid: unknown key"),
                                            ({"vision__ratio": 1.5}, "vision.ratio"),
                                            ({"input.path.x": 1}, "input.path is not a section")])
def test_config_errors_name_the_key_before_any_work(tmp_path, corpus, overrides, key):
    with pytest.raises(djray.ConfigError, match=re.escape(key)):
        djray.run(_config(corpus, tmp_path / "out"), progress=False, **overrides)
    assert not (tmp_path / "out").exists()


def test_bad_config_type_is_a_config_error():
    with pytest.raises(djray.ConfigError, match="expected a YAML path, a dict or a JobConfig"):
        djray.validate(42)


def test_run_returns_the_typed_manifest(ray_cluster, tmp_path, corpus):
    out = tmp_path / "out"
    manifest = djray.run(_config(corpus, out), progress=False, log=lambda m: None)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert isinstance(manifest, djray.Manifest) and manifest.raw == on_disk
    assert manifest.complete and manifest.status == "complete" and manifest.accounting_ok
    assert (manifest.rows_in, manifest.rows_kept, manifest.rows_rejected) == \
        (on_disk["rows_in"], on_disk["rows_kept"], on_disk["rows_rejected"])
    assert manifest.rows_in == 24 and manifest.shards_done == manifest.shards_total == 2
    assert manifest.rejected_by_reason == on_disk["rejected_by_reason"]
    assert manifest["config_sha256"] == manifest.config_sha256 == on_disk["config_sha256"]
    assert djray.Manifest.read(out) == manifest
    assert manifest.summary().startswith("djray 0.1.0: complete (2/2 shards)")
    # a second call resumes: nothing left to stream, same counts
    again = djray.run(_config(corpus, out), progress=False, log=lambda m: None)
    assert again.raw["run"]["rows_processed"] == 0 and again.rows_kept == manifest.rows_kept


def test_docs_python_example_runs(ray_cluster, capsys):
    text = (REPO / "docs" / "python.md").read_text(encoding="utf-8")
    first = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(first, "docs/python.md", "exec"), scope)  # noqa: S102 - the documented example, verbatim
    printed = capsys.readouterr().out
    assert scope["manifest"].complete and "vision.ratio" in printed
    assert scope["checked"].shards == ["00000.tar", "00001.tar"]
