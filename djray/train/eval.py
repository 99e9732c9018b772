"""Zero-shot classification and image↔text retrieval on FULL images (every patch), like the paper's inference.

* classification (`eval.classification.path`): Parquet with `image` (bytes) + `label`. Classes are the distinct
  labels (sorted); a class embedding is the normalised mean of its normalised template embeddings. top-1 / top-5.
* retrieval (`eval.retrieval.path`): Parquet with `image` + `caption`, row i's caption is image i's pair.
  Recall@{1,5,10} in both directions. A pair counts as found at rank r when fewer than r candidates score strictly
  higher than the true one.

Images get the canonical crop at the model's image size (no flip). Results go to `output.path/eval.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from djray.config import ConfigError
from djray.geometry import DEFAULT_MAX_PIXELS, canonical_crop, open_image
from djray.io.fs import Storage, list_shards, open_sequential, resolve
from djray.train.config import TrainConfig
from djray.train.checkpoint import CHECKPOINTS, META, MODEL_FILE, latest_tag

EVAL_FILE = "eval.json"


# ---- metrics on embeddings (pure numpy; tested on constructed cases) -----------------------------------------------
def _ranks(sim: np.ndarray, true_cols: np.ndarray) -> np.ndarray:
    """For each row, how many candidates score strictly higher than the true column (0 = top-1)."""
    true = sim[np.arange(sim.shape[0]), true_cols][:, None]
    return (sim > true).sum(axis=1)


def zero_shot_metrics(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    ranks = _ranks(np.asarray(image_emb, np.float64) @ np.asarray(class_emb, np.float64).T, np.asarray(labels))
    return {"top1": float((ranks < 1).mean()), "top5": float((ranks < 5).mean())}


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, ks=(1, 5, 10)) -> dict[str, dict[str, float]]:
    sim = np.asarray(image_emb, np.float64) @ np.asarray(text_emb, np.float64).T
    diag = np.arange(sim.shape[0])
    i2t, t2i = _ranks(sim, diag), _ranks(sim.T, diag)
    return {"image_to_text": {f"R@{k}": float((i2t < k).mean()) for k in ks},
            "text_to_image": {f"R@{k}": float((t2i < k).mean()) for k in ks}}


# ---- model loading -----------------------------------------------------------------------------------------------------
def resolve_checkpoint(path: str) -> Path:
    """An output dir, its checkpoints/ dir (→ latest) or one step_* tag dir → the tag dir."""
    p = Path(path).expanduser()
    if (p / CHECKPOINTS).is_dir():
        p = p / CHECKPOINTS
    tag = latest_tag(p) if (p / "latest").exists() else None
    if tag is not None:
        p = p / tag
    if not (p / META).exists():
        raise ConfigError(f"--checkpoint: {path} is not a djray checkpoint (no {META} found)")
    return p


def load_model(cfg: TrainConfig, checkpoint: str):
    import torch

    from djray.train.model import CLIP

    tag_dir = resolve_checkpoint(checkpoint)
    meta = json.loads((tag_dir / META).read_text())
    arch = cfg.model.resolved()
    if meta["arch"] != arch.as_dict():
        raise ConfigError(f"model: the checkpoint is {meta['arch']['name']} at image_size {meta['arch']['image_size']}"
                          f", the config says {arch.name} at {arch.image_size}")
    if (tag_dir / MODEL_FILE).exists():
        state = torch.load(tag_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    else:  # ZeRO-3: consolidate the partitioned fp32 weights
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    model = CLIP(arch, meta.get("loss", "itc"))
    model.load_state_dict(state, strict=True)
    if torch.cuda.is_available():
        model = model.cuda()
    return model.eval(), meta, tag_dir


# ---- data ----------------------------------------------------------------------------------------------------------------
def read_eval_table(uri: str, columns: list[str], key: str, storage: Storage) -> pa.Table:
    try:
        root, rels = list_shards(uri, "parquet", storage)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None
    if not rels:
        raise ConfigError(f"{key}: no Parquet files at {uri}")
    fs, _ = resolve(uri, storage)
    tables = []
    for rel in rels:
        path = f"{root}/{rel}" if root != "/" else f"/{rel}"
        with open_sequential(fs, path) as f:
            pf = pq.ParquetFile(f, pre_buffer=True)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise ConfigError(f"{key}: {rel} lacks column(s) {missing} (needs {columns})")
            tables.append(pf.read(columns=columns))
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise ConfigError(f"{key}: no rows at {uri}")
    return table


def _crops(images: list[bytes], size: int, max_pixels: int) -> np.ndarray:
    return np.stack([canonical_crop(open_image(b, max_pixels), size) for b in images])


def _device(model):
    return next(model.parameters()).device


def _embed_images(model, images: list[bytes], batch_size: int, max_pixels: int) -> np.ndarray:
    """FULL images: the canonical crop, every patch (no patch indices), as the paper's inference."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            px = torch.from_numpy(_crops(images[i:i + batch_size], model.arch.image_size, max_pixels))
            px = px.to(_device(model))
            out.append(model.encode_image(px, keep_idx=None).float().cpu().numpy())
    return np.concatenate(out)


