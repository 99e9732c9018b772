"""The Ray job entrypoints behave like the command line, exit codes included."""

from __future__ import annotations

import importlib

from djray.jobs import govern, train


def test_govern_is_djray_run(tmp_path, capsys):
    bad = tmp_path / "job.yaml"
    bad.write_text("input: {path: /nowhere, format: webdataset}\noutput: {path: /tmp/x}\nvison: {}\n")
    assert govern.main([str(bad)]) == 2  # a config error before any work, naming the key
    assert "vison" in capsys.readouterr().err


def test_train_without_the_training_module_exits_2_with_one_message(monkeypatch, capsys):
    real = importlib.import_module

    def no_train(name, *a, **k):
        if name == "djray.train":
            raise ImportError("No module named 'deepspeed'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_train)
    assert train.main(["cfg.yaml"]) == 2
    err = capsys.readouterr().err
    assert train.UNAVAILABLE in err and "deepspeed" in err


def test_train_passes_its_arguments_to_the_training_main(monkeypatch):
    import djray.train

    seen = []
    monkeypatch.setattr(djray.train, "main", lambda argv: seen.append(argv) or 0)
    assert train.main(["cfg.yaml", "--set", "epochs=2"]) == 0
    assert seen == [["cfg.yaml", "--set", "epochs=2"]]
