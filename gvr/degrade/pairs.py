"""Training pairs: HR clips, their degraded LR versions, encoded once into latent shards.

For every accepted video of the manifest and every pair set in `degrade.sets`:
1. cut `clips_per_video` clips of `frames` consecutive frames, spread over the video;
2. fit each clip to `hr_size` (resize to cover, centre crop);
3. make the LR clip with one of the set's methods (cycled per clip): `resize` (area
   downsampling), `second_order` (RealBasicVSR-style), `flow` (flow-based, then resize), or
   `model_guided` (resize + encode, then SDEdit with the base T2V model in latent space);
4. encode HR -> z0 and LR -> c0 with the codec, the caption with the text encoder;
5. write one shard per video atomically; a failing video is recorded with its reason.
Videos of `split: holdout` sets are those held out of training (a deterministic hash split);
their shards also keep the HR/LR pixels for evaluation.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gvr.config import PairSetParams, Params
from gvr.errors import InputError
from gvr.io.storage import join
from gvr.io.video import to_frames, to_tensor
from gvr.layout import Layout

log = logging.getLogger(__name__)


def is_holdout(path: str, fraction: float) -> bool:
    """Deterministic split by path hash, stable when videos are added or removed."""
    h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") / 2**64
    return h < fraction


def split_videos(paths: list[str], fraction: float, min_holdout: int) -> tuple[list[str], list[str]]:
    """(train, holdout) paths; at least `min_holdout` held out when there are enough videos."""
    holdout = [p for p in paths if is_holdout(p, fraction)]
    if len(holdout) < min_holdout and len(paths) > min_holdout:
        ranked = sorted(paths, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
        holdout = ranked[:min_holdout]
    held = set(holdout)
    train = [p for p in paths if p not in held]
    return train, holdout


def clip_starts(total: int, frames: int, count: int) -> list[int]:
    """Start frames of up to `count` clips spread evenly over a video of `total` frames."""
    if total < frames:
        return []
    last = total - frames
    if count == 1:
        return [last // 2]
    return sorted({round(i * last / (count - 1)) for i in range(count)})


def fit_to_size(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames to cover `size` (H, W), keeping aspect, then centre-crop."""
    import cv2

    th, tw = size
    _, h, w, _ = frames.shape
    scale = max(th / h, tw / w)
    rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    out = np.stack([cv2.resize(f, (rw, rh), interpolation=interp) for f in frames])
    y, x = (rh - th) // 2, (rw - tw) // 2
    return np.ascontiguousarray(out[:, y:y + th, x:x + tw])


def resize_video(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = size
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])



@dataclass(frozen=True)
class PairJob:
    """One video of one pair set."""

    video: str
    set_name: str
    set_dir: str
    shard: str
    pair_set: PairSetParams
    keep_pixels: bool


def shard_name(video: str, version: str, set_name: str, pair_set: PairSetParams, params: Params) -> str:
    """Content-addressed shard file name: changes whenever something that shapes the shard changes.

    `version` identifies the video's bytes (size + mtime/ETag), so a replaced video is re-encoded;
    settings that only affect speed (devices, batch sizes, caches) are left out.
    """
    d, c, t = params.degrade, params.codec, params.text
    key = repr((video, version, set_name, pair_set, d.hr_size, d.lr_size, d.latent_dtype, d.second_order, d.flow,
                d.model_guided_alpha, d.model_guided_steps, params.base, (c.kind, c.path, c.channels, c.tiling,
                c.tile_size, c.tile_overlap), (t.kind, t.path, t.dim, t.max_length), params.compute.seed,
                params.compute.dtype))
    return f"shards/{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"


