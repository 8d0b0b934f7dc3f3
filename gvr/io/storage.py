"""Local paths and s3:// URLs behind one small API: listing, reads, atomic writes, local copies.

Every stage input or output may be a local path or an `s3://bucket/key` URL; each function takes
the path first and the `StorageParams` second (None = defaults + AWS environment variables).
Local paths use the standard library only (no fsspec import), so nodes without the data extras can
still read and write checkpoints; URLs go through s3fs with the endpoint, connect timeout and retry
budget of the `StorageParams`, and credentials from the usual AWS variables or profile. Every
failure surfaces as one `StorageError` naming the path, or the endpoint when it cannot be reached.

Atomicity: a local file write goes to a hidden temp file next to the destination, is fsynced, then
renamed over it; an S3 write is one PUT (or multipart upload), which S3 makes visible only when
complete. Either way a reader sees the old content or the new, never half of it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gvr.config import StorageParams
from gvr.errors import StorageError

REMOTE_SCHEMES = ("s3://", "s3a://")
PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------ paths


def is_remote(path: PathLike) -> bool:
    """True for s3:// URLs, False for local paths (plain or file://)."""
    return isinstance(path, str) and path.startswith(REMOTE_SCHEMES)


def _local(path: PathLike) -> str:
    path = os.fspath(path)
    return path[len("file://"):] if path.startswith("file://") else path


def join(*parts: PathLike) -> str:
    """Join path parts with '/', keeping a scheme such as s3:// intact."""
    head, *rest = (os.fspath(p) for p in parts)
    out = head.rstrip("/") or head
    for p in rest:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}" if not out.endswith("/") else f"{out}{p}"
    return out


def basename(path: PathLike) -> str:
    """Last component of a local path or URL."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def _hidden_temp_name(name: str) -> str:
    # Hidden and suffix-preserving: listings skip dotfiles, and writers that pick a format from
    # the extension (PyAV, pandas) still see the real one.
    stem, suffix = os.path.splitext(name)
    return f".{stem}.tmp-{uuid.uuid4().hex[:12]}{suffix}"


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------ S3 client


def endpoint(storage: StorageParams | None = None) -> str:
    """The S3 endpoint in use: params, then $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, else AWS's."""
    return _endpoint(storage or StorageParams()) or "https://s3.amazonaws.com"


def _endpoint(storage: StorageParams) -> str | None:
    return (storage.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL") or None)


def s3_filesystem(storage: StorageParams | None = None):
    """The s3fs filesystem for these params (one per process; short connect timeout, bounded retries)."""
    storage = storage or StorageParams()
    key = (_endpoint(storage), storage.s3_connect_timeout_s, storage.s3_retries,
           os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"), os.getpid())
    return _s3_filesystem(*key)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint_url, connect_timeout, retries, _key_id, _profile, _pid):
    # Keyed on the pid too: s3fs instances hold an event loop and are not fork-safe.
    import s3fs

    # Retries happen once, in s3fs's loop (attempts = retries + 1); botocore's own loop is turned
    # off so an unreachable endpoint costs (retries + 1) connect timeouts, not their product.
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint_url,
        use_listings_cache=False,  # other processes write the same prefixes
        skip_instance_cache=True,
        config_kwargs={"connect_timeout": connect_timeout,
                       "retries": {"max_attempts": 1, "mode": "standard"}},
    )
    fs.retries = retries + 1
    return fs


_NETWORK_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                   "ClientConnectorError", "ServerTimeoutError", "ReadTimeoutError", "ConnectionError",
                   "TimeoutError", "FSTimeoutError", "HTTPClientError", "ClientOSError",
                   "ConnectionRefusedError"}


