"""infogrowth against references written here from seed-algorithms §6: the cleaner at its threshold, gains from an
EXACT kNN over the rows accepted before each row (order: blake2b(seed, key)), 99th-percentile normalisation; HNSW
recall is reported and must be near 1 at the reference parameters."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
import sieve_data as D

from djray import schema as S
from djray.config import ConfigError, parse_config
from djray.ops.sieve.infogrowth import InfoGrowthParams
from djray.ops.sieve.inprocess import run_sieves

pytest.importorskip("hnswlib")


@pytest.fixture(scope="module")
def pool():
    table = D.clustered(1500, d=16, seed=5)
    text = D.clustered(1500, d=16, seed=6, exact=0, near=0).column(S.CLIP_IMAGE_EMBEDDING)
    return table.append_column(S.CLIP_TEXT_EMBEDDING, text)


def exact_gains(table, seed, k):
    keys = table.column(S.KEY).to_pylist()
    u = [int.from_bytes(hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest(), "little")
         for key in keys]
    order = sorted(range(len(keys)), key=lambda i: (u[i], keys[i]))
    xi, xt = (D.unit64(table, c)[order] for c in (S.CLIP_IMAGE_EMBEDDING, S.CLIP_TEXT_EMBEDDING))
    raw = np.ones(len(keys))
    for t in range(1, len(keys)):
        kk = min(t, k)
        gi = np.sort(1 - xi[:t] @ xi[t])[:kk].mean()
        gt = np.sort(1 - xt[:t] @ xt[t])[:kk].mean()
        raw[t] = (gi + gt) / 2
    return {keys[i]: raw[j] for j, i in enumerate(order)}


def test_gains_match_exact_knn_and_normalisation(pool):
    params = InfoGrowthParams(align_threshold=-1.0, seed=9)
    out = run_sieves([params], pool)
    assert out.column("keep").to_pylist() == [True] * pool.num_rows
    want = exact_gains(pool, 9, 4)
    keys = out.column(S.KEY).to_pylist()
    got = np.array(out.column("gain_raw").to_pylist())
    ref = np.array([want[key] for key in keys])
    close = np.abs(got - ref) < 1e-5
    print(f"HNSW agreement with exact kNN gains: {close.mean():.4f}")
    assert close.mean() >= 0.99
    assert got[ref == 1.0].tolist() == [1.0]  # the first row in processing order met an empty index: (1, 1)
    q99 = np.percentile(got.astype(np.float64), 99)
    np.testing.assert_array_equal(out.column(S.GAIN).to_numpy(),
                                  np.clip(got / q99, 0, 1).astype(np.float32))


def test_cleaner_threshold_and_quantile(pool):
    score = pool.column(S.CLIP_SCORE).to_numpy()
    t = float(np.float32(0.37))
    out = run_sieves([InfoGrowthParams(align_threshold=t)], pool)
    kept = D.kept_keys(out)
    assert kept == {k for k, s in zip(pool.column(S.KEY).to_pylist(), score) if s >= np.float32(t)}
    assert any(s == np.float32(t) for s in score)  # a row exactly at δ is kept
    dropped = out.filter(pa.compute.invert(out.column("keep")))
    assert set(dropped.column("reason").to_pylist()) == {S.Reason.INFOGROWTH_MISALIGNED}
    out = run_sieves([InfoGrowthParams(align_quantile=0.25)], pool)
    keys = pool.column(S.KEY).to_pylist()
    order = sorted(range(len(keys)), key=lambda i: (-float(score[i]), keys[i]))
    assert D.kept_keys(out) == {keys[i] for i in order[:1500 - 375]}


def test_keep_fraction_keeps_the_top_gains(pool):
    out = run_sieves([InfoGrowthParams(align_threshold=-1.0, keep_fraction=0.4)], pool)
    keys = out.column(S.KEY).to_pylist()
    gain = out.column(S.GAIN).to_numpy()
    order = sorted(range(len(keys)), key=lambda i: (-float(gain[i]), keys[i]))
    assert D.kept_keys(out) == {keys[i] for i in order[:600]}


def test_order_is_independent_of_shards_and_workers(pool, tmp_path, ray_cluster):
    small = pool.slice(0, 600)
    params = InfoGrowthParams(align_quantile=0.1, seed=3)
    local = D.by_key(run_sieves([params], small))
    for shards in (2, 5):
        dist = D.run_distributed(tmp_path / f"s{shards}", small, [params], shards=shards)
        assert D.kept_keys(dist) == D.kept_keys(local)
        np.testing.assert_array_equal(dist.column(S.GAIN).to_numpy(), local.column(S.GAIN).to_numpy())
    part = InfoGrowthParams(align_quantile=0.1, partition="cluster", n_clusters=3)
    dist = D.run_distributed(tmp_path / "c", small, [part], shards=3)
    np.testing.assert_array_equal(dist.column(S.GAIN).to_numpy(),
                                  D.by_key(run_sieves([part], small)).column(S.GAIN).to_numpy())


def test_config_rules():
    base = {"input": {"path": "/x", "format": "webdataset"}, "output": {"path": "/o"}, "clip": {"weights": "random"}}
    text = {"mode": "none", "engine": "transformers", "model": "/models/tiny"}
    recaption = [{"op": "key_dedup"}, {"op": "infogrowth", "align_threshold": 0.2, "recaption": True}]
    for cfg, missing in (({**base}, "text"), ({**base, "text": {"mode": "text_only"}}, "text"),
                         ({"input": base["input"], "output": base["output"], "text": text}, "clip")):
        with pytest.raises(ConfigError) as e:
            parse_config({**cfg, "sieve": recaption})
        message = str(e.value)
        assert message.startswith("sieve.1.infogrowth.recaption: true needs") and f"`{missing}:`" in message
        assert "\n" not in message  # one error, naming the key
    cfg = parse_config({**base, "text": text, "sieve": recaption})
    clean = cfg.steps()[1]
    assert clean.recaption and clean.text.engine == "transformers" and clean.clip.weights == "random"
    assert clean.text.mode == "rewrite"  # the recaption prompt, whatever the text branch's own mode
    with pytest.raises(ConfigError, match="exactly one of align_threshold or align_quantile"):
        parse_config({**base, "sieve": [{"op": "infogrowth"}]})
    cfg = parse_config({**base, "sieve": [{"op": "infogrowth", "align_quantile": 0.1, "hnsw": {"M": 16}}]})
    assert [s.op for s in cfg.steps()] == ["key_dedup", "infogrowth", "infogrowth", "infogrowth"]


def _cleaner_reference(align, again, delta):
    """§6.2 in NumPy: keep iff align >= δ, or align < δ and a recaption scored align' >= δ (NaN: no recaption)."""
    align, again = np.asarray(align, np.float32), np.asarray(again, np.float32)
    d = np.float32(delta)
    return (align >= d) | ((align < d) & ~np.isnan(again) & (again >= d))


