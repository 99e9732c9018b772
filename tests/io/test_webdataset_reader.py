"""read_webdataset_shard in-process (no Ray): sample grouping, read-stage rejects, damaged tars, the end marker.

Every test reads a real tar from disk through `pyarrow.fs.LocalFileSystem` and checks the reader's own contract
(djray/io/rows.py): rows in SOURCE_SCHEMA, src_index 0..n-1, then exactly one end-of-shard marker whose
`_shard_rows` is n.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import corpus
from djray import schema as S
from djray.io.rows import BlockBuilder
from djray.io.webdataset import read_webdataset_shard

FS = pafs.LocalFileSystem()
SHARD = "part/shard-00007.tar"
ORDER = 7


def read(path: str | Path, rows_per_block: int = 256) -> tuple[list[pa.Table], list[dict]]:
    """Read a shard; check the marker contract; return (tables, real rows as dicts)."""
    tables = list(read_webdataset_shard(FS, str(path), SHARD, ORDER, rows_per_block))
    assert tables, "a reader always yields at least the marker"
    for t in tables:
        assert t.schema == S.SOURCE_SCHEMA
        assert 0 < t.num_rows <= rows_per_block
    rows = pa.concat_tables(tables).to_pylist()
    marker, real = rows[-1], rows[:-1]
    assert marker[S.SRC_INDEX] == -1
    assert marker[S.REJECT_REASON] == S.END_OF_SHARD
    assert marker[S.REJECT_STAGE] == S.Stage.READ
    assert marker[S.KEY] is None and marker[S.IMAGE] is None
    assert marker[S.SHARD_ROWS] == len(real)
    assert [r[S.SRC_INDEX] for r in real] == list(range(len(real)))
    for r in real:
        assert r[S.SRC_SHARD] == SHARD and r[S.SHARD_ORDER] == ORDER
        assert r[S.SHARD_ROWS] is None
        assert r[S.REJECT_REASON] != S.END_OF_SHARD
        # the stage is set exactly when the row is rejected, and a reader only rejects at the read stage
        assert (r[S.REJECT_STAGE] is None) == (r[S.REJECT_REASON] is None)
        if r[S.REJECT_REASON] is not None:
            assert r[S.REJECT_STAGE] == S.Stage.READ
            assert r[S.REJECT_DETAIL]
    return tables, real


def summary(rows: list[dict]) -> list[tuple]:
    return [(r[S.KEY], r[S.REJECT_REASON]) for r in rows]


def jpeg(seed: int, size=(40, 36)) -> bytes:
    # distinct bytes per sample, so byte-identity checks cannot pass by accident
    return corpus.image_bytes(size=size, color=(seed * 37 % 256, seed * 11 % 256, 90))


def members_n(n: int, prefix: str = "0000") -> tuple[list[tuple[str, bytes]], dict[str, bytes]]:
    members, images = [], {}
    for i in range(n):
        key = f"{prefix}{i:02d}"
        images[key] = jpeg(i)
        members += corpus.sample_members(key, f"caption {i}", image=images[key], json_text=f'{{"key": "{key}"}}')
    return members, images


# ---- well-formed shards ----------------------------------------------------------------------------------------


def test_img2dataset_layout(tmp_path):
    members, images = members_n(4)
    _, rows = read(corpus.write_tar(tmp_path / "s.tar", members))
    assert [r[S.KEY] for r in rows] == list(images)
    for i, r in enumerate(rows):
        assert r[S.REJECT_REASON] is None
        assert r[S.IMAGE] == images[r[S.KEY]]  # original bytes, unchanged
        assert r[S.CAPTION_RAW] == f"caption {i}"
        assert r[S.CAPTION_INVALID_UTF8] is False
        assert r[S.SRC_JSON] == f'{{"key": "{r[S.KEY]}"}}'


def test_missing_txt_and_json_tolerated(tmp_path):
    members = (corpus.sample_members("a", None, image=jpeg(1))  # image only
               + corpus.sample_members("b", "with caption", image=jpeg(2))  # no json
               + corpus.sample_members("c", None, image=jpeg(3), json_text="{}"))  # no txt
    _, rows = read(corpus.write_tar(tmp_path / "s.tar", members))
    assert summary(rows) == [("a", None), ("b", None), ("c", None)]
    assert [(r[S.CAPTION_RAW], r[S.SRC_JSON]) for r in rows] == [(None, None), ("with caption", None), (None, "{}")]
    assert [r[S.IMAGE] for r in rows] == [jpeg(1), jpeg(2), jpeg(3)]


def test_unknown_members_ignored(tmp_path):
    members = [("a.jpg", jpeg(1)), ("a.cls", b"7"), ("a.npy", b"\x93NUMPY\x01\x00"), ("a.txt", b"cap a"),
               ("b.jpg", jpeg(2)), ("b.txt", b"cap b"), ("b.cls", b"3")]
    _, rows = read(corpus.write_tar(tmp_path / "s.tar", members))
    assert summary(rows) == [("a", None), ("b", None)]
    assert [(r[S.IMAGE], r[S.CAPTION_RAW]) for r in rows] == [(jpeg(1), "cap a"), (jpeg(2), "cap b")]


def test_image_extensions_and_first_dot_split(tmp_path):
    png = corpus.image_bytes(size=(40, 40), fmt="PNG")
    webp = corpus.image_bytes(size=(40, 40), fmt="WEBP")
    members = [("p.png", png), ("p.txt", b"png"), ("w.webp", webp), ("w.txt", b"webp"), ("u.JPG", jpeg(4)),
               # WebDataset convention: the key ends at the basename's FIRST dot, the extension is the rest
               # ("seg.jpg"), which is not an image extension
               ("m.seg.jpg", jpeg(3)), ("m.seg.txt", b"odd")]
    _, rows = read(corpus.write_tar(tmp_path / "s.tar", members))
    assert summary(rows) == [("p", None), ("w", None), ("u", None), ("m", S.Reason.MISSING_IMAGE)]
    assert [r[S.IMAGE] for r in rows] == [png, webp, jpeg(4), None]


def test_sample_without_image_is_missing_image(tmp_path):
    members = (corpus.sample_members("a", image=jpeg(1))
               + [("b.txt", b"caption without an image"), ("b.json", b"{}")]
               + corpus.sample_members("c", image=jpeg(3)))
    _, rows = read(corpus.write_tar(tmp_path / "s.tar", members))
    assert summary(rows) == [("a", None), ("b", S.Reason.MISSING_IMAGE), ("c", None)]
    b = rows[1]
    assert b[S.IMAGE] is None
    assert b[S.CAPTION_RAW] == "caption without an image"  # source columns kept on the reject row
    assert b[S.SRC_JSON] == "{}"


def test_nested_member_names_keep_the_directory_in_the_key(tmp_path):
    members = (corpus.sample_members("sub/000001", "nested", image=jpeg(1))
               + corpus.sample_members("sub/deeper/000002", "deeper", image=jpeg(2))
               + corpus.sample_members("000001", "top", image=jpeg(3)))
    # a directory entry is not a sample
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tf:
        d = tarfile.TarInfo("sub")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    _, rows = read(path)
    assert summary(rows) == [("sub/000001", None), ("sub/deeper/000002", None), ("000001", None)]
    assert [r[S.CAPTION_RAW] for r in rows] == ["nested", "deeper", "top"]


def test_duplicate_key_inside_one_tar_gives_two_rows(tmp_path):
    members = [("k.jpg", jpeg(1)), ("k.txt", b"first"), ("k.jpg", jpeg(2)), ("k.txt", b"second")]
    _, rows = read(corpus.write_tar(tmp_path / "s.tar", members))
    assert summary(rows) == [("k", None), ("k", None)]  # dedup is a later, global decision
    assert [(r[S.IMAGE], r[S.CAPTION_RAW]) for r in rows] == [(jpeg(1), "first"), (jpeg(2), "second")]


def test_invalid_utf8_caption_flagged_and_replaced(tmp_path):
    members = (corpus.sample_members("bad", b"caf\xe9 au lait \xff\xfe", image=jpeg(1))
               + corpus.sample_members("good", "café ☕ 漢字".encode(), image=jpeg(2)))
    _, rows = read(corpus.write_tar(tmp_path / "s.tar", members))
    assert summary(rows) == [("bad", None), ("good", None)]  # the caption policy decides later
    assert rows[0][S.CAPTION_RAW] == "caf\ufffd au lait \ufffd\ufffd"
    assert rows[0][S.CAPTION_INVALID_UTF8] is True
    assert rows[1][S.CAPTION_RAW] == "café ☕ 漢字"
    assert rows[1][S.CAPTION_INVALID_UTF8] is False


def test_rows_per_block_splits_with_continuous_index(tmp_path):
    members, images = members_n(7)
    tables, rows = read(corpus.write_tar(tmp_path / "s.tar", members), rows_per_block=2)
    assert len(tables) == 4  # 2 + 2 + 2 + (1 row + marker)
    assert [t.num_rows for t in tables] == [2, 2, 2, 2]
    assert [r[S.KEY] for r in rows] == list(images)
    firsts = [t.column(S.SRC_INDEX)[0].as_py() for t in tables]
    assert firsts == [0, 2, 4, 6]


def test_rows_per_block_exact_multiple_gives_marker_only_block(tmp_path):
    members, _ = members_n(4)
    tables, rows = read(corpus.write_tar(tmp_path / "s.tar", members), rows_per_block=2)
    assert [t.num_rows for t in tables] == [2, 2, 1]
    assert len(rows) == 4


def test_empty_tar_yields_only_the_marker(tmp_path):
    tables, rows = read(corpus.write_tar(tmp_path / "s.tar", []))
    assert rows == []
    assert len(tables) == 1 and tables[0].num_rows == 1


@pytest.mark.parametrize("name", ["s.tar.gz", "s.tgz", "gzip-named-plain.tar"])
def test_gzip_compressed_tar_readable(tmp_path, name):
    members, images = members_n(3)
    plain = corpus.write_tar(tmp_path / "plain.tar", members).read_bytes()
    path = tmp_path / name
    path.write_bytes(gzip.compress(plain))
    _, rows = read(path)
    assert summary(rows) == [(k, None) for k in images]
    assert [r[S.IMAGE] for r in rows] == list(images.values())


# ---- hostile member names and links ----------------------------------------------------------------------------


def _tree(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


@pytest.mark.parametrize("bad_name", ["/etc/passwd.jpg", "../evil.jpg", "a/../../b.jpg", "..\\win.jpg",
                                      "C:/windows/evil.jpg"])
def test_unsafe_member_names_rejected_and_never_written(tmp_path, monkeypatch, bad_name):
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # a reader that extracted relative to the cwd would write into tmp_path
    members = (corpus.sample_members("good1", image=jpeg(1))
               + [(bad_name, b"\xff\xd8 not really a jpeg, but it must not land on disk")]
               + corpus.sample_members("good2", image=jpeg(2)))
    path = corpus.write_tar(tmp_path / "s.tar", members)
    around = tmp_path.parent  # pytest's base dir for this session: siblings included
    before = _tree(around)
    _, rows = read(path)
    assert _tree(around) == before, "the reader wrote files"
    assert not os.path.exists("/etc/passwd.jpg")
    for leaf in ("evil.jpg", "b.jpg", "win.jpg", "passwd.jpg"):
        assert not list(around.rglob(leaf))
    reasons = [r[S.REJECT_REASON] for r in rows]
    assert reasons.count(S.Reason.UNSAFE_MEMBER_PATH) == 1
    bad = next(r for r in rows if r[S.REJECT_REASON] == S.Reason.UNSAFE_MEMBER_PATH)
    assert bad[S.KEY] is None and bad[S.IMAGE] is None and bad[S.CAPTION_RAW] is None
    assert [r[S.KEY] for r in rows if r[S.REJECT_REASON] is None] == ["good1", "good2"]
    assert len(rows) == 3


def test_all_unsafe_names_in_one_shard(tmp_path):
    members = [("/etc/passwd.jpg", b"x"), ("../evil.jpg", b"x"), ("a/../../b.jpg", b"x")]
    members += corpus.sample_members("ok", image=jpeg(1))
    _, rows = read(corpus.write_tar(tmp_path / "s.tar", members))
    assert summary(rows) == [(None, S.Reason.UNSAFE_MEMBER_PATH)] * 3 + [("ok", None)]
    details = [r[S.REJECT_DETAIL] for r in rows[:3]]
    assert "/etc/passwd.jpg" in details[0] and "../evil.jpg" in details[1] and "a/../../b.jpg" in details[2]


def _tar_with_specials(path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        add("a.jpg", jpeg(1))
        add("a.txt", b"cap a")
        sym = tarfile.TarInfo("link.jpg")
        sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(sym)
        hard = tarfile.TarInfo("hard.jpg")
        hard.type, hard.linkname = tarfile.LNKTYPE, "a.jpg"
        tf.addfile(hard)
        fifo = tarfile.TarInfo("fifo.jpg")
        fifo.type = tarfile.FIFOTYPE
        tf.addfile(fifo)
        add("b.jpg", jpeg(2))
        add("b.txt", b"cap b")
    return path


def test_symlink_member_rejected(tmp_path):
    path = corpus.write_tar(tmp_path / "s.tar", corpus.sample_members("a", image=jpeg(1)),
                            link=("evil_link.jpg", "/etc/passwd"))
    before = _tree(tmp_path.parent)
    _, rows = read(path)
    assert _tree(tmp_path.parent) == before
    # the link row may come before the pending sample it follows in the tar: only the set of rows is the contract
    assert sorted(summary(rows), key=str) == sorted([("a", None), (None, S.Reason.UNSAFE_MEMBER_PATH)], key=str)
    bad = next(r for r in rows if r[S.REJECT_REASON])
    assert "evil_link.jpg" in bad[S.REJECT_DETAIL] and bad[S.IMAGE] is None


def test_link_and_device_members_rejected(tmp_path):
    _, rows = read(_tar_with_specials(tmp_path / "s.tar"))
    assert sorted(summary(rows), key=str) == sorted(
        [("a", None), ("b", None)] + [(None, S.Reason.UNSAFE_MEMBER_PATH)] * 3, key=str)
    assert {r[S.IMAGE] for r in rows if r[S.KEY]} == {jpeg(1), jpeg(2)}


def test_non_utf8_member_name_does_not_fail_the_shard(tmp_path):
    path = tmp_path / "latin1.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name, data in [("a.jpg", jpeg(1)), ("a.txt", b"a"), ("caf\xe9.jpg", jpeg(2)), ("caf\xe9.txt", b"c"),
                           ("b.jpg", jpeg(3)), ("b.txt", b"b")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    _, rows = read(path)
    assert len(rows) == 3  # every sample accounted for
    assert summary([rows[0], rows[2]]) == [("a", None), ("b", None)]
    middle = rows[1]
    # rejected at the read stage, accounted for, its source bytes kept
    assert (middle[S.KEY], middle[S.REJECT_STAGE], middle[S.REJECT_REASON]) == (None, S.Stage.READ,
                                                                                S.Reason.INVALID_KEY)
    assert "caf\\udce9" in middle[S.REJECT_DETAIL]  # the name, escaped
    assert (middle[S.IMAGE], middle[S.CAPTION_RAW]) == (jpeg(2), "c")


def test_non_utf8_name_of_a_member_cut_by_damage(tmp_path):
    full = tmp_path / "full.tar"
    with tarfile.open(full, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name, data in [("a.jpg", jpeg(1)), ("\xe9t\xe9.jpg", os.urandom(6000))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    second = list(_offsets(full).values())[1]
    path = tmp_path / "cut.tar"
    path.write_bytes(full.read_bytes()[: second.offset_data + 3000])  # inside the second member's data
    _, rows = read(path)
    assert summary(rows) == [("a", None), (None, S.Reason.CORRUPT_SHARD)]  # its own reason; the key is dropped


def test_lone_surrogates_in_caption_and_json_become_replacement_characters():
    out = BlockBuilder("s.tar", 0, 8)
    assert not list(out.add(key="k", image=b"x", caption="caf\udce9", src_json='{"a": "\udcff"}'))
    assert not list(out.add(key=None, reject=(S.Reason.CORRUPT_SHARD, "bad \ud800 detail")))
    rows = pa.concat_tables(out.finish()).to_pylist()
    assert (rows[0][S.KEY], rows[0][S.CAPTION_RAW], rows[0][S.SRC_JSON]) == ("k", "caf\ufffd", '{"a": "\ufffd"}')
    assert rows[0][S.CAPTION_INVALID_UTF8] is True and rows[0][S.REJECT_REASON] is None
    assert rows[1][S.REJECT_DETAIL] == "bad \ufffd detail"


# ---- damaged shards --------------------------------------------------------------------------------------------


def _offsets(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return {m.name: m for m in tf.getmembers()}


def _truncated_tar(tmp_path: Path, *, where: str) -> tuple[Path, dict[str, bytes]]:
    """4 samples; cut inside the 3rd sample's image data ("data") or inside its header block ("header")."""
    members, images = [], {}
    for i in range(4):
        key = f"00000{i}"
        images[key] = os.urandom(6000)  # bytes the reader does not decode; large enough to cut in the middle
        members += corpus.sample_members(key, f"caption {i}", image=images[key])
    full = corpus.write_tar(tmp_path / "full.tar", members)
    third = _offsets(full)["000002.jpg"]
    cut = third.offset_data + third.size // 2 if where == "data" else third.offset + 100
    path = tmp_path / "truncated.tar"
    path.write_bytes(full.read_bytes()[:cut])
    return path, images


