"""`gvr train`: run one stage in this process, or re-launch it through the deepspeed launcher.

One GPU or CPU: the stage runs here (a world of one, still through DeepSpeed's engine).
Several GPUs or nodes (`train.launcher`): the resolved params are written next to the stage's
checkpoints and `deepspeed [--hostfile H | --no_ssh --node_rank R] --module gvr.cli train ...`
starts one process per GPU; each of them lands in `run_stage` below. Multi-node runs need
`storage.root` and the workspace on storage every node sees (NFS, or s3:// for the root).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from gvr.config import Params, resolved_dict
from gvr.errors import ConfigError, GVRError

log = logging.getLogger(__name__)


def inside_launcher() -> bool:
    """True when a distributed launcher (deepspeed, torchrun) started this process."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def needs_launcher(params: Params) -> bool:
    launcher = params.train.launcher
    return not inside_launcher() and (launcher.num_nodes > 1 or launcher.gpus_per_node > 1)


def write_resolved_params(params: Params, stage: str) -> Path:
    """Params with profile and overrides already applied, for the launched ranks to load as-is."""
    data = resolved_dict(params)
    # One file per node: under Kubernetes every node runs this on the same shared workspace.
    path = Path(".gvr") / f"params-{stage}-node{params.train.launcher.node_rank}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    return path


def launcher_command(params: Params, stage: str, params_file: Path, resume: bool) -> list[str]:
    """The deepspeed launcher command line for this stage."""
    launcher = params.train.launcher
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("train.launcher asks for several GPUs/nodes but DeepSpeed is not installed "
                          "(pip install 'gvr[train]')")
    # The `deepspeed` console script is this module; calling it through this interpreter avoids
    # depending on PATH (a venv that is not activated).
    # --no_local_rank: ranks read LOCAL_RANK from the environment instead of an extra CLI argument.
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank", "--master_port",
           str(launcher.master_port)]
    if launcher.num_nodes > 1:  # DeepSpeed sizes the world from the hostfile in both modes
        if not launcher.hostfile or not Path(launcher.hostfile).is_file():
            raise ConfigError(f"train.launcher.hostfile: {launcher.hostfile!r} not found (needed for "
                              f"{launcher.num_nodes} nodes)")
        cmd += ["--hostfile", launcher.hostfile]
    cmd += ["--num_nodes", str(launcher.num_nodes)]
    if launcher.no_ssh:
        if not launcher.master_addr:
            raise ConfigError("train.launcher.master_addr is required with train.launcher.no_ssh")
        cmd += ["--no_ssh", "--node_rank", str(launcher.node_rank)]
    if launcher.master_addr:
        cmd += ["--master_addr", launcher.master_addr]
    if launcher.gpus_per_node:
        cmd += ["--num_gpus", str(launcher.gpus_per_node)]
    cmd += ["--module", "gvr.cli", "train", "--stage", stage, "--params", str(params_file)]
    if not resume:
        cmd.append("--no-resume")
    return cmd


# Variables the ranks on other nodes need; pdsh forwards only MLFLOW*/PYTHON*/... by itself, the
# rest travels in DeepSpeed's `.deepspeed_env` file (KEY=VALUE lines read from the launch directory).
FORWARD_PREFIXES = ("GVR_", "MLFLOW_", "AWS_", "RAY_ADDRESS", "HF_", "TORCH_HOME", "NCCL_")


def write_deepspeed_env(directory: Path = Path(".")) -> Path:
    """Write `.deepspeed_env` with the variables that must reach every node (mode 0600: may hold keys)."""
    lines = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(FORWARD_PREFIXES) and "\n" not in v]
    path = directory / ".deepspeed_env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))
    return path


def train(params: Params, stage: str, *, resume: bool = True) -> None:
    """Train `stage` here or through the launcher, per `train.launcher`."""
    if stage not in params.train.stages:
        raise ConfigError(f"train.stages: no stage named {stage!r} (have: {', '.join(params.train.stages)})")
    if needs_launcher(params):
        cmd = launcher_command(params, stage, write_resolved_params(params, stage), resume)
        if params.train.launcher.num_nodes > 1 and not params.train.launcher.no_ssh:
            write_deepspeed_env()
        log.info("launching: %s", " ".join(cmd))
        rc = subprocess.call(cmd)
        if rc:
            raise GVRError(f"train {stage}: the deepspeed launcher exited with status {rc} (see the ranks' log above)")
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("training needs DeepSpeed: pip install 'gvr[train]'")
    from gvr.train.trainer import run_stage

    run_stage(params, stage, resume=resume)