@functools.lru_cache(maxsize=2)
def _text_encoder(params_json: str):
    """The params, device, dtype and text encoder of this process, loaded once."""
    from gvr.config import params_from_json
    from gvr.models.text import text_encoder_from_params
    from gvr.runtime import pick_device, torch_dtype

    params = params_from_json(params_json)
    device = pick_device(params.compute.device)
    dtype = torch_dtype(params.compute.dtype, device)
    return params, device, dtype, text_encoder_from_params(params.text, device=device, dtype=dtype)


@functools.lru_cache(maxsize=2)
def _encoders(params_json: str):
    """Codec and text encoder of this worker process, loaded once."""
    from gvr.models.vae import codec_from_params

    params, device, dtype, text = _text_encoder(params_json)
    return params, device, dtype, codec_from_params(params.codec, device=device, dtype=dtype), text


@functools.lru_cache(maxsize=1)
def _base_model(kind: str, path: str | None, device: str, dtype: str, channels: int, text_dim: int):
    from gvr.models.base import load_base_model

    if not path:
        raise InputError("degrade: model_guided pairs need base.path (a local base T2V transformer)")
    return load_base_model(kind, path, device=torch.device(device), dtype=getattr(torch, dtype),
                           channels=channels, text_dim=text_dim)


def _caption(video: str, params: Params) -> str:
    from gvr.io.storage import read_sidecar

    return "" if params.degrade.captions == "none" else read_sidecar(video, params.storage) or ""

def _lr_latent(hr: np.ndarray, method: str, params: Params, rng: np.random.Generator,
               codec, device, dtype, text_emb, text_mask) -> tuple[torch.Tensor, np.ndarray]:
    """LR latent and LR pixels for one HR clip and one degradation method."""
    lr_size = tuple(params.degrade.lr_size)
    if method == "second_order":
        from gvr.degrade.second_order import degrade_video

        lr = degrade_video(hr, lr_size, rng, params.degrade.second_order)
    elif method == "flow":  # at LR: where the base model's motion artefacts live, and 8x fewer pixels
        from gvr.degrade.flow import degrade_video

        lr = degrade_video(resize_video(hr, lr_size), rng, params.degrade.flow)
    else:  # resize, and the pixel start of model_guided
        lr = resize_video(hr, lr_size)
    c0 = codec.encode(to_tensor(lr).to(device, dtype))
    if method == "model_guided":
        from gvr.degrade.model_guided import degrade_latent

        base = _base_model(params.base.kind, params.base.path, str(device), str(dtype).split(".")[-1],
                           params.codec.channels, params.text.dim)
        lo, hi = params.degrade.model_guided_alpha
        alpha = float(rng.uniform(lo, hi))
        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**31)))
        c0 = degrade_latent(c0, base, alpha=alpha, text_emb=text_emb, text_mask=text_mask,
                            steps=params.degrade.model_guided_steps, generator=gen)
        lr = None  # the degradation lives in latent space; decode for pixels when needed
    return c0, lr


