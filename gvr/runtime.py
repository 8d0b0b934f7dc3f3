"""Process-level runtime choices: device, dtype, seeding, single-process distributed defaults."""

from __future__ import annotations

import os
import random
import socket

import numpy as np
import torch

from gvr.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(spec: str = "auto") -> torch.device:
    """`auto` is the local rank's GPU when CUDA is available, else the CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"compute.device: {spec!r} asked for but CUDA is not available")
        if device.index is None:  # plain "cuda": this rank's GPU
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype; CPUs run float32 whatever the params say (bf16 matmuls are slow there)."""
    if device.type == "cpu":
        return torch.float32
    return _DTYPES[name]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join (or create) the process group; a lone process becomes a world of one. Returns (rank, world)."""
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                                   verbose=False)
    return dist.get_rank(), dist.get_world_size()