@contextlib.contextmanager
def _errors(path: PathLike, storage: StorageParams | None = None) -> Iterator[None]:
    """Turn filesystem, S3 and network exceptions into one StorageError naming path or endpoint."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageError(f"{path}: not found") from None
    except PermissionError as e:
        raise StorageError(f"{path}: permission denied ({e.strerror or e})") from None
    except Exception as e:
        names = {c.__name__ for c in type(e).__mro__}
        text = str(e) or type(e).__name__
        if not is_remote(path):
            if isinstance(e, OSError):
                raise StorageError(f"{path}: {e.strerror or e}") from None
            raise
        if names & {"NoCredentialsError", "PartialCredentialsError"}:
            raise StorageError(f"{path}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                               f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
        if names & _NETWORK_ERRORS or "Could not connect" in text or "Connect timeout" in text:
            storage = storage or StorageParams()
            raise StorageError(f"cannot reach S3 endpoint {endpoint(storage)} for {path} "
                               f"({storage.s3_retries + 1} attempts): {text}") from None
        raise StorageError(f"{path}: {text}") from None


# ------------------------------------------------------------------------------------ queries


@dataclass(frozen=True)
class FileStat:
    """One file: full path or URL, size in bytes, and a version tag that changes when it is rewritten."""

    path: str
    size: int
    version: str  # local: mtime in ns; S3: ETag


def exists(path: PathLike, storage: StorageParams | None = None) -> bool:
    """Whether a file or folder exists at `path`."""
    with _errors(path, storage):
        return s3_filesystem(storage).exists(path) if is_remote(path) else os.path.exists(_local(path))


def isdir(path: PathLike, storage: StorageParams | None = None) -> bool:
    """Whether `path` is a folder (on S3: a prefix with objects under it)."""
    with _errors(path, storage):
        return s3_filesystem(storage).isdir(path) if is_remote(path) else os.path.isdir(_local(path))


def stat(path: PathLike, storage: StorageParams | None = None) -> FileStat:
    """Size and version tag of one file."""
    with _errors(path, storage):
        if is_remote(path):
            info = s3_filesystem(storage).info(path)
            if info.get("type") == "directory":
                raise StorageError(f"{path}: is a folder, not a file")
            return FileStat(path, int(info["size"]), str(info.get("ETag", "")).strip('"'))
        st = os.stat(_local(path))
        if os.path.isdir(_local(path)):
            raise StorageError(f"{path}: is a folder, not a file")
        return FileStat(os.fspath(path), st.st_size, str(st.st_mtime_ns))


def scan(prefix: PathLike, storage: StorageParams | None = None,
         extensions: Iterable[str] | None = None) -> list[FileStat]:
    """Files under `prefix` (recursive, sorted, hidden files and folders skipped), optionally by extension.

    Extensions match case-insensitively (".mp4" matches "CLIP.MP4"). Paths keep the prefix's form:
    an s3:// prefix gives s3:// URLs, a relative local prefix gives relative paths. A missing
    prefix is a StorageError, an empty folder an empty list.
    """
    exts = tuple(e.lower() for e in extensions) if extensions is not None else None
    with _errors(prefix, storage):
        if is_remote(prefix):
            fs = s3_filesystem(storage)
            scheme = os.fspath(prefix).split("://", 1)[0] + "://"
            root = os.fspath(prefix).rstrip("/")
            found = fs.find(root, detail=True)
            if not found and not fs.isdir(root):
                raise FileNotFoundError(prefix)
            out = [FileStat(scheme + k, int(v["size"]), str(v.get("ETag", "")).strip('"'))
                   for k, v in found.items() if v.get("type") != "directory"]
            hidden = lambda p: any(part.startswith(".") for part in p[len(root) + 1:].split("/"))  # noqa: E731
        else:
            root = _local(prefix)
            if not os.path.isdir(root):
                raise FileNotFoundError(root)
            out = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    p = os.path.join(dirpath, name)
                    st = os.stat(p)
                    out.append(FileStat(p, st.st_size, str(st.st_mtime_ns)))
            hidden = lambda p: basename(p).startswith(".")  # noqa: E731
    keep = [f for f in out if not hidden(f.path) and (exts is None or f.path.lower().endswith(exts))]
    return sorted(keep, key=lambda f: f.path)


def list_files(prefix: PathLike, storage: StorageParams | None = None,
               extensions: Iterable[str] | None = None) -> list[str]:
    """Paths of the files `scan` finds under `prefix`."""
    return [f.path for f in scan(prefix, storage, extensions)]


# ------------------------------------------------------------------------------------ reads


def read_bytes(path: PathLike, storage: StorageParams | None = None) -> bytes:
    """The whole file."""
    with _errors(path, storage):
        return s3_filesystem(storage).cat_file(path) if is_remote(path) else Path(_local(path)).read_bytes()


def read_text(path: PathLike, storage: StorageParams | None = None) -> str:
    """The whole file as UTF-8 text."""
    data = read_bytes(path, storage)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StorageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json(path: PathLike, storage: StorageParams | None = None) -> Any:
    """The file parsed as JSON."""
    try:
        return json.loads(read_text(path, storage))
    except json.JSONDecodeError as e:
        raise StorageError(f"{path}: not valid JSON ({e})") from None


def read_sidecar(path: PathLike, storage: StorageParams | None = None, suffix: str = ".txt") -> str | None:
    """The text of the file next to `path` with its extension replaced by `suffix` (a caption), or None."""
    sidecar = os.fspath(path).rsplit(".", 1)[0] + suffix
    return read_text(sidecar, storage).strip() if exists(sidecar, storage) else None


def open_read(path: PathLike, storage: StorageParams | None = None):
    """A seekable binary file object for streaming reads (ranged GETs on S3)."""
    with _errors(path, storage):
        if is_remote(path):
            return s3_filesystem(storage).open(path, "rb", block_size=8 * 2**20, cache_type="readahead")
        return open(_local(path), "rb")


@contextlib.contextmanager
def local_copy(path: PathLike, storage: StorageParams | None = None) -> Iterator[str]:
    """A local path with the file's content: the file itself, or a temp download removed afterwards."""
    if not is_remote(path):
        local = _local(path)
        if not os.path.isfile(local):
            raise StorageError(f"{path}: not found" if not os.path.exists(local) else f"{path}: not a file")
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="gvr-dl-") as tmp:
        local = os.path.join(tmp, basename(path))
        with _errors(path, storage):
            s3_filesystem(storage).get_file(path, local)
        yield local


