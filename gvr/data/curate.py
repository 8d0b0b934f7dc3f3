"""Curation (paper §4.1.1): keep videos that are long enough, well exposed, sharp and of good quality.

For every video under `curate.input` (local folder or s3:// prefix), `sample_frames` frames are
decoded at uniformly spread positions (segment centres) and measured:
- brightness: mean BT.601 luma (0-255) over the sampled frames;
- laplacian_var: variance of the 3x3 Laplacian of the grayscale frame, averaged over the frames
  (the usual sharpness/detail score; the paper's "Laplacian variance < 30" filter);
- musiq: mean MUSIQ (KonIQ head, ~0-100) over the frames, when `curate.musiq` is on. MUSIQ costs
  far more than the rest, so it is only computed for videos that pass the cheaper filters.

A video is rejected with the first failing reason in this order: unreadable, too_short
(frames < min_frames: the paper keeps clips of at least 77 frames, what stage 3 trains on),
too_dark (brightness < min_brightness), too_bright (> max_brightness), blurry (laplacian_var <
min_laplacian_var), low_quality (musiq < min_musiq).

Resuming: measurements (not decisions) are cached next to the manifest in `<manifest>.cache/`, as
JSON-lines parts written atomically while the batch runs. A rerun reuses the entry of every video
whose path, size and version (mtime or ETag) are unchanged, so changing a threshold re-decides
without decoding anything, and an interrupted run continues where it stopped. Failures that come
from the file itself (corrupt, truncated, not a video) are cached as unreadable; other failures
(network, a crashed worker) are reported as unreadable for this run only and retried next time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from gvr.config import CurateParams, Params, StorageParams
from gvr.errors import InputError
from gvr.io import storage as sio
from gvr.io.storage import FileStat

log = logging.getLogger(__name__)

REASONS = ("unreadable", "too_short", "too_dark", "too_bright", "blurry", "low_quality")
COLUMNS = ["path", "frames", "fps", "width", "height", "brightness", "laplacian_var", "musiq", "accepted", "reason"]
CACHE_FORMAT = 1  # bump when what a cache entry means changes
_FLUSH_EVERY, _FLUSH_SECONDS = 64, 30.0


# ------------------------------------------------------------------------------------ filters


def brightness(frames: np.ndarray) -> float:
    """Mean BT.601 luma (0-255) of uint8 RGB frames (N, H, W, 3)."""
    import cv2

    return float(np.mean([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).mean() for f in frames]))


def laplacian_variance(frames: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of each grayscale frame, averaged over frames (N, H, W, 3)."""
    import cv2

    return float(np.mean([cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for f in frames]))


def reject_reason(m: dict[str, Any], cp: CurateParams) -> str | None:
    """The first failing filter for measurements `m` (None = accepted), in REASONS order."""
    if m.get("error") is not None:
        return "unreadable"
    if m["frames"] < cp.min_frames:
        return "too_short"
    if m["brightness"] < cp.min_brightness:
        return "too_dark"
    if m["brightness"] > cp.max_brightness:
        return "too_bright"
    if m["laplacian_var"] < cp.min_laplacian_var:
        return "blurry"
    if cp.musiq and m.get("musiq") is not None and m["musiq"] < cp.min_musiq:
        return "low_quality"
    return None


def _needs_musiq(m: dict[str, Any], cp: CurateParams) -> bool:
    return cp.musiq and m.get("error") is None and reject_reason({**m, "musiq": None}, cp) is None


# ------------------------------------------------------------------------------------ measuring


@dataclass(frozen=True)
class MeasureOptions:
    """What a worker needs to measure one video (picklable for Ray)."""

    curate: CurateParams
    storage: StorageParams
    musiq_weights: str | None  # resolved local path when MUSIQ is on
    musiq_id: str | None  # which weights, recorded with each score
    device: str


_models: dict[tuple[str, str], Any] = {}  # (weights, device) -> IQAMetric, one per worker process
_models_lock = threading.Lock()


def _musiq(weights: str, device: str):
    with _models_lock:
        if (weights, device) not in _models:
            from gvr.eval.iqa import load_iqa

            _models[weights, device] = load_iqa("musiq", weights, device=device)
        return _models[weights, device]


