"""Storage: the same operations on local paths and on a real S3-compatible server (moto)."""

import os
import time

import pytest

from fixtures.s3 import free_port
from gvr.config import StorageParams
from gvr.errors import StorageError
from gvr.io import storage as st


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A writable root: a local folder, or a fresh bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


def test_join_keeps_scheme_and_single_slashes():
    assert st.join("s3://bucket/a/", "/b/", "c.csv") == "s3://bucket/a/b/c.csv"
    assert st.join("data", "pairs", "x.json") == "data/pairs/x.json"
    assert st.join("/abs/", "x") == "/abs/x"
    assert st.is_remote("s3://b/k") and not st.is_remote("data/x") and not st.is_remote("file:///tmp/x")


def test_write_read_roundtrip(root):
    st.write_json(st.join(root, "a", "x.json"), {"b": [1, 2]})
    st.write_text(st.join(root, "t.txt"), "héllo")
    st.write_bytes(st.join(root, "raw.bin"), b"\x00\x01")
    assert st.read_json(st.join(root, "a", "x.json")) == {"b": [1, 2]}
    assert st.read_text(st.join(root, "t.txt")) == "héllo"
    assert st.read_bytes(st.join(root, "raw.bin")) == b"\x00\x01"
    assert st.exists(st.join(root, "a")) and st.isdir(st.join(root, "a"))
    assert not st.isdir(st.join(root, "t.txt"))
    assert st.stat(st.join(root, "raw.bin")).size == 2


def test_list_files_sorted_recursive_by_extension(root):
    for name in ["b/2.MP4", "a.mp4", "b/c/3.mkv", "notes.txt", ".hidden.mp4", "b/.tmp/4.mp4"]:
        st.write_bytes(st.join(root, name), b"x")
    found = st.list_files(root, None, [".mp4", ".mkv"])
    assert found == [st.join(root, n) for n in ["a.mp4", "b/2.MP4", "b/c/3.mkv"]]
    assert st.join(root, "notes.txt") in st.list_files(root)


def test_version_changes_when_rewritten(root):
    path = st.join(root, "v.bin")
    st.write_bytes(path, b"one")
    before = st.stat(path)
    time.sleep(0.01)
    st.write_bytes(path, b"two!")
    after = st.stat(path)
    assert (after.size, after.version) != (before.size, before.version)


def test_missing_paths_raise_one_clear_error(root):
    with pytest.raises(StorageError, match="not found"):
        st.read_bytes(st.join(root, "nope.json"))
    with pytest.raises(StorageError, match="not found"):
        st.list_files(st.join(root, "no-such-dir"))
    with pytest.raises(StorageError, match="not found"):
        with st.local_copy(st.join(root, "nope.bin")):
            pass


def test_atomic_local_publishes_only_on_success(root):
    path = st.join(root, "out", "model.bin")
    with pytest.raises(RuntimeError):
        with st.atomic_local(path) as tmp:
            assert tmp.endswith(".bin")
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert not st.exists(path)
    with st.atomic_local(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"whole")
    assert st.read_bytes(path) == b"whole"
    if not st.is_remote(root):  # no temp files left behind next to the destination
        assert os.listdir(os.path.dirname(path)) == ["model.bin"]


def test_local_write_never_exposes_partial_content(tmp_path):
    path = tmp_path / "big.bin"
    st.write_bytes(path, b"old" * 1000)
    with pytest.raises(RuntimeError):
        with st.atomic_local(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"new")
            raise RuntimeError
    assert path.read_bytes() == b"old" * 1000


def test_atomic_dir_replaces_folder(root):
    dest = st.join(root, "export")
    with st.atomic_dir(dest) as tmp:
        for name in ("model.safetensors", "config.json"):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(name)
    with pytest.raises(RuntimeError):
        with st.atomic_dir(dest) as tmp:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                f.write("broken")
            raise RuntimeError
    assert st.read_text(st.join(dest, "config.json")) == "config.json"
    with st.atomic_dir(dest) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            f.write("v2")
    assert st.list_files(dest) == [st.join(dest, "config.json")]
    assert st.read_text(st.join(dest, "config.json")) == "v2"


def test_put_get_dir_and_local_copies(root, tmp_path, monkeypatch):
    monkeypatch.setenv("GVR_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.txt").write_text("B")
    st.put_dir(src, st.join(root, "d"))
    got = st.get_dir(st.join(root, "d"), tmp_path / "back")
    assert open(os.path.join(got, "sub", "b.txt")).read() == "B"
    with st.local_copy(st.join(root, "d", "a.txt")) as local:
        assert open(local).read() == "A"
    cached = st.cached_local(st.join(root, "d", "a.txt"))
    assert open(cached).read() == "A" and st.cached_local(st.join(root, "d", "a.txt")) == cached
    folder = st.local_dir(st.join(root, "d"))
    assert sorted(os.listdir(folder)) == ["a.txt", "sub"]
    st.rm(st.join(root, "d"), recursive=True)
    assert not st.exists(st.join(root, "d", "a.txt"))
    st.rm(st.join(root, "d"), recursive=True)  # already gone: not an error


def test_remote_cache_refetches_rewritten_object(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("GVR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(st, "_validated", {})
    url = st.join(s3_bucket, "m", "w.bin")
    st.write_bytes(url, b"v1")
    assert open(st.local_dir(st.join(s3_bucket, "m")) + "/w.bin", "rb").read() == b"v1"
    st.write_bytes(url, b"v2")
    assert open(st.local_dir(st.join(s3_bucket, "m")) + "/w.bin", "rb").read() == b"v2"


def test_unreachable_endpoint_fails_fast_naming_it(s3_env, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    params = StorageParams(s3_endpoint_url=dead, s3_connect_timeout_s=1.0, s3_retries=1)
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {dead}"):
        st.read_bytes("s3://bucket/key.json", params)
    with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
        st.write_json("s3://bucket/key.json", {}, params)
    assert time.monotonic() - start < 20


def test_endpoint_from_environment(s3_env):
    assert st.endpoint() == s3_env.endpoint_url
    assert st.endpoint(StorageParams(s3_endpoint_url="http://example.invalid:9000")) == "http://example.invalid:9000"
