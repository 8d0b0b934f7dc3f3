"""One training stage through DeepSpeed's engine: data, init, loop, checkpoints, export.

Stage order and inits (paper §4.1.4): stage 1 starts from `model.init` (a pretrained T2V model,
e.g. Wan2.1-1.3B through the importer) or from scratch; every later stage starts from the
previous stage's export. The timestep distribution per stage is `train.stages.<s>.sampler`;
stage 3 switches the 3D attention to interleaving temporal units (`attention`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from gvr.config import Params
from gvr.errors import ConfigError, InputError
from gvr.layout import Layout
from gvr.runtime import init_distributed, pick_device, seed_everything, torch_dtype

log = logging.getLogger(__name__)


def previous_stage(params: Params, stage: str) -> str | None:
    names = list(params.train.stages)
    i = names.index(stage)
    return names[i - 1] if i else None


# Train settings that do not change what a stage computes: changing them keeps its checkpoints.
_CADENCE_KEYS = ("stages", "launcher", "log_every", "checkpoint_every", "keep_checkpoints", "loader_workers")


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(params: Params, stage: str, data_ids: list[str], inputs: dict[str, str]) -> str:
    """Identity of what a stage computes: checkpoints of another identity are never resumed.

    It covers the result-shaping settings (optimiser, this stage, the model, precision, seed), the
    training data, and `inputs`: digests of the starting weights and the timestep distribution, so
    a rerun after an upstream stage changed starts over instead of re-exporting stale weights.
    """
    d = params.to_dict()
    train = {k: v for k, v in d["train"].items() if k not in _CADENCE_KEYS}
    blob = json.dumps({"train": train, "stage": d["train"]["stages"][stage], "name": stage, "model": d["model"],
                       "dtype": params.compute.dtype, "data": sorted(data_ids), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_inputs(params: Params, stage: str) -> dict[str, str]:
    """Digests of the files a stage starts from: the previous export (or model.init) and the sampler."""
    layout = Layout.of(params)
    prev = previous_stage(params, stage)
    out = {}
    if prev is not None:
        out["init"] = file_digest(Path(_local_dir(params, layout.model(prev))) / "model.safetensors")
    elif params.model.init:
        init = Path(params.model.init)
        files = sorted(init.rglob("*.safetensors")) if init.is_dir() else [init]
        out["init"] = hashlib.sha256("".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                                             for f in files).encode()).hexdigest()
    if params.train.stages[stage].sampler == "detail_aware":
        from gvr.io.storage import read_bytes

        out["sampler"] = hashlib.sha256(read_bytes(layout.sampler_file, params.storage)).hexdigest()
    return out


def build_stage_model(params: Params, stage: str, device: torch.device):
    """The model a stage starts from."""
    from gvr.models.dit import SimpleGVR
    from gvr.models.presets import build_model, resolve

    prev = previous_stage(params, stage)
    if prev is not None:
        src = Layout.of(params).model(prev)
        log.info("%s starts from the %s export %s", stage, prev, src)
        model = SimpleGVR.from_pretrained(_local_dir(params, src), device=device)
    elif params.model.init:
        from gvr.models.presets import load_init

        model = load_init(params.model, device=device, text_dim=params.text.dim,
                          latent_channels=params.codec.channels)
    else:
        cfg = resolve(params.model, text_dim=params.text.dim, latent_channels=params.codec.channels)
        model = build_model(cfg, device=device)
    kind = params.train.stages[stage].attention
    if kind:
        model.set_attention(kind)
    return model


def _local_dir(params: Params, path: str) -> str:
    from gvr.io.storage import local_dir

    return local_dir(path, params.storage)


def _timestep_sampler(params: Params, stage: str):
    from gvr.diffusion.timesteps import DetailAwareSampler, UniformSampler

    if params.train.stages[stage].sampler == "uniform":
        return UniformSampler()
    path = Layout.of(params).sampler_file
    from gvr.io.storage import exists

    if not exists(path, params.storage):
        raise InputError(f"{path}: detail-aware timestep distribution not found; run `gvr derive-sampler` "
                         f"first or set train.stages.{stage}.sampler=uniform")
    from gvr.io.storage import local_copy

    with local_copy(path, params.storage) as local:
        return DetailAwareSampler.load(local)


def _cycle(loader: DataLoader, sampler: DistributedSampler) -> Iterator[dict]:
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _checkpoint_dir(params: Params, stage: str) -> Path:
    root = Layout.of(params).checkpoints(stage)
    if "://" in root:  # DeepSpeed writes to a filesystem; object-store roots checkpoint locally
        return Path(".gvr") / "checkpoints" / stage
    return Path(root)


def run_stage(params: Params, stage: str, *, resume: bool = True) -> str:
    """Train `stage` on this rank; rank 0 exports the model. Returns the export path."""
    from gvr import tracking
    from gvr.data.shards import LatentPairDataset
    from gvr.diffusion.flow_matching import training_loss

    sp, tp = params.train.stages[stage], params.train
    layout = Layout.of(params)
    device = pick_device(params.compute.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    from gvr.tracking import check_reachable, tracking_uri

    check_reachable(tracking_uri(params))  # on every rank: a dead server must not leave peers waiting
    rank, world = init_distributed(device)
    seed_everything(tp.seed + rank)

    # 1. data: the stage's pair sets at the stage's frame count
    dataset = LatentPairDataset.from_sets(layout, sp.pairs, frames=sp.frames, storage=params.storage)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=tp.seed)
    loader = DataLoader(dataset, batch_size=tp.micro_batch, sampler=sampler, drop_last=True,
                        num_workers=tp.loader_workers if len(dataset) > 1 else 0,
                        persistent_workers=False, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise InputError(f"train {stage}: {len(dataset)} pairs is fewer than one micro batch of "
                         f"{tp.micro_batch} per rank x {world} ranks")
    null_text, null_mask = dataset.null_text(device)

    # 2. model and engine
    model = build_stage_model(params, stage, device)
    if model.cfg.text_dim != dataset.text_dim:
        raise ConfigError(f"model text dim {model.cfg.text_dim} != text embeddings in the pairs "
                          f"({dataset.text_dim}); check model.* and text.dim")
    engine = _engine(model, params, world, device)
    dtype = torch_dtype(params.compute.dtype, device)
    t_sampler = _timestep_sampler(params, stage)

    # 3. resume: rank 0 decides from the fingerprint stamp, every rank follows
    ckpt_dir = _checkpoint_dir(params, stage)
    fp = fingerprint(params, stage, dataset.ids, stage_inputs(params, stage))
    resumed = _prepare_checkpoints(ckpt_dir, fp, resume, rank, world, stage)
    if resumed:
        engine.load_checkpoint(str(ckpt_dir))
        log.info("%s: resumed at step %d from %s", stage, engine.global_steps, ckpt_dir)
    start_step = engine.global_steps

    # 4. loop
    gen = torch.Generator(device=device).manual_seed(tp.seed * 1000 + rank + engine.global_steps)
    batches = _cycle(loader, sampler)
    with tracking.stage_run(params, f"train-{stage}") as run:
        tracking.log_params({"train.stage": stage, "train.world_size": world, "train.pairs": len(dataset),
                             "train.fingerprint": fp})  # tracking calls are no-ops off rank 0
        progress = _progress(rank, stage, sp.iterations, engine.global_steps)
        window, t0, samples, last = [], time.perf_counter(), 0, {}
        while engine.global_steps < sp.iterations:
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss, _ = training_loss(engine, batch["z0"], batch["c0"], batch["text"], batch["text_mask"],
                                        null_text=null_text, null_mask=null_mask, t_sampler=t_sampler,
                                        noise_aug=tuple(tp.noise_aug), null_prompt_prob=tp.null_prompt_prob,
                                        generator=gen)
            if not _all_finite(loss, world):  # every rank stops together, none hangs in a collective
                raise InputError(f"train {stage}: the loss became NaN/inf at step {engine.global_steps}; "
                                 "check the data (NaN latents) or lower train.lr")
            engine.backward(loss)
            stepped = engine.is_gradient_accumulation_boundary()
            engine.step()
            window.append(loss.item())
            samples += batch["z0"].shape[0] * world
            if not stepped:
                continue
            step = engine.global_steps
            progress.update(1)
            if step % tp.log_every == 0 or step == sp.iterations:
                dt = time.perf_counter() - t0
                metrics = {"loss": sum(window) / len(window), "lr": engine.get_lr()[0],
                           "samples_per_s": samples / dt, "s_per_step": dt / tp.log_every}
                if device.type == "cuda":
                    metrics["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                progress.set_postfix(loss=f"{metrics['loss']:.4f}")
                tracking.log_metrics(metrics, step=step)
                log.debug("%s step %d: %s", stage, step, metrics)
                last = metrics
                window, t0, samples = [], time.perf_counter(), 0
            if step % tp.checkpoint_every == 0 and step < sp.iterations:
                _save_checkpoint(engine, ckpt_dir, params, fp, rank)
        progress.close()

        # 5. a final checkpoint (a rerun with the same inputs is then a no-op) and the export (rank 0)
        if engine.global_steps > start_step:
            _save_checkpoint(engine, ckpt_dir, params, fp, rank)
        out = layout.model(stage)
        if rank == 0:
            export(engine.module, params, stage, out, dataset)
            tracking.log_metrics({"final_step": engine.global_steps})
            log.info("%s: exported %s after %d steps; last window %s (run %s)", stage, out, engine.global_steps,
                     {k: round(v, 4) for k, v in last.items()}, getattr(run, "info", None) and run.info.run_id)
    if world > 1:
        torch.distributed.barrier()
    return out


STAMP = "fingerprint.json"


def _prepare_checkpoints(ckpt_dir: Path, fp: str, resume: bool, rank: int, world: int, stage: str) -> bool:
    """Whether to resume from `ckpt_dir`; stale checkpoints are removed. Decided on rank 0, shared."""
    decision = [False]
    if rank == 0:
        stamp = ckpt_dir / STAMP
        have = (ckpt_dir / "latest").is_file()
        same = stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fp
        decision[0] = resume and have and same
        if have and not decision[0]:
            why = "--no-resume" if not resume else "other params, data or upstream weights"
            log.warning("%s: discarding checkpoints in %s (%s)", stage, ckpt_dir, why)
        if not decision[0]:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_dir / f".{STAMP}.tmp"
            tmp.write_text(json.dumps({"fingerprint": fp, "stage": stage}))
            tmp.replace(stamp)
    if world > 1:
        torch.distributed.broadcast_object_list(decision, src=0)
        torch.distributed.barrier()  # nobody loads or writes while rank 0 clears
    return decision[0]


def _save_checkpoint(engine, ckpt_dir: Path, params: Params, fp: str, rank: int) -> None:
    """Save the engine state (all ranks), then keep only the newest `train.keep_checkpoints` tags."""
    engine.save_checkpoint(str(ckpt_dir), tag=f"step{engine.global_steps}",
                           client_state={"fingerprint": fp, "params": params.to_dict()})
    if rank == 0:
        tags = sorted((p for p in ckpt_dir.glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
        for old in tags[:-params.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


def _all_finite(loss: torch.Tensor, world: int) -> bool:
    ok = torch.isfinite(loss.detach()).float()
    if world > 1:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())


def _engine(model, params: Params, world: int, device: torch.device):
    """The DeepSpeed engine around `model`, configured from `params.train`."""
    import deepspeed

    from gvr.train.deepspeed_config import deepspeed_config, make_optimizer

    cuda = device.type == "cuda"
    trainable = [p for p in model.parameters() if p.requires_grad]
    cfg = deepspeed_config(params.train, world_size=world, cuda=cuda, dtype=params.compute.dtype)
    engine, _, _, _ = deepspeed.initialize(model=model, config=cfg,
                                           optimizer=make_optimizer(params.train, trainable, cuda=cuda))
    return engine


def _progress(rank: int, stage: str, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"train {stage}", unit="step", disable=rank != 0,
                dynamic_ncols=True)


def export(model, params: Params, stage: str, out: str, dataset) -> None:
    """Write model.safetensors + config.json (full params, codec, text encoder, sampler) atomically."""
    from gvr.io.storage import atomic_dir

    extra = {"params": params.to_dict(), "stage": stage, "codec": params.to_dict()["codec"],
             "text": params.to_dict()["text"], "pairs": dataset.describe()}
    with atomic_dir(out, params.storage) as tmp:
        model.save_pretrained(tmp, extra=extra)
