"""Batch upscaling with a trained model: LR latents or LR videos in, HR videos (and latents) out.

Inputs (a file or every matching file under a directory, local or s3://):
- `*.safetensors` with a tensor `latent` of shape (C, T, h, w) or (1, C, T, h, w): LR latents
  straight from the base T2V model (the cascaded path: no decode/re-encode);
- videos (`.mp4`, `.mov`, `.mkv`, `.webm`, `.avi`): encoded with the model's codec first.
A sidecar `<name>.txt` holds the prompt (else `--prompt`). The HR size keeps the input's aspect
ratio with a short side of `upscale.short_side` pixels, rounded to multiples of 16. Outputs go to
`<output>/<relative name>.mp4` (and `.safetensors` with `--save-latents`; the latent is written first
and the video last, so an existing video means the input is done), atomically; an input whose
outputs exist is skipped (resumable), and a failing input is recorded in `<output>/failures.json`
(rewritten every run) while the batch goes on. Inputs are spread over Ray workers (one GPU
actor per GPU, each loading the model once) or a thread pool, per `compute`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from gvr.config import Params
from gvr.errors import InputError
from gvr.io.storage import join

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
LATENT_EXTENSIONS = (".safetensors",)


def hr_size_for(lr_hw: tuple[int, int], short_side: int, multiple: int = 16) -> tuple[int, int]:
    """HR pixel size with the LR aspect ratio and the given short side, rounded to `multiple`."""
    h, w = lr_hw
    scale = short_side / min(h, w)
    return (max(multiple, round(h * scale / multiple) * multiple),
            max(multiple, round(w * scale / multiple) * multiple))


@dataclass(frozen=True)
class Job:
    src: str
    name: str


def list_inputs(path: str, params: Params) -> list[Job]:
    """Inputs under `path`, each named by its path relative to `path` without the extension."""
    from gvr.io.storage import basename, isdir, list_files

    exts = VIDEO_EXTENSIONS + LATENT_EXTENSIONS
    if isdir(path, params.storage):
        root = path.rstrip("/") + "/"
        files = list_files(path, params.storage, extensions=exts)
        jobs = [Job(f, f[len(root):].rsplit(".", 1)[0]) for f in files]
    else:
        jobs = [Job(path, basename(path).rsplit(".", 1)[0])] if path.lower().endswith(exts) else []
    if not jobs:
        raise InputError(f"{path}: no LR latents (.safetensors) or videos ({', '.join(VIDEO_EXTENSIONS)}) found")
    names = [j.name for j in jobs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise InputError(f"{path}: inputs that differ only in extension would write the same output: {clashes[:5]}")
    return jobs


def load_lr_latent(path: str, params: Params) -> torch.Tensor:
    from gvr.data.shards import load_tensors

    t = load_tensors(path, params.storage)
    if "latent" not in t:
        raise InputError(f"{path}: expected a tensor named 'latent' (C, T, h, w), found {sorted(t)}")
    z = t["latent"]
    z = z.unsqueeze(0) if z.ndim == 4 else z
    if z.ndim != 5 or z.shape[0] != 1:
        raise InputError(f"{path}: 'latent' must be (C, T, h, w) or (1, C, T, h, w), got {tuple(t['latent'].shape)}")
    if not z.is_floating_point() or not torch.isfinite(z).all():
        raise InputError(f"{path}: 'latent' must be finite floats, got {z.dtype} with NaN/inf or non-float values")
    return z.float()


def _prompt(job: Job, default: str, params: Params) -> str:
    from gvr.io.storage import read_sidecar

    return read_sidecar(job.src, params.storage) or default


def upscale_one(pipe, job: Job, params: Params, output: str, prompt: str, save_latents: bool) -> dict:
    """Upscale one input; returns a report row."""
    from gvr.data.shards import save_tensors
    from gvr.io.video import probe, read_frames, to_frames, write_video

    up = params.upscale
    start = time.perf_counter()
    fps = up.fps
    if job.src.lower().endswith(LATENT_EXTENSIONS):
        inputs = {"lr_latent": load_lr_latent(job.src, params)}
        lr_hw = tuple(d * pipe.codec.spatial_factor for d in inputs["lr_latent"].shape[-2:])
    else:
        info = probe(job.src, params.storage)
        inputs = {"lr_video": read_frames(job.src, storage=params.storage)}
        lr_hw, fps = inputs["lr_video"].shape[1:3], info.fps or up.fps
    out = pipe(**inputs, prompt=_prompt(job, prompt, params), hr_size=hr_size_for(lr_hw, up.short_side),
               steps=up.steps, noise_aug=up.noise_aug, guidance=up.guidance, seed=up.seed)
    video = to_frames(out.video[0])
    if save_latents:
        save_tensors(join(output, f"{job.name}.safetensors"), {"latent": out.latent[0].float()}, params.storage)
    write_video(join(output, f"{job.name}.mp4"), video, fps=fps, storage=params.storage)  # last: marks done
    return {"input": job.src, "output": join(output, f"{job.name}.mp4"), "frames": len(video),
            "height": video.shape[1], "width": video.shape[2], "seconds": time.perf_counter() - start}


@functools.lru_cache(maxsize=1)
def _pipeline(model_dir: str, device: str, dtype: str):
    """This worker's pipeline, loaded once per process."""
    from gvr.pipeline import load_pipeline

    return load_pipeline(model_dir, device, dtype)


