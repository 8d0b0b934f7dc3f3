"""DeepSpeed engine config derived from `TrainParams` (the single source of truth for training knobs)."""

from __future__ import annotations

from typing import Any

import torch

from gvr.config import TrainParams
from gvr.errors import ConfigError


def batch_split(train: TrainParams, world_size: int) -> tuple[int, int]:
    """(micro batch per rank, gradient-accumulation steps) that make up `train.global_batch`."""
    per_step = train.micro_batch * world_size
    if train.global_batch % per_step:
        raise ConfigError(
            f"train.global_batch={train.global_batch} is not a multiple of "
            f"train.micro_batch ({train.micro_batch}) x world size ({world_size})")
    return train.micro_batch, train.global_batch // per_step


def deepspeed_config(train: TrainParams, *, world_size: int, cuda: bool, dtype: str) -> dict[str, Any]:
    """The dict passed to `deepspeed.initialize(config=...)`.

    ZeRO and bf16 only apply on CUDA; on CPU (tests, tiny profile) the engine runs plain fp32 data
    parallelism over gloo, which exercises the same code path at small scale. The optimizer is not
    in the config: the caller passes PyTorch's AdamW (`make_optimizer`; fused kernels on CUDA), which
    ZeRO partitions like its own and which needs no JIT build of DeepSpeed's FusedAdam on every node
    (that build also fails on torch builds listing `sm_90a`, as torch 2.11's do).
    """
    micro, accum = batch_split(train, world_size)
    cfg: dict[str, Any] = {
        "train_batch_size": train.global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": train.lr,
                       "warmup_num_steps": max(train.warmup_steps, 1), "warmup_type": "linear"},
        },
        "gradient_clipping": train.grad_clip,
        "bf16": {"enabled": cuda and dtype == "bfloat16"},
        "fp16": {"enabled": cuda and dtype == "float16"},
        "zero_optimization": {"stage": train.zero_stage if cuda else 0},
        "steps_per_print": 10**9,  # progress and logging are ours (tqdm + MLflow)
        "wall_clock_breakdown": False,
    }
    return cfg


def make_optimizer(train: TrainParams, parameters, *, cuda: bool) -> torch.optim.Optimizer:
    """AdamW with the params' settings (paper §4.1.4); PyTorch's fused implementation on CUDA."""
    return torch.optim.AdamW(parameters, lr=train.lr, betas=tuple(train.betas), eps=1e-8,
                             weight_decay=train.weight_decay, fused=cuda)