def cache_dir() -> Path:
    """Where remote files are cached locally: $GVR_CACHE_DIR, else ~/.cache/gvr."""
    return Path(os.environ.get("GVR_CACHE_DIR") or Path.home() / ".cache" / "gvr")


_validated: dict[str, str] = {}  # url -> version already checked against the cache in this process


def cached_local(path: PathLike, storage: StorageParams | None = None) -> str:
    """A local path with the file's content that stays valid: the file itself, or a cached download.

    Remote files are cached under `cache_dir()/storage/`, keyed by URL and ETag, so a rewritten
    object is fetched again. The ETag is checked once per process per URL, so repeated calls (a
    data loader reading shard after shard) cost no request.
    """
    if not is_remote(path):
        if not os.path.isfile(_local(path)):
            raise StorageError(f"{path}: not found")
        return _local(path)
    url = os.fspath(path)
    if url not in _validated:
        _validated[url] = stat(url, storage).version
    digest = hashlib.sha256(f"{url}\0{_validated[url]}".encode()).hexdigest()[:24]
    local = cache_dir() / "storage" / digest / basename(url)
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / _hidden_temp_name(local.name)
        try:
            with _errors(url, storage):
                s3_filesystem(storage).get_file(url, str(tmp))
            os.replace(tmp, local)  # concurrent readers of one shard each land a whole copy
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return str(local)