def _run_job(job: Job, *, model_dir: str, params_json: str, output: str, prompt: str, save_latents: bool) -> dict:
    from gvr.config import params_from_json

    params = params_from_json(params_json)
    pipe = _pipeline(model_dir, params.compute.device, params.compute.dtype)
    return upscale_one(pipe, job, params, output, prompt, save_latents)


def upscale(params: Params, *, model: str, input: str, output: str, prompt: str = "",
            save_latents: bool = False) -> list[dict]:
    """Upscale every input under `input` with `model` into `output`. Returns the per-input report."""
    from gvr import tracking
    from gvr.config import params_to_json
    from gvr.data.parallel import parallel_map
    from gvr.io.storage import exists, rm, write_json
    from gvr.models.dit import read_config
    from gvr.registry import resolve_model_uri

    jobs = list_inputs(input, params)
    todo = [j for j in jobs if not exists(join(output, f"{j.name}.mp4"), params.storage)
            or (save_latents and not exists(join(output, f"{j.name}.safetensors"), params.storage))]
    log.info("upscale: %d inputs, %d to do", len(jobs), len(todo))
    model_dir = resolve_model_uri(model, params)
    read_config(model_dir)  # a folder that is no model fails once, here; the weights load in the workers
    gpus = 1 if params.compute.device != "cpu" and torch.cuda.is_available() else 0
    # One pipeline per worker process: threads would share (and re-configure) one model.
    compute = params.compute if params.compute.use_ray else dataclasses.replace(params.compute, workers=1)
    with tracking.stage_run(params, "upscale", log_params=False):
        results = parallel_map(
            functools.partial(_run_job, model_dir=model_dir, params_json=params_to_json(params), output=output,
                              prompt=prompt, save_latents=save_latents),
            todo, compute=compute, desc="upscale", num_gpus=gpus)
        report = [r.value for r in results if r.ok]
        failures = [{"input": r.item.src, "reason": r.error} for r in results if not r.ok]
        for f in failures:
            log.warning("upscale: %s", f["reason"])
        tracking.log_metrics({"upscaled": len(report), "failed": len(failures),
                              "seconds_per_input": float(np.mean([r["seconds"] for r in report])) if report else 0.0})
    if failures:
        write_json(join(output, "failures.json"), failures, params.storage)
    elif exists(join(output, "failures.json"), params.storage):  # from an earlier run: not true any more
        rm(join(output, "failures.json"), params.storage)
    if todo and not report:
        raise InputError(f"upscale: every input failed; first: {failures[0]['reason']}")
    return report
