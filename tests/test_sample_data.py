import argparse
import hashlib
import io
import json
import os
import re
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from djray import sample_data
from djray.sample_data import SHAPES, write_sample_corpus

PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
JSON_FIELDS = {"url", "key", "status", "error_message", "width", "height", "original_width", "original_height", "exif",
               "sha256", "caption", "scene"}


def _read_tar(path):
    """Member name -> bytes, in archive order; checks the deterministic member headers on the way."""
    members = {}
    with tarfile.open(path) as tar:
        for info in tar.getmembers():
            assert info.isfile()
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)
            members[info.name] = tar.extractfile(info).read()
    return members


def _samples(tar_paths):
    """key -> (ext, image bytes, caption, meta) over the given shards."""
    out = {}
    for path in tar_paths:
        members = _read_tar(path)
        for key in sorted({name.split(".")[0] for name in members}):
            (img_name,) = [n for n in members if n.startswith(key + ".") and n.split(".")[1] in PIL_FORMAT]
            meta = json.loads(members[f"{key}.json"])
            out[key] = (img_name.split(".")[1], members[img_name], members[f"{key}.txt"].decode("utf-8"), meta)
    return out


@pytest.fixture(scope="module")
def corpus200(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus200")
    return _samples(write_sample_corpus(str(out), 200, 2, "webdataset", seed=0))


def test_webdataset_layout(tmp_path):
    out = tmp_path / "wds"
    paths = write_sample_corpus(str(out), 10, 3, "webdataset")
    assert paths == [str(out / f"{s:05d}.tar") for s in range(3)]
    assert sorted(os.listdir(out)) == ["00000.tar", "00001.tar", "00002.tar"]  # nothing but the shards
    expected_keys = [["000000000", "000000001", "000000002", "000000003"], ["000010000", "000010001", "000010002"],
                     ["000020000", "000020001", "000020002"]]
    for path, keys in zip(paths, expected_keys):
        members = _read_tar(path)
        assert list(members) == sorted(members)
        assert len(members) == 3 * len(keys)
        for key in keys:
            (img_name,) = [n for n in members if n.startswith(key + ".") and not n.endswith((".txt", ".json"))]
            ext = img_name.split(".")[1]
            assert ext in PIL_FORMAT
            image, caption = members[img_name], members[f"{key}.txt"].decode("utf-8")
            meta = json.loads(members[f"{key}.json"])
            assert set(meta) == JSON_FIELDS
            assert meta["key"] == key and meta["caption"] == caption
            assert meta["status"] == "success" and meta["error_message"] is None and meta["exif"] is None
            assert meta["url"] == f"https://example.com/img/{key}.{ext}"
            assert meta["sha256"] == hashlib.sha256(image).hexdigest()
            with Image.open(io.BytesIO(image)) as im:
                assert im.format == PIL_FORMAT[ext]
                assert im.size == (meta["width"], meta["height"]) == (meta["original_width"], meta["original_height"])
            assert 1 <= len(meta["scene"]["objects"]) <= 4
            assert all(o["shape"] in SHAPES for o in meta["scene"]["objects"])


def test_parquet_layout_and_schema(tmp_path):
    out = tmp_path / "pq"
    paths = write_sample_corpus(str(out), 10, 3, "parquet")
    assert paths == [str(out / f"{s:05d}.parquet") for s in range(3)]
    assert sorted(os.listdir(out)) == ["00000.parquet", "00001.parquet", "00002.parquet"]
    tables = [pq.read_table(p) for p in paths]
    for table in tables:
        assert table.schema.remove_metadata() == pa.schema([("key", pa.string()), ("jpg", pa.binary()),
                                                            ("txt", pa.string())])
    assert [t.num_rows for t in tables] == [4, 3, 3]
    assert tables[1].column("key").to_pylist() == ["000010000", "000010001", "000010002"]
    for table in tables:
        for image in table.column("jpg").to_pylist():
            with Image.open(io.BytesIO(image)) as im:
                im.load()
    # same samples as the webdataset output of the same arguments
    wds = _samples(write_sample_corpus(str(tmp_path / "wds"), 10, 3, "webdataset"))
    rows = pa.concat_tables(tables).to_pylist()
    assert [(r["key"], r["jpg"], r["txt"]) for r in rows] == [(k, v[1], v[2]) for k, v in wds.items()]


def test_parquet_row_groups(tmp_path, monkeypatch):
    tiny = {"ext": "png", "image": b"x", "width": 1, "height": 1, "caption": "c", "scene": {}}
    monkeypatch.setattr(sample_data, "make_sample", lambda index, seed=0: tiny)
    (path,) = write_sample_corpus(str(tmp_path), 300, 1, "parquet")
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [256, 44]


def test_counts_across_shards(tmp_path):
    assert [len(r) for r in sample_data._shard_ranges(10, 3)] == [4, 3, 3]
    assert [len(r) for r in sample_data._shard_ranges(9, 4)] == [3, 2, 2, 2]
    assert sample_data._shard_ranges(7, 2) == [range(0, 4), range(4, 7)]
    paths = write_sample_corpus(str(tmp_path), 2, 3, "webdataset")  # more shards than samples: last one empty
    assert [len(_read_tar(p)) for p in paths] == [3, 3, 0]


def test_wide_keys_past_10000_per_shard(tmp_path, monkeypatch):
    tiny = {"ext": "png", "image": b"x", "width": 1, "height": 1, "caption": "c", "scene": {}}
    monkeypatch.setattr(sample_data, "make_sample", lambda index, seed=0: tiny)
    (path,) = write_sample_corpus(str(tmp_path), 10001, 1, "parquet")
    keys = pq.read_table(path).column("key").to_pylist()
    assert keys[0] == "0000000000" and keys[-1] == "0000010000"
    assert len(set(keys)) == 10001


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_deterministic(tmp_path, fmt):
    def run(name, seed):
        paths = write_sample_corpus(str(tmp_path / name), 12, 2, fmt, seed=seed)
        return [open(p, "rb").read() for p in paths]

    first = run("a", 0)
    assert first == run("b", 0)
    other = run("c", 1)
    assert all(x != y for x, y in zip(first, other))


def test_samples_do_not_depend_on_sharding(tmp_path):
    one = _samples(write_sample_corpus(str(tmp_path / "one"), 8, 1, "webdataset", seed=3))
    three = _samples(write_sample_corpus(str(tmp_path / "three"), 8, 3, "webdataset", seed=3))
    assert [v[1:3] for v in one.values()] == [v[1:3] for v in three.values()]


def test_format_mix_and_sizes(corpus200):
    exts, sides = [], []
    for ext, image, _, meta in corpus200.values():
        with Image.open(io.BytesIO(image)) as im:
            im.load()
            assert im.format == PIL_FORMAT[ext] and im.mode == "RGB"
            assert im.size == (meta["width"], meta["height"])
        exts.append(ext)
        sides += [meta["width"], meta["height"]]
    assert len(exts) == 200
    assert {e: exts.count(e) for e in PIL_FORMAT}["jpg"] > 100 and set(exts) == set(PIL_FORMAT)
    assert all(64 <= s <= 1024 for s in sides)
    assert min(sides) < 128 and max(sides) > 700  # a few small and a few large
    assert 200 <= sorted(sides)[len(sides) // 2] <= 600
    assert len({(m["width"], m["height"]) for *_, m in corpus200.values()}) > 100
    assert any(m["width"] != m["height"] for *_, m in corpus200.values())


def test_caption_noise(corpus200):
    captions = [caption for _, _, caption, _ in corpus200.values()]
    assert "" in captions
    assert 0 < captions.count("") <= 20
    assert any(not c.isascii() for c in captions)
    assert any(re.search(r"\b(\w+)\s+\1\b", c) for c in captions)
    assert any(re.search(r"Stock Photo|Getty|Free vector|download", c, re.IGNORECASE) for c in captions)
    assert any("&amp;" in c or "&quot;" in c or "&#" in c or "&nbsp;" in c for c in captions)
    assert any(c.isupper() for c in captions)
    assert any(c != c.strip() or "  " in c for c in captions)
    assert any(re.search(r"\b(red|green|blue|yellow|orange|purple|pink|brown|white|black) (circle|square|triangle|star"
                         r"|ellipse|diamond)\b", c) for c in captions)
    assert len(set(captions)) > 150


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_sample_corpus(str(tmp_path), 10, 1, "tfrecord")
    with pytest.raises(ValueError):
        write_sample_corpus(str(tmp_path), 10, 0, "parquet")
    with pytest.raises(ValueError):
        write_sample_corpus("s3://bucket/out", 10, 1, "parquet")


def test_cli_arguments(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sample_data.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "o"), "--num-samples", "5", "--shards", "2", "--format", "parquet",
                              "--seed", "4"])
    assert sample_data.main(args) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["00000.parquet", "00001.parquet"]
    assert "5 samples" in capsys.readouterr().out