def _embed_texts(model, tokenize, texts: list[str], batch_size: int) -> np.ndarray:
    import torch

    from djray.train.batches import trim_tokens

    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            tok = torch.from_numpy(trim_tokens(tokenize(texts[i:i + batch_size]))).to(_device(model))
            out.append(model.encode_text(tok).float().cpu().numpy())
    return np.concatenate(out)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def evaluate(cfg: TrainConfig, checkpoint: str, log=print) -> dict[str, Any]:
    from djray.train.loop import _tokenizer

    ev = cfg.eval
    if ev.classification is None and ev.retrieval is None:
        raise ConfigError("eval: configure eval.classification.path and/or eval.retrieval.path")
    storage = Storage.of(cfg.storage)
    cls_table = ret_table = None  # read (and check) the data before loading the model
    if ev.classification is not None:
        cls_table = read_eval_table(ev.classification.path, ["image", "label"], "eval.classification.path", storage)
    if ev.retrieval is not None:
        ret_table = read_eval_table(ev.retrieval.path, ["image", "caption"], "eval.retrieval.path", storage)
    model, meta, tag_dir = load_model(cfg, checkpoint)
    tokenize = _tokenizer(model.arch.context_length)
    max_pixels = int(meta.get("max_pixels") or DEFAULT_MAX_PIXELS)  # the training data's decode.max_pixels
    result: dict[str, Any] = {"checkpoint": str(tag_dir.resolve()), "step": meta["step"], "arch": model.arch.name,
                              "patches": "full"}
    if cls_table is not None:
        labels = [str(v) for v in cls_table.column("label").to_pylist()]
        classes = sorted(set(labels))
        lookup = {c: i for i, c in enumerate(classes)}
        img = _embed_images(model, cls_table.column("image").to_pylist(), ev.batch_size, max_pixels)
        templates = ev.classification.templates
        prompts = [t.format(c) for c in classes for t in templates]
        txt = _embed_texts(model, tokenize, prompts, ev.batch_size).reshape(len(classes), len(templates), -1)
        class_emb = _normalize(_normalize(txt).mean(axis=1))
        m = zero_shot_metrics(img, class_emb, np.array([lookup[v] for v in labels]))
        result["classification"] = {**m, "num_images": len(labels), "num_classes": len(classes)}
        log(f"zero-shot: top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  ({len(labels)} images, {len(classes)} classes)")
    if ret_table is not None:
        img = _embed_images(model, ret_table.column("image").to_pylist(), ev.batch_size, max_pixels)
        txt = _embed_texts(model, tokenize, [str(c) for c in ret_table.column("caption").to_pylist()], ev.batch_size)
        m = retrieval_metrics(img, txt)
        result["retrieval"] = {**m, "num_pairs": int(img.shape[0])}
        for direction, vals in m.items():
            log(f"retrieval {direction}: " + "  ".join(f"{k} {v:.4f}" for k, v in vals.items()))
    out = Path(cfg.output.path)
    out.mkdir(parents=True, exist_ok=True)
    (out / EVAL_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result