def test_truncated_tar_keeps_the_first_sample_and_ends_with_one_corrupt_shard_row(tmp_path):
    path, images = _truncated_tar(tmp_path, where="data")
    _, rows = read(path)
    assert rows[0][S.KEY] == "000000" and rows[0][S.REJECT_REASON] is None
    assert rows[0][S.IMAGE] == images["000000"]
    reasons = [r[S.REJECT_REASON] for r in rows]
    assert reasons.count(S.Reason.CORRUPT_SHARD) == 1
    assert rows[-1][S.REJECT_REASON] == S.Reason.CORRUPT_SHARD
    assert rows[-1][S.IMAGE] is None


def test_truncated_tar_mid_image_keeps_every_complete_sample(tmp_path):
    path, images = _truncated_tar(tmp_path, where="data")
    _, rows = read(path)
    assert summary(rows) == [("000000", None), ("000001", None), ("000002", S.Reason.CORRUPT_SHARD)]
    assert [r[S.IMAGE] for r in rows[:2]] == [images["000000"], images["000001"]]
    assert [r[S.CAPTION_RAW] for r in rows[:2]] == ["caption 0", "caption 1"]


def test_truncated_tar_mid_header_is_reported(tmp_path):
    path, _ = _truncated_tar(tmp_path, where="header")
    _, rows = read(path)
    assert summary(rows) == [("000000", None), ("000001", None), (None, S.Reason.CORRUPT_SHARD)]


