"""DeepSpeed stage training on CPU: export, resume, stale checkpoints, bounded checkpoint history."""

import json
from pathlib import Path

import pytest
import torch

from gvr.config import load_params
from gvr.data.shards import save_tensors, write_index, write_null_text
from gvr.errors import InputError
from gvr.train.trainer import run_stage

ROOT = Path(__file__).resolve().parents[2]


def make_pairs(root: Path, name: str, n: int = 4, frames: int = 9, seed: int = 0) -> None:
    """A pair set of random tiny latents shaped like the tiny profile's (16 ch, 64x96 HR, 32x48 LR)."""
    g = torch.Generator().manual_seed(seed)
    t = 1 + (frames - 1) // 4
    z0 = torch.randn(n, 16, t, 8, 12, generator=g)
    tensors = {"z0": z0, "c0": torch.nn.functional.avg_pool3d(z0, (1, 2, 2)) + 0.1 * torch.randn(n, 16, t, 4, 6, generator=g),
               "text": torch.zeros(n, 1, 16), "text_mask": torch.ones(n, 1, dtype=torch.bool)}
    set_dir = str(root / "pairs" / name)
    save_tensors(f"{set_dir}/shards/a.safetensors", tensors, None)
    write_null_text(set_dir, torch.zeros(1, 16), torch.ones(1, dtype=torch.bool), None)
    write_index(set_dir, {"set": name, "frames": frames, "z0_shape": list(z0.shape[1:]),
                          "c0_shape": list(tensors["c0"].shape[1:]), "text_shape": [1, 16],
                          "shards": [{"file": "shards/a.safetensors", "count": n, "source": "x.mp4"}],
                          "failed": []}, None)


@pytest.fixture
def params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    make_pairs(tmp_path / "data", "stage1")

    def load(*overrides):
        return load_params(ROOT / "params.yaml", profile="tiny", overrides=[
            "storage.root=data", "train.stages.stage1.iterations=6", "train.checkpoint_every=2",
            "train.keep_checkpoints=2", "train.log_every=2", *overrides])
    return load


def steps_of(ckpt: Path) -> list[int]:
    return sorted(int(p.name[4:]) for p in ckpt.glob("step*") if p.is_dir())


def test_train_export_resume_and_restart(params, tmp_path):
    ckpt, model = tmp_path / "data/checkpoints/stage1", tmp_path / "data/models/stage1"

    # 1. a fresh run trains, keeps the newest checkpoints only, exports weights + full config
    run_stage(params(), "stage1")
    assert steps_of(ckpt) == [4, 6]
    config = json.loads((model / "config.json").read_text())
    assert config["stage"] == "stage1" and config["params"]["train"]["stages"]["stage1"]["iterations"] == 6
    first = (model / "model.safetensors").read_bytes()

    # 2. the same inputs again: resumed at the end, nothing trained, the same weights
    run_stage(params(), "stage1")
    assert steps_of(ckpt) == [4, 6] and (model / "model.safetensors").read_bytes() == first

    # 3. logging cadence does not change the result: still resumed
    run_stage(params("train.log_every=3"), "stage1")
    assert (model / "model.safetensors").read_bytes() == first

    # 4. more iterations continue from step 6
    run_stage(params("train.stages.stage1.iterations=8"), "stage1")
    assert steps_of(ckpt) == [6, 8]

    # 5. another learning rate: the old checkpoints are discarded and training starts over
    run_stage(params("train.lr=0.01"), "stage1")
    assert steps_of(ckpt) == [4, 6]
    assert (model / "model.safetensors").read_bytes() != first


def test_later_stage_restarts_when_its_starting_weights_change(params, tmp_path):
    make_pairs(tmp_path / "data", "stage2")
    p = params("train.stages.stage2.iterations=2", "train.stages.stage2.sampler=uniform",
               "train.stages.stage2.pairs=[stage2]")
    run_stage(p, "stage1")
    run_stage(p, "stage2")
    stage2 = (tmp_path / "data/models/stage2/model.safetensors").read_bytes()
    run_stage(p, "stage2")  # unchanged upstream: a no-op
    assert (tmp_path / "data/models/stage2/model.safetensors").read_bytes() == stage2
    run_stage(params("train.stages.stage2.iterations=2", "train.stages.stage2.sampler=uniform",
                     "train.stages.stage2.pairs=[stage2]", "train.seed=1"), "stage1")  # upstream changes
    run_stage(p, "stage2")
    assert (tmp_path / "data/models/stage2/model.safetensors").read_bytes() != stage2


def test_nan_latents_stop_training_with_one_clear_error(params, tmp_path):
    set_dir = tmp_path / "data/pairs/stage1/shards/a.safetensors"
    from safetensors.torch import load_file, save_file

    t = load_file(set_dir)
    t["z0"][0, 0, 0, 0, 0] = float("nan")
    save_file(t, set_dir)
    with pytest.raises(InputError, match="NaN"):
        run_stage(params("train.global_batch=4", "train.micro_batch=4"), "stage1")


def test_two_ranks_train_resume_and_agree(tmp_path):
    """torchrun with 2 CPU ranks (gloo): rank 0 decides on resume for both, exports once."""
    import os
    import subprocess
    import sys

    from gvr.runtime import free_port

    make_pairs(tmp_path / "data", "stage1", n=8)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "gvr.cli", "train",
           "--stage", "stage1", "--params", str(ROOT / "params.yaml"), "--profile", "tiny", "--set", "storage.root=data",
           "--set", "train.stages.stage1.iterations=4", "--set", "train.checkpoint_every=2",
           "--set", "train.global_batch=4"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db", "OMP_NUM_THREADS": "1"}

    def run(*extra):
        res = subprocess.run(cmd + list(extra), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout + res.stderr

    run()
    model = tmp_path / "data/models/stage1/model.safetensors"
    first = model.read_bytes()
    assert "resumed at step 4" in run() and model.read_bytes() == first  # both ranks resumed, nothing trained
    assert "discarding checkpoints" in run("--set", "train.lr=0.01") and model.read_bytes() != first