def measure_video(stat: FileStat, opts: MeasureOptions) -> dict[str, Any]:
    """Decode `sample_frames` frames of one video and measure them; a broken file gives {"error": ...}."""
    from gvr.io.video import VideoReader, uniform_indices

    out: dict[str, Any] = {"path": stat.path, "size": stat.size, "version": stat.version}
    with sio.local_copy(stat.path, opts.storage) as local:
        try:
            with VideoReader(local) as r:
                info = r.info
                frames = r.read(uniform_indices(info.frames, opts.curate.sample_frames))
        except InputError as e:  # the file itself is bad: a final verdict, cached
            return {**out, "error": str(e).replace(local, stat.path)}
    out.update(frames=info.frames, fps=info.fps, width=info.width, height=info.height,
               brightness=brightness(frames), laplacian_var=laplacian_variance(frames), musiq=None,
               musiq_model=None, error=None)
    if opts.musiq_weights and _needs_musiq(out, opts.curate):
        out["musiq"] = float(np.mean(_musiq(opts.musiq_weights, opts.device).score_frames(frames)))
        out["musiq_model"] = opts.musiq_id
    return out


# ------------------------------------------------------------------------------------ cache


class _Cache:
    """Measurement entries in `<manifest>.cache/part-*.jsonl`; later parts win."""

    def __init__(self, folder: str, storage: StorageParams, key: dict[str, Any]):
        self.folder, self.storage, self.key = folder, storage, key
        self.entries: dict[str, dict[str, Any]] = {}
        self.parts: list[str] = []
        self._new: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()

    def load(self) -> None:
        if not sio.exists(self.folder, self.storage):
            return
        self.parts = sio.list_files(self.folder, self.storage, extensions=[".jsonl"])
        for part in self.parts:
            for line in sio.read_text(part, self.storage).splitlines():
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue  # parts are written atomically; a bad line is foreign: ignore it
                if isinstance(e, dict) and e.get("key") == self.key:
                    self.entries[e["path"]] = e

    def get(self, stat: FileStat) -> dict[str, Any] | None:
        e = self.entries.get(stat.path)
        return e if e is not None and (e["size"], e["version"]) == (stat.size, stat.version) else None

    def add(self, entry: dict[str, Any]) -> None:
        entry = {**entry, "key": self.key}
        self.entries[entry["path"]] = entry
        self._new.append(entry)
        if len(self._new) >= _FLUSH_EVERY or time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._new:
            self._write(self._new)
            self._new = []
        self._last_flush = time.monotonic()

    def compact(self, paths: list[str]) -> None:
        """Rewrite as one part holding the entries of `paths` (the current inputs) only."""
        self.flush()
        old = sio.list_files(self.folder, self.storage, extensions=[".jsonl"]) \
            if sio.exists(self.folder, self.storage) else []
        keep = [self.entries[p] for p in paths if p in self.entries]
        if len(old) <= 1 and len(keep) == len(self.entries):
            return
        new = self._write(keep)  # written before the old parts go: a crash in between loses nothing
        for part in old:
            if part != new:
                sio.rm(part, self.storage)

    def _write(self, entries: list[dict[str, Any]]) -> str:
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        path = sio.join(self.folder, name)
        sio.write_text(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries), self.storage)
        return path


# ------------------------------------------------------------------------------------ stage


def cache_folder(manifest: str) -> str:
    """`data/manifest.csv` -> `data/manifest.cache`: where curate keeps its measurements."""
    name = sio.basename(manifest)
    return manifest[: len(manifest) - len(name)] + (name.rsplit(".", 1)[0] if "." in name else name) + ".cache"


def _reusable(e: dict[str, Any], cp: CurateParams, musiq_id: str | None) -> bool:
    """Whether a cached entry answers every filter now on (a MUSIQ score from these weights if needed)."""
    if musiq_id is None or not _needs_musiq(e, cp):
        return True
    return e.get("musiq") is not None and e.get("musiq_model") == musiq_id


class CurationResult(NamedTuple):
    """The manifest table and summary counts (total, accepted, rejected, one per reason, evaluated, cached)."""

    table: Any  # pandas.DataFrame with COLUMNS
    summary: dict[str, int]


def _resolve_musiq(params: Params) -> tuple[str | None, str | None]:
    """(weights path, identity for the cache) when MUSIQ is on; fails early when weights are missing."""
    if not params.curate.musiq:
        return None, None
    from gvr.eval.iqa import resolve_weights

    path = resolve_weights("musiq", params.curate.musiq_weights)
    stat = path.stat()
    return str(path), f"musiq:{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def _device(params: Params) -> str:
    device = params.compute.device
    if device != "auto":
        return device
    import torch  # only when MUSIQ runs: importing torch costs seconds

    return "cuda" if torch.cuda.is_available() else "cpu"


