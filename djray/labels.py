"""Class labels and label prompt templates, shared by the class heads (governance) and zero-shot evaluation
(training): a leaf module, so that the trainer does not import the ops."""

from __future__ import annotations

import importlib.resources as ilr
import os


def read_labels(path: str | None) -> list[str]:
    """One label per line (blank lines ignored); None → the packaged ImageNet-1k names in index order."""
    if path is None:
        text = ilr.files("djray").joinpath("data", "imagenet1k_labels.txt").read_text(encoding="utf-8")
    else:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            text = f.read()
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"vision.head.labels: no labels in {path}")
    return labels


def check_templates(templates: tuple[str, ...]) -> tuple[str, ...]:
    """Prompt templates for label prompts: at least one, each with exactly one `{}` placeholder for the label."""
    if not templates:
        raise ValueError("at least one prompt template is needed")
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}' placeholder for the label")
    return templates
