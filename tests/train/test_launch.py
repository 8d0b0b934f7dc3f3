"""How `gvr train` maps params onto DeepSpeed: batch split, engine config, launcher command line."""

from pathlib import Path

import pytest

from gvr.config import load_params
from gvr.errors import ConfigError
from gvr.train.deepspeed_config import batch_split, deepspeed_config
from gvr.train.launch import launcher_command, needs_launcher

ROOT = Path(__file__).resolve().parents[2]


def test_paper_batch_on_16_gpus():
    p = load_params(ROOT / "params.yaml")
    assert batch_split(p.train, 16) == (1, 2)
    cfg = deepspeed_config(p.train, world_size=16, cuda=True, dtype="bfloat16")
    assert cfg["train_batch_size"] == 32 and cfg["gradient_accumulation_steps"] == 2
    assert "optimizer" not in cfg  # PyTorch's AdamW is passed in (make_optimizer)
    assert cfg["bf16"]["enabled"] and cfg["zero_optimization"]["stage"] == 2


def test_optimizer_is_adamw_with_the_paper_settings():
    import torch

    from gvr.train.deepspeed_config import make_optimizer

    p = load_params(ROOT / "params.yaml")
    opt = make_optimizer(p.train, [torch.nn.Parameter(torch.zeros(2))], cuda=False)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 5e-5 and opt.defaults["betas"] == (0.9, 0.999)


def test_cpu_config_is_plain_fp32():
    p = load_params(ROOT / "params.yaml", profile="tiny")
    cfg = deepspeed_config(p.train, world_size=1, cuda=False, dtype="bfloat16")
    assert not cfg["bf16"]["enabled"] and cfg["zero_optimization"]["stage"] == 0


def test_indivisible_batch_is_a_config_error():
    p = load_params(ROOT / "params.yaml", overrides=["train.global_batch=30"])
    with pytest.raises(ConfigError, match="not a multiple"):
        batch_split(p.train, 16)


def test_launcher_command_multi_node(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-0 slots=8\nnode-1 slots=8\n")
    p = load_params(ROOT / "params.yaml", overrides=[f"train.launcher.hostfile={hostfile}"])
    assert needs_launcher(p)
    cmd = launcher_command(p, "stage1", Path("resolved.yaml"), resume=True)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert cmd[cmd.index("--hostfile") + 1] == str(hostfile) and cmd[cmd.index("--num_gpus") + 1] == "8"
    assert cmd[-6:] == ["gvr.cli", "train", "--stage", "stage1", "--params", "resolved.yaml"]


def test_launcher_no_ssh_needs_master_addr(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    p = load_params(ROOT / "params.yaml", overrides=["train.launcher.no_ssh=true"])
    with pytest.raises(ConfigError, match="master_addr"):
        launcher_command(p, "stage1", Path("x.yaml"), resume=True)
    p = load_params(ROOT / "params.yaml", overrides=["train.launcher.no_ssh=true", "train.launcher.master_addr=10.0.0.1",
                                                     "train.launcher.node_rank=1"])
    cmd = launcher_command(p, "stage1", Path("x.yaml"), resume=False)
    assert "--no_ssh" in cmd and cmd[cmd.index("--node_rank") + 1] == "1" and cmd[-1] == "--no-resume"


def test_deepspeed_env_forwards_run_context(tmp_path, monkeypatch):
    from gvr.train.launch import write_deepspeed_env

    monkeypatch.setenv("GVR_PARENT_RUN_ID", "abc")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3:9000")
    monkeypatch.setenv("UNRELATED", "1")
    path = write_deepspeed_env(tmp_path)
    lines = path.read_text().splitlines()
    assert "GVR_PARENT_RUN_ID=abc" in lines and "AWS_ENDPOINT_URL=http://s3:9000" in lines
    assert not any(line.startswith("UNRELATED") for line in lines) and (path.stat().st_mode & 0o777) == 0o600


def test_single_cpu_runs_in_process(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not needs_launcher(load_params(ROOT / "params.yaml", profile="tiny"))