def test_truncated_tar_gz_is_a_corrupt_shard_not_an_error(tmp_path):
    members, images = [], {}
    for i in range(4):
        key = f"00000{i}"
        images[key] = os.urandom(6000)  # incompressible: the gzip cut falls inside the 3rd sample
        members += corpus.sample_members(key, f"caption {i}", image=images[key])
    gz = gzip.compress(corpus.write_tar(tmp_path / "full.tar", members).read_bytes())
    path = tmp_path / "truncated.tar.gz"
    path.write_bytes(gz[: int(len(gz) * 0.6)])
    _, rows = read(path)
    assert [r[S.REJECT_REASON] for r in rows].count(S.Reason.CORRUPT_SHARD) == 1
    assert rows[-1][S.REJECT_REASON] == S.Reason.CORRUPT_SHARD
    assert rows[0][S.KEY] == "000000" and rows[0][S.IMAGE] == images["000000"]


def test_truncated_tar_gz_mid_header_is_reported(tmp_path):
    path, _ = _truncated_tar(tmp_path, where="header")
    gz = tmp_path / "truncated.tar.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))  # a complete gzip stream of a tar cut inside a header
    _, rows = read(gz)
    assert summary(rows) == [("000000", None), ("000001", None), (None, S.Reason.CORRUPT_SHARD)]


