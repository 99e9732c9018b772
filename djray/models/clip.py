"""open_clip models (the clip branch and the `clip_zeroshot` class head): build one from any weights source.

`build_clip(name, weights)` creates `open_clip.create_model(name)` and loads its weights from ``hub`` (open_clip's
pretrained tag: ``hub:TAG``, or the model's ``openai`` tag when it has one, else its first), ``random`` (seeded),
or a ``file:``/``s3://`` checkpoint (`open_clip.load_checkpoint`, strict). The description it returns goes into the
manifest: name, source, tag, file and parameter checksums, input size and normalisation.

`input_size(name)` reads the model's input size from open_clip's packaged JSON config without importing torch, so
the plan (which crop decode emits) is known before any worker starts.

This module imports no other djray module but `_compat` and `models.weights` (ARCHITECTURE §3).
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from djray._compat import patch_torchvision
from djray.models import weights as W

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def input_size(name: str) -> int:
    """Side of the square image `name` takes (open_clip's `vision_cfg.image_size`)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "model_configs", f"{name}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                size = json.load(f)["vision_cfg"]["image_size"]
            return int(size[0] if isinstance(size, (list, tuple)) else size)
    patch_torchvision()
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {name!r}")
    size = cfg["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def default_tag(open_clip, name: str, key: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not tags:
        raise ValueError(f"{key}: open_clip has no pretrained weights for {name!r}")
    return "openai" if "openai" in tags else tags[0]


def build_clip(name: str, weights: str, seed: int = 0, device: str = "cpu", cache_dir: str | None = None,
               key: str = "clip.weights") -> tuple[Any, dict[str, Any]]:
    """(open_clip model in eval mode without gradients, description); `key` names the config key in errors."""
    import torch

    patch_torchvision()
    import open_clip

    src = W.parse_source(weights)
    desc: dict[str, Any] = {"model": name, "weights": str(src)}
    if src.kind == "hub":
        tag = src.location or default_tag(open_clip, name, key)
        try:
            model = open_clip.create_model(name, pretrained=tag)
        except Exception as e:  # noqa: BLE001 - network / hub errors
            raise RuntimeError(f"{key}: hub download of {name!r}/{tag} failed ({type(e).__name__}: {e}); offline "
                               "machines need weights: file:PATH or s3://bucket/key") from e
        desc["pretrained"] = tag
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=None)
        if src.kind in ("file", "s3"):
            path = W.fetch(src, cache_dir)
            desc["file_sha256"] = W.sha256_file(path)
            try:
                open_clip.load_checkpoint(model, path, strict=True)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"{key} ({src}): weights do not fit open_clip {name!r} ({type(e).__name__}: "
                                 f"{str(e)[:300]})") from e
        else:
            desc["seed"] = seed
    model = model.eval().requires_grad_(False).to(device)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    desc.update(image_size=list(size) if isinstance(size, (tuple, list)) else [size, size],
                mean=list(cfg.get("mean", OPENAI_MEAN)), std=list(cfg.get("std", OPENAI_STD)),
                state_sha256=W.state_sha256(model.state_dict()))
    return model, desc


def encode_text(model: Any, tokens: Any) -> Any:
    """`model.encode_text(tokens)` (unnormalised) computed on the tokens up to the last pooled position only.

    A causal text tower (open_clip's `CLIP`: causal `attn_mask`, pooled at the end-of-text token) gives each position
    an output that depends on earlier positions only, so the padding after the batch's last end-of-text token cannot
    change the pooled feature: cutting the batch to that length gives the same embedding (to float rounding) at a
    fraction of the cost — web captions are ~10–30 of the 77 tokens. Any other text tower runs whole.
    """
    import torch

    from open_clip.transformer import text_global_pool

    pool = getattr(model, "text_pool_type", None)
    causal = getattr(model, "attn_mask", None) is not None and hasattr(model, "token_embedding")
    if not causal or pool not in ("argmax", "eos") or tokens.ndim != 2 or tokens.shape[0] == 0:
        return model.encode_text(tokens)
    eos = getattr(model, "text_eos_id", None)
    if pool == "eos" and eos is None:
        return model.encode_text(tokens)
    last = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == eos).int().argmax(dim=-1)
    n = int(last.max()) + 1
    tokens = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, tokens, pool, eos_token_id=eos)
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
