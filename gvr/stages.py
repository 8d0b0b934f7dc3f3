"""Pipeline stages as library calls: each takes the loaded params, runs one step of the DAG inside an
MLflow stage run, and writes its outputs to the layout (`gvr.layout`). `gvr.cli` maps one
subcommand to each; `train` lives in `gvr.train.launch` because it may re-launch itself.
"""

from __future__ import annotations

import logging

from gvr import tracking
from gvr.config import Params
from gvr.errors import InputError
from gvr.layout import Layout

log = logging.getLogger(__name__)


def curate(params: Params) -> dict[str, int]:
    """Filter raw videos into `{root}/manifest.csv`; returns accepted/rejected counts."""
    from gvr.data.curate import curate as run_curate

    layout = Layout.of(params)
    with tracking.stage_run(params, "curate"):
        table, summary = run_curate(params, layout.manifest)
        tracking.log_metrics({f"curate_{k}": v for k, v in summary.items()})
        tracking.log_artifact(layout.manifest, params.storage)
    log.info("curate: %s -> %s", summary, layout.manifest)
    return summary


def degrade(params: Params, sets: list[str] | None = None) -> dict[str, dict]:
    """Make the HR/LR latent pair sets (`{root}/pairs/<set>/`)."""
    from gvr.data.shards import shard_summary
    from gvr.degrade.pairs import make_pairs

    with tracking.stage_run(params, "degrade"):
        indexes = make_pairs(params, sets)
        for name, index in indexes.items():
            summary = shard_summary(index)
            tracking.log_metrics({f"{name}_{k}": v for k, v in summary.items()})
            log.info("degrade %s: %s", name, summary)
    return indexes


def stage_model(params: Params, model_dir: str | None) -> str:
    """The model a post-training stage works on: `--model`, else the last training stage's export."""
    return model_dir or Layout.of(params).model(list(params.train.stages)[-1])


def derive_sampler(params: Params) -> dict:
    """Detail-aware timestep distribution from the uniform-trained first stage (paper §3.4, Fig. 6)."""
    from gvr.data.shards import iter_pairs, read_index
    from gvr.diffusion.timesteps import derive_detail_aware
    from gvr.io.storage import atomic_dir, local_dir
    from gvr.models.dit import SimpleGVR
    from gvr.runtime import pick_device

    layout = Layout.of(params)
    first = list(params.train.stages)[0]
    device = pick_device(params.compute.device)
    model = SimpleGVR.from_pretrained(local_dir(layout.model(first), params.storage), device=device)
    sp, clips, hr_size = params.sampler, [], None
    for name in params.train.stages[first].pairs:
        set_dir = layout.pairs(name)
        hr_size = hr_size or tuple(read_index(set_dir, params.storage)["z0_shape"][-2:])
        for _, t in iter_pairs(set_dir, params.storage, keys=("c0", "text", "text_mask"), limit=sp.clips - len(clips)):
            clips.append((t["c0"][None].float().to(device), t["text"][None].float().to(device),
                          t["text_mask"][None].bool().to(device)))
    if not clips:
        raise InputError(f"derive-sampler: no pairs in sets {params.train.stages[first].pairs}")
    with tracking.stage_run(params, "derive-sampler"), atomic_dir(layout.sampler, params.storage) as tmp:
        curve = derive_detail_aware(model, clips, hr_size=hr_size, steps=sp.steps, noise_aug=sp.noise_aug,
                                    cutoff=sp.high_freq_cutoff, bins=sp.bins, seed=params.compute.seed,
                                    uniform_floor=sp.uniform_floor, json_path=f"{tmp}/detail_aware.json",
                                    plot_path=f"{tmp}/detail_curve.png", progress=True)
        tracking.log_artifacts(tmp)
        tracking.log_metrics({"sampler_clips": curve.clips})
    return {"clips": curve.clips, "variation": curve.variation}


def evaluate(params: Params, model_dir: str | None = None) -> dict[str, float]:
    """Evaluate on the held-out set; writes `{root}/eval/metrics.json` and reports."""
    from gvr.eval.runner import evaluate_model

    layout = Layout.of(params)
    model_dir = stage_model(params, model_dir)
    with tracking.stage_run(params, "evaluate"):
        metrics = evaluate_model(params, model_dir, layout.eval)
        tracking.log_metrics(metrics)
        tracking.log_artifacts(layout.eval, params.storage)
    log.info("evaluate: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def register(params: Params, model_dir: str | None = None) -> dict:
    """Register the evaluated model in MLflow; move the champion alias if the rule holds."""
    from gvr.io.storage import exists, read_json, write_json
    from gvr.registry import describe
    from gvr.registry import register as register_model

    layout = Layout.of(params)
    model_dir = stage_model(params, model_dir)
    if not exists(layout.metrics, params.storage):
        raise InputError(f"{layout.metrics}: no evaluation metrics; run `gvr evaluate` first")
    metrics = read_json(layout.metrics, params.storage)
    with tracking.stage_run(params, "register") as run:
        version = register_model(params, model_dir, metrics, run_id=run.info.run_id if run else None)
        decision = describe(version, params)
    write_json(layout.registry, decision, params.storage)
    log.info("register: %s", decision)
    return decision