def curate(params: Params, manifest: str | None = None, *, progress: bool = True) -> CurationResult:
    """Measure and filter every video under `params.curate.input`; write the manifest CSV atomically.

    Args:
        params: `curate` thresholds, `storage` access, `compute` parallelism and device.
        manifest: where the CSV goes (local or s3://); default `{storage.root}/manifest.csv`.
        progress: show a progress bar.

    Returns the table (also written) and summary counts for logging.
    """
    import functools

    import pandas as pd

    from gvr.data.parallel import parallel_map

    cp, storage = params.curate, params.storage
    manifest = manifest or sio.join(storage.root, "manifest.csv")

    # 1. inputs, cache, and which videos still need measuring
    files = sio.scan(cp.input, storage, extensions=cp.extensions)
    if not files:
        log.warning("curate: no videos with extensions %s under %s", cp.extensions, cp.input)
    weights, musiq_id = _resolve_musiq(params)
    cache = _Cache(cache_folder(manifest), storage, {"format": CACHE_FORMAT, "sample_frames": cp.sample_frames})
    cache.load()
    cached = {f.path: e for f in files if (e := cache.get(f)) is not None and _reusable(e, cp, musiq_id)}
    todo = [f for f in files if f.path not in cached]
    log.info("curate: %d videos under %s (%d measured before)", len(files), cp.input, len(cached))

    # 2. measure in parallel, checkpointing finished entries as they come
    opts = MeasureOptions(cp, storage, weights, musiq_id, _device(params) if weights else "cpu")
    on_gpu = weights is not None and opts.device.startswith("cuda")
    transient: dict[str, str] = {}

    def record(i: int, r) -> None:
        if r.ok:
            cache.add(r.value)
        else:  # not the file's fault (network, crashed worker): report now, retry next run
            transient[todo[i].path] = r.error

    try:
        parallel_map(functools.partial(measure_video, opts=opts), todo, compute=params.compute, desc="curate",
                     num_gpus=cp.musiq_gpu_share if on_gpu else 0, progress=progress, on_result=record)
    finally:
        cache.flush()

    # 3. decide with the current thresholds, write the manifest, compact the cache
    rows = []
    for f in files:
        m = cache.entries.get(f.path) if f.path not in transient else None
        m = m or {"error": transient.get(f.path, "not measured")}
        reason = reject_reason(m, cp)
        if m.get("error") is not None:
            log.info("curate: %s unreadable: %s", f.path, m["error"])
        musiq = m.get("musiq") if musiq_id is not None and m.get("musiq_model") == musiq_id else None
        rows.append({"path": f.path, **{k: m.get(k) for k in COLUMNS[1:7]}, "musiq": musiq,
                     "accepted": reason is None, "reason": reason})
    table = pd.DataFrame(rows, columns=COLUMNS).astype(
        {"frames": "Int64", "width": "Int64", "height": "Int64", "fps": "float64", "brightness": "float64",
         "laplacian_var": "float64", "musiq": "float64", "accepted": "bool"})
    table["reason"] = _none_for_missing(table["reason"])
    with sio.atomic_local(manifest, storage) as tmp:
        table.to_csv(tmp, index=False)
    cache.compact([f.path for f in files])

    summary = summarize(table)
    summary.update(evaluated=len(todo), cached=len(cached))
    if transient:
        log.warning("curate: %d videos failed for reasons other than their content (retried next run), e.g. %s",
                    len(transient), next(iter(transient.values())))
    return CurationResult(table, summary)


def _none_for_missing(col):
    # pandas infers a string dtype with NaN for missing; the manifest's contract is None
    col = col.astype(object)
    return col.where(col.notna(), None)


def summarize(table) -> dict[str, int]:
    """Counts for logging: total, accepted, rejected and one entry per reason (zeros included)."""
    reasons = table["reason"].value_counts().to_dict()
    accepted = int(table["accepted"].sum())
    return {"total": len(table), "accepted": accepted, "rejected": len(table) - accepted,
            **{r: int(reasons.get(r, 0)) for r in REASONS}}


def read_manifest(path: str, storage: StorageParams | None = None):
    """Load a manifest CSV written by `curate` with its column types (reason None when accepted)."""
    import pandas as pd

    with sio.local_copy(path, storage) as local:
        table = pd.read_csv(local, dtype={"frames": "Int64", "width": "Int64", "height": "Int64",
                                          "reason": "object", "path": "str"})
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: not a curation manifest (missing columns {missing})")
    table["reason"] = _none_for_missing(table["reason"])
    table["accepted"] = table["accepted"].astype(bool)
    return table