def get_dir(src: PathLike, local_dir: PathLike, storage: StorageParams | None = None) -> str:
    """Copy a folder or prefix (recursively, hidden files skipped) into `local_dir`; returns it."""
    local_dir = _local(local_dir)
    root = os.fspath(src).rstrip("/")
    for f in scan(src, storage):
        dest = os.path.join(local_dir, *f.path[len(root) + 1:].split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with _errors(f.path, storage):
            if is_remote(src):
                s3_filesystem(storage).get_file(f.path, dest)
            else:
                shutil.copyfile(f.path, dest)
    return local_dir


def local_dir(path: PathLike, storage: StorageParams | None = None) -> str:
    """A local folder with the content of `path`: the folder itself, or a cached download.

    Remote folders are cached under `cache_dir()/storage/`, keyed by URL and the listing's
    versions, so any rewritten file triggers a fresh download.
    """
    if not is_remote(path):
        if not os.path.isdir(_local(path)):
            raise StorageError(f"{path}: not a folder" if os.path.exists(_local(path)) else f"{path}: not found")
        return _local(path)
    files = scan(path, storage)
    if not files:
        raise StorageError(f"{path}: not found (no files under this prefix)")
    key = "\0".join([os.fspath(path)] + [f"{f.path}:{f.version}" for f in files])
    dest = cache_dir() / "storage" / hashlib.sha256(key.encode()).hexdigest()[:24] / basename(path)
    if not dest.is_dir():
        tmp = dest.parent / _hidden_temp_name(dest.name)
        try:
            get_dir(path, tmp, storage)
            with contextlib.suppress(OSError):  # another process landed the same download first
                os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


# ------------------------------------------------------------------------------------ writes


@contextlib.contextmanager
def atomic_local(path: PathLike, storage: StorageParams | None = None) -> Iterator[str]:
    """Yield a local temp file path; on success it becomes `path`, on an exception nothing appears.

    The temp path keeps `path`'s extension. Local: a hidden file next to the destination, fsynced
    and renamed over it. S3: a temp file uploaded in one PUT or multipart upload.
    """
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="gvr-up-") as tmp:
            local = os.path.join(tmp, basename(path))
            yield local
            if not os.path.exists(local):
                raise StorageError(f"{path}: nothing was written to upload")
            with _errors(path, storage):
                s3_filesystem(storage).put_file(local, path)
        return
    dest = os.path.abspath(_local(path))
    with _errors(path):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = os.path.join(os.path.dirname(dest), _hidden_temp_name(os.path.basename(dest)))
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise StorageError(f"{path}: nothing was written")
        with _errors(path):
            _fsync(tmp)
            os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: PathLike, storage: StorageParams | None = None) -> Iterator[str]:
    """Yield a local temp folder; on success its content replaces the folder at `path`.

    Local: the temp folder sits next to the destination and is renamed into place (an existing
    folder is moved aside first and removed after, the one moment `path` is briefly absent). S3:
    the files are uploaded after the body succeeds, each atomically; stale files under the prefix
    that the new content lacks are removed. On an exception nothing at `path` changes.
    """
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="gvr-up-") as tmp:
            yield tmp
            old = set(list_files(path, storage)) if exists(path, storage) else set()
            put_dir(tmp, path, storage)
            new = {join(path, os.path.relpath(os.path.join(d, n), tmp).replace(os.sep, "/"))
                   for d, _, names in os.walk(tmp) for n in names}
            for stale in sorted(old - new):
                rm(stale, storage)
        return
    dest = os.path.abspath(_local(path))
    with _errors(path):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = os.path.join(os.path.dirname(dest), _hidden_temp_name(os.path.basename(dest)))
    aside = os.path.join(os.path.dirname(dest), _hidden_temp_name(os.path.basename(dest)))
    os.makedirs(tmp)
    try:
        yield tmp
        with _errors(path):
            if os.path.exists(dest):
                os.rename(dest, aside)
            os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)


def write_bytes(path: PathLike, data: bytes, storage: StorageParams | None = None) -> None:
    """Write the whole file atomically."""
    if is_remote(path):
        with _errors(path, storage):
            s3_filesystem(storage).pipe_file(path, data)
        return
    with atomic_local(path, storage) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: PathLike, text: str, storage: StorageParams | None = None) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"), storage)


def write_json(path: PathLike, obj: Any, storage: StorageParams | None = None) -> None:
    """Write `obj` as indented, key-sorted JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", storage)


def put_dir(local_dir: PathLike, dest: PathLike, storage: StorageParams | None = None) -> None:
    """Copy a local folder (recursively) to a folder or prefix; each file lands atomically.

    JSON files go last: a reader that starts from a folder's config.json / index.json never finds
    one that describes files not uploaded yet.
    """
    src_root = _local(local_dir)
    if not os.path.isdir(src_root):
        raise StorageError(f"{local_dir}: not a folder")
    files = [os.path.join(d, n) for d, _, names in os.walk(src_root) for n in names]
    for src in sorted(files, key=lambda f: (f.endswith(".json"), f)):
        target = join(dest, os.path.relpath(src, src_root).replace(os.sep, "/"))
        if is_remote(dest):
            with _errors(target, storage):
                s3_filesystem(storage).put_file(src, target)
        else:
            with atomic_local(target) as tmp:
                shutil.copyfile(src, tmp)


def rm(path: PathLike, storage: StorageParams | None = None, *, recursive: bool = False) -> None:
    """Remove a file, or a folder/prefix with `recursive=True`; a missing path is not an error."""
    if not exists(path, storage):
        return
    with _errors(path, storage):
        if is_remote(path):
            s3_filesystem(storage).rm(path, recursive=recursive)
        elif os.path.isdir(_local(path)):
            if not recursive:
                raise StorageError(f"{path}: is a folder (pass recursive=True)")
            shutil.rmtree(_local(path))
        else:
            os.unlink(_local(path))