@torch.inference_mode()
def build_shard(job: PairJob, params_json: str) -> dict[str, Any]:
    """Worker: all clips of one video for one set -> one shard file. Returns its index entry."""
    from gvr.data.shards import save_tensors
    from gvr.io.storage import write_json
    from gvr.io.video import probe, read_frames

    params, device, dtype, codec, text_enc = _encoders(params_json)
    ps = job.pair_set
    info = probe(job.video, params.storage)
    starts = clip_starts(info.frames, ps.frames, ps.clips_per_video)
    if not starts:
        raise InputError(f"{job.video}: {info.frames} frames, fewer than the {ps.frames} a clip of set "
                         f"{job.set_name} needs")
    caption = _caption(job.video, params)
    emb, mask = text_enc.encode([caption])
    seed = int.from_bytes(hashlib.sha256(f"{job.video}|{job.set_name}|{params.compute.seed}".encode())
                          .digest()[:8], "big")
    rng = np.random.default_rng(seed)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("z0", "c0", "text", "text_mask", "hr_video", "lr_video")}
    methods = []
    for i, start in enumerate(starts):
        frames = read_frames(job.video, list(range(start, start + ps.frames)), storage=params.storage)
        hr = fit_to_size(frames, tuple(params.degrade.hr_size))
        method = ps.methods[(seed + i) % len(ps.methods)]
        z0 = codec.encode(to_tensor(hr).to(device, dtype))
        c0, lr = _lr_latent(hr, method, params, rng, codec, device, dtype, emb, mask)
        if lr is None:
            lr = to_frames(codec.decode(c0))
        for name, value in (("z0", z0[0]), ("c0", c0[0]), ("text", emb[0]), ("text_mask", mask[0])):
            out[name].append(value)
        if job.keep_pixels:
            out["hr_video"].append(torch.from_numpy(hr))
            out["lr_video"].append(torch.from_numpy(np.ascontiguousarray(lr)))
        methods.append(method)
    store_dtype = getattr(torch, params.degrade.latent_dtype)
    tensors = {k: torch.stack(v) for k, v in out.items() if v}
    for k in ("z0", "c0", "text"):
        tensors[k] = tensors[k].to(store_dtype)
    tensors["text_mask"] = tensors["text_mask"].bool()
    for k in ("z0", "c0"):
        if not torch.isfinite(tensors[k].float()).all():
            raise InputError(f"{job.video}: the codec produced NaN/inf latents")
    save_tensors(join(job.set_dir, job.shard), tensors, params.storage,
                 metadata={"source": job.video, "set": job.set_name, "methods": ",".join(methods),
                           "starts": ",".join(map(str, starts[:len(methods)]))})
    entry = {"file": job.shard, "count": len(methods), "source": job.video, "methods": methods,
             "caption": caption, "z0_shape": list(tensors["z0"].shape[1:]),
             "c0_shape": list(tensors["c0"].shape[1:]), "text_shape": list(tensors["text"].shape[1:])}
    # Written after the shard: its presence marks the shard complete, and resume reads only these.
    write_json(join(job.set_dir, _entry_file(job.shard)), entry, params.storage)
    return entry


def _entry_file(shard: str) -> str:
    return shard.rsplit(".", 1)[0] + ".json"




def make_pairs(params: Params, sets: list[str] | None = None, *, progress: bool = True) -> dict[str, dict]:
    """Build every requested pair set from the manifest's accepted videos. Returns each set's index."""
    import pandas as pd

    from gvr.config import params_to_json
    from gvr.data.parallel import parallel_map
    from gvr.data.shards import write_index, write_null_text
    from gvr.io.storage import exists, local_copy, scan

    layout = Layout.of(params)
    if not exists(layout.manifest, params.storage):
        raise InputError(f"{layout.manifest}: manifest not found; run `gvr curate` first")
    with local_copy(layout.manifest, params.storage) as path:
        manifest = pd.read_csv(path)
    accepted = sorted(manifest.loc[manifest["accepted"].astype(bool), "path"].astype(str))
    if not accepted:
        raise InputError(f"{layout.manifest}: no accepted videos to make pairs from")
    train, holdout = split_videos(accepted, params.degrade.holdout_fraction, params.degrade.min_holdout)
    names = sets or list(params.degrade.sets)
    unknown = [n for n in names if n not in params.degrade.sets]
    if unknown:
        raise InputError(f"degrade --sets: unknown set(s) {unknown}; defined: {list(params.degrade.sets)}")

    if any("model_guided" in params.degrade.sets[n].methods for n in names) and not params.base.path:
        raise InputError("degrade: model_guided pairs need base.path (a local base T2V transformer); "
                         "set it or drop model_guided from degrade.sets.*.methods")
    versions = {s.path: f"{s.size}:{s.version}" for s in scan(params.curate.input, params.storage)}
    params_json = params_to_json(params)
    *_, text_enc = _text_encoder(params_json)  # the codec loads in the workers only
    null_emb, null_mask = text_enc.null(1)
    gpus = 1 if params.compute.device != "cpu" and torch.cuda.is_available() else 0
    indexes, empty = {}, []
    for name in names:
        ps = params.degrade.sets[name]
        set_dir = layout.pairs(name)
        videos = holdout if ps.split == "holdout" else train
        jobs = [PairJob(v, name, set_dir, shard_name(v, versions.get(v, ""), name, ps, params), ps,
                        ps.split == "holdout") for v in videos]
        done = _finished(set_dir, params)
        todo = [j for j in jobs if j.shard not in done]
        log.info("degrade %s: %d videos (%d already done)", name, len(jobs), len(jobs) - len(todo))
        results = parallel_map(functools.partial(build_shard, params_json=params_json), todo,
                               compute=params.compute, desc=f"degrade {name}", num_gpus=gpus)
        entries, failed = _collect(jobs, done, results, todo)
        index = _index(name, ps, params, entries, failed)
        write_null_text(set_dir, null_emb[0].to(getattr(torch, params.degrade.latent_dtype)), null_mask[0],
                        params.storage)
        write_index(set_dir, index, params.storage)
        _prune(set_dir, {e["file"] for e in entries}, params)
        indexes[name] = index
        if not entries:
            first = failed[0]["reason"] if failed else f"no {ps.split} videos"
            empty.append(f"{name} ({first})")
    if empty:
        raise InputError(f"degrade: no pairs in set(s) {'; '.join(empty)}")
    return indexes