def test_cleaner_with_recaptions_at_the_threshold_edge():
    delta = float(np.float32(0.3))
    below = float(np.nextafter(np.float32(delta), np.float32(-1)))
    align = [0.5, delta, below, 0.1, 0.1, 0.2, 0.25, below, 0.0]
    again = [None, None, delta, delta, below, 0.9, None, 0.31, None]  # None: no recaption (e.g. failed validation)
    codes = [None, None, None, None, None, None, "too_long", None, "refusal"]
    n = len(align)
    table = pa.table({S.KEY: [f"r{i}" for i in range(n)], S.CLIP_SCORE: pa.array(align, pa.float32()),
                      S.RECAPTION_SCORE: pa.array(again, pa.float32()), S.RECAPTION_CODE: pa.array(codes),
                      **{c: pa.array(np.random.default_rng(i).normal(size=(n, 4)).tolist(), pa.list_(pa.float32()))
                         for i, c in enumerate((S.CLIP_IMAGE_EMBEDDING, S.CLIP_TEXT_EMBEDDING))}})
    out = run_sieves([InfoGrowthParams(align_threshold=delta, recaption=True)], table)
    ref = _cleaner_reference(align, [np.nan if a is None else a for a in again], delta)
    assert out.column("keep").to_pylist()[:n] == ref.tolist()
    # align' == δ is kept (r3), align' just below δ is not (r4)
    assert ref.tolist() == [True, True, True, True, False, True, False, True, False]
    assert out.column(S.RECAPTION_SCORE).to_pylist() == table.column(S.RECAPTION_SCORE).to_pylist()
    detail = dict(zip(out.column(S.KEY).to_pylist(), out.column("detail").to_pylist()))
    assert detail["r4"] == f"alignment 0.1000 below δ {delta:.4f}; recaption alignment {below:.4f} also below δ"
    assert detail["r6"].endswith("; the recaption failed validation (too_long)")
    assert detail["r8"].endswith("(refusal)") and set(out.column("reason").drop_null().to_pylist()) == {
        S.Reason.INFOGROWTH_MISALIGNED}


def test_cleaner_with_recaptions_and_a_quantile(pool):
    rng = np.random.default_rng(1)
    align = pool.column(S.CLIP_SCORE).to_numpy()
    q = 0.3
    n_drop = int(np.floor(q * len(align) + 0.5))
    delta = np.sort(align)[n_drop]  # δ: the lowest align kept by the quantile on the ORIGINAL aligns
    again = np.where(align < delta, rng.uniform(delta - 0.05, delta + 0.05, len(align)), np.nan).astype(np.float32)
    again[np.flatnonzero(align < delta)[:5]] = delta  # exactly at δ: rescued
    table = pool.append_column(S.RECAPTION_SCORE, pa.array(np.where(np.isnan(again), None, again).tolist(),
                                                           pa.float32()))
    out = run_sieves([InfoGrowthParams(align_quantile=q, recaption=True, seed=2)], table)
    by_key = dict(zip(out.column(S.KEY).to_pylist(), out.column("keep").to_pylist()))
    ref = _cleaner_reference(align, again, delta)
    assert [by_key[k] for k in pool.column(S.KEY).to_pylist()] == ref.tolist()
    rescued = (align < delta) & ref
    assert 5 <= rescued.sum() < (align < delta).sum()  # some rescued, some not
