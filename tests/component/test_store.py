"""The object store behaves the same on a local directory and on a real S3 API."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_trainer.store import (
    LocalStore,
    ObjectStore,
    StoreError,
    append_jsonl,
    open_uri,
    read_json,
    sha256_bytes,
    split_uri,
    write_json_atomic,
)
from tests.support.s3 import S3Server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path)
    server: S3Server = request.getfixturevalue("s3")
    st, _ = open_uri(server.uri(), server.config)
    return st


def test_put_get_list_delete_roundtrip(store: ObjectStore) -> None:
    store.put_bytes("a/b/one.bin", b"1")
    store.put_bytes("a/b/two.bin", b"22")
    store.put_bytes("a/c.txt", b"333")
    assert store.get_bytes("a/b/two.bin") == b"22"
    assert [(o.key, o.size) for o in store.list("a/b/")] == [("a/b/one.bin", 1), ("a/b/two.bin", 2)]
    assert {o.key for o in store.list("a/")} == {"a/b/one.bin", "a/b/two.bin", "a/c.txt"}
    assert store.exists("a/c.txt")
    store.delete("a/c.txt")
    assert not store.exists("a/c.txt")
    with store.open_read("a/b/one.bin") as fh:
        assert fh.read() == b"1"


def test_ranged_reads_give_exactly_the_bytes_asked_for(store: ObjectStore) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    store.put_bytes("r/data.bin", data)
    for offset, length in ((0, None), (0, 10), (100, 1000), (5000, None), (10_000, 1000), (10_239, 1), (7, 0),
                           (10_240, None), (20_000, 5)):
        with store.open_read("r/data.bin", offset, length) as fh:
            got = fh.read()
        assert got == data[offset:None if length is None else offset + length], (offset, length)
    with store.open_read("r/data.bin", 1000, 3000) as fh:  # read in small pieces, as the corpus reader does
        parts = list(iter(lambda: fh.read(777), b""))
    assert b"".join(parts) == data[1000:4000]
    with pytest.raises(StoreError, match="invalid byte range"), store.open_read("r/data.bin", -1, 5):
        pass
    with pytest.raises(StoreError, match=r"gone\.bin does not exist"), store.open_read("r/gone.bin", 10, 5):
        pass


def test_missing_object_error_names_the_uri(store: ObjectStore) -> None:
    with pytest.raises(StoreError, match=r"nothere\.json does not exist"):
        store.get_bytes("nothere.json")


def test_json_and_jsonl_helpers(store: ObjectStore) -> None:
    write_json_atomic(store, "p/progress.json", {"step": 3})
    assert read_json(store, "p/progress.json") == {"step": 3}
    append_jsonl(store, "p/audit.jsonl", [{"n": 1}])
    append_jsonl(store, "p/audit.jsonl", [{"n": 2}, {"n": 3}])
    assert store.get_bytes("p/audit.jsonl").decode().splitlines() == ['{"n": 1}', '{"n": 2}', '{"n": 3}']
    store.put_bytes("p/bad.json", b"{not json")
    with pytest.raises(StoreError, match=r"bad\.json: not valid JSON"):
        read_json(store, "p/bad.json")


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    st = LocalStore(tmp_path)
    st.put_bytes("x/data.bin", b"old")
    st.put_bytes("x/data.bin", b"new")
    assert st.get_bytes("x/data.bin") == b"new"
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["data.bin"]


def test_local_delete_leaves_no_empty_directories(tmp_path: Path) -> None:
    st = LocalStore(tmp_path / "root")
    st.put_bytes("ds/_work/scan/00000/docs.jsonl", b"x")
    st.put_bytes("ds/_work/scan/00001/docs.jsonl", b"y")
    st.put_bytes("ds/manifest.json", b"{}")
    st.delete("ds/_work/scan/00000/docs.jsonl")
    assert not (tmp_path / "root/ds/_work/scan/00000").exists()
    assert (tmp_path / "root/ds/_work/scan/00001").is_dir()
    st.delete("ds/_work/scan/00001/docs.jsonl")
    assert not (tmp_path / "root/ds/_work").exists(), "the emptied parents go, up to the first non-empty one"
    assert (tmp_path / "root/ds/manifest.json").is_file()
    st.delete("ds/manifest.json")
    assert (tmp_path / "root").is_dir() and not any((tmp_path / "root").iterdir()), "the root itself stays"
    st.put_bytes("ds/again.json", b"{}")  # writing into a directory a delete removed makes it again
    assert st.get_bytes("ds/again.json") == b"{}"


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"must not contain '\.\.'"):
        LocalStore(tmp_path).put_bytes("../evil", b"x")


def test_uri_parsing_errors_are_clear() -> None:
    with pytest.raises(StoreError, match="unsupported URI scheme 'gs'"):
        open_uri("gs://bucket/x")
    with pytest.raises(StoreError, match="needs a bucket"):
        open_uri("s3:///x")


def test_digest_format() -> None:
    assert sha256_bytes(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_a_local_uri_the_store_wrote_names_the_same_file(tmp_path: Path) -> None:
    """`forge run` from a folder named `a+b c` (its tokenizer's URI was percent-encoded twice and named no file)."""
    root = tmp_path / "a+b c%d"
    store = LocalStore(root)
    store.put_bytes("tok/tokenizer.json", b"{}")
    uri = store.uri("tok/tokenizer.json")
    assert "%2B" in uri or "+" in uri
    scheme, path, key = split_uri(uri)
    assert (scheme, key) == ("file", "") and Path(path) == root / "tok" / "tokenizer.json"
    assert Path(path).read_bytes() == b"{}"
    again, _ = open_uri(store.uri("tok"))
    assert again.get_bytes("tokenizer.json") == b"{}"