def _prune(set_dir: str, keep: set[str], params: Params) -> None:
    """Delete shards (and their entries) of this set that the new index no longer lists."""
    from gvr.io.storage import exists, rm, scan

    shards = join(set_dir, "shards")
    if not exists(shards, params.storage):
        return
    keep_paths = {join(set_dir, f) for f in keep} | {join(set_dir, _entry_file(f)) for f in keep}
    for stat in scan(shards, params.storage):
        if stat.path not in keep_paths:
            rm(stat.path, params.storage)


def _finished(set_dir: str, params: Params) -> dict[str, dict]:
    """Index entries of the shards finished by earlier runs, by shard file (one listing, small reads)."""
    from gvr.io.storage import exists, read_json, scan

    shards = join(set_dir, "shards")
    if not exists(shards, params.storage):
        return {}
    out = {}
    for stat in scan(shards, params.storage, extensions=[".json"]):
        entry = read_json(stat.path, params.storage)
        out[entry["file"]] = entry
    return out


def _collect(jobs, done: dict[str, dict], results, todo):
    """Index entries of this set's shards (new and from earlier runs) and reasons for failures."""
    by_shard = {j.shard: r for j, r in zip(todo, results)}
    entries, failed = [], []
    for job in jobs:
        r = by_shard.get(job.shard)
        if r is None:
            entries.append(done[job.shard])
        elif r.ok:
            entries.append(r.value)
        else:
            failed.append({"source": job.video, "reason": r.error})
            log.warning("degrade %s: %s", job.set_name, r.error)
    return entries, failed


def _index(name: str, ps: PairSetParams, params: Params, entries: list[dict], failed: list[dict]) -> dict:
    shapes = {(tuple(e["z0_shape"]), tuple(e["c0_shape"]), tuple(e["text_shape"])) for e in entries}
    if len(shapes) > 1:
        raise InputError(f"degrade {name}: shards disagree on shapes {sorted(shapes)}")
    z0, c0, text = (list(s) for s in shapes.pop()) if shapes else ([], [], [])
    return {"set": name, "frames": ps.frames, "split": ps.split, "methods": ps.methods,
            "hr_size": params.degrade.hr_size, "lr_size": params.degrade.lr_size,
            "z0_shape": z0, "c0_shape": c0, "text_shape": text,
            "codec": params.to_dict()["codec"], "text_encoder": params.to_dict()["text"],
            "shards": sorted(entries, key=lambda e: e["file"]), "failed": failed}