def test_garbage_in_place_of_a_member_header_is_reported(tmp_path):
    members, _ = members_n(3)
    full = corpus.write_tar(tmp_path / "full.tar", members)
    third = _offsets(full)["000002.jpg"]
    data = bytearray(full.read_bytes())
    data[third.offset:third.offset + 512] = os.urandom(512)
    path = tmp_path / "smashed.tar"
    path.write_bytes(bytes(data))
    _, rows = read(path)
    assert summary(rows) == [("000000", None), ("000001", None), (None, S.Reason.CORRUPT_SHARD)]
    assert "header" in rows[-1][S.REJECT_DETAIL]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_well_formed_tars_end_without_a_corrupt_row(tmp_path, fmt, compress):
    # long names force GNU longname / PAX extended headers (USTAR splits them into prefix + name)
    keys = [f"{'d' * 60}/{'n' * 60}{i:03d}" for i in range(3)] + [f"\u6f22\u5b57-{i}" for i in range(2)]
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=fmt) as tf:
        for i, key in enumerate(keys):
            for name, data in corpus.sample_members(key, f"c{i}", image=jpeg(i)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    if compress:
        path = tmp_path / "s.tar.gz"
        path.write_bytes(gzip.compress((tmp_path / "s.tar").read_bytes()))
    _, rows = read(path)
    assert summary(rows) == [(k, None) for k in keys]


def test_tar_without_end_of_archive_blocks_is_accepted(tmp_path):
    # some writers omit the two zero blocks: a file ending exactly after a member's padding is complete
    members, images = members_n(2)
    full = corpus.write_tar(tmp_path / "full.tar", members)
    last = list(_offsets(full).values())[-1]
    path = tmp_path / "no-eof.tar"
    path.write_bytes(full.read_bytes()[: last.offset_data + -(-last.size // 512) * 512])
    _, rows = read(path)
    assert summary(rows) == [(k, None) for k in images]


def big_members(n: int, size: int) -> list[tuple[str, bytes]]:
    """n samples whose `jpg` members are `size` random bytes each (the reader does not decode them)."""
    members = []
    for i in range(n):
        members += corpus.sample_members(f"big{i:02d}", f"caption {i}", image=os.urandom(size))
    return members


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_storage_failure_mid_stream_fails_the_shard_never_a_reject(tmp_path, s3_faults, gz):
    """Every read of the shard after its first 8 MiB window is throttled: the rows read before it are whole, then the
    shard fails with a storage error naming the object, and nothing the storage did becomes a reject."""
    from s3_faults import FaultPlan, Rule

    from djray.io.errors import TransientStorageError

    data = corpus.write_tar(tmp_path / "in" / "s.tar", big_members(6, 2 << 20)).read_bytes()
    name = "s.tar.gz" if gz else "s.tar"
    (tmp_path / "in" / "s.tar").unlink()
    (tmp_path / "in" / name).write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    key = next(iter(s3_faults.upload(tmp_path / "in", "in")))
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("slowdown", key=key, nth=2, count=10**6)]))
    rows = []
    with pytest.raises(TransientStorageError,
                       match=rf"s3://{key}: read at byte 8388608 .* (SLOW_DOWN|SERVICE_UNAVAILABLE)"):
        for table in read_webdataset_shard(s3_faults.fs(retries=1), key, SHARD, ORDER, rows_per_block=1):
            rows += table.to_pylist()
    assert rows, "the samples of the first window come out before the failure"
    assert all(r[S.REJECT_REASON] is None for r in rows)


@pytest.mark.parametrize("content", [os.urandom(4096), b"this is not a tar archive at all\n" * 3, b""],
                         ids=["random", "text", "zero-bytes"])
def test_garbage_tar_is_one_corrupt_shard_row(tmp_path, content):
    path = tmp_path / "garbage.tar"
    path.write_bytes(content)
    _, rows = read(path)
    assert summary(rows) == [(None, S.Reason.CORRUPT_SHARD)]
    assert rows[0][S.IMAGE] is None


def test_missing_file_is_a_storage_error_not_a_reject(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_webdataset_shard(FS, str(tmp_path / "nope.tar"), SHARD, ORDER, 256))
