"""The Prefect flow `gvr`: served deployment on a real Prefect server, real DVC, real MLflow.

The workspace is a temp git + DVC repository whose dvc.yaml has four small stages (one Python
script): curate, degrade (fails on its first attempt, to exercise retries), evaluate (MLflow stage
run + metrics.json) and register (a stand-in model registered through gvr.registry).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from fixtures.services import run_deployment, served_deployment
from gvr.config import load_params
from gvr.errors import ConfigError, GVRError
from gvr.workspace import Stage, apply_params, dvc_status, read_stages, select_stages

STAGES = ["curate", "degrade", "evaluate", "register"]

STAGE_SCRIPT = '''\
import json, os, sys
from pathlib import Path
from gvr.config import load_params

name = sys.argv[1]
params = load_params("params.yaml")
with open("order.log", "a") as f:
    f.write(json.dumps({"stage": name, "parent": os.environ.get("GVR_PARENT_RUN_ID"), "lr": params.train.lr}) + "\\n")
if name == "curate" and params.train.lr == 0.5:
    sys.exit("curate: lr 0.5 is refused")  # a permanent failure
if name == "degrade" and not Path(".degrade-failed-once").exists():
    Path(".degrade-failed-once").touch()
    sys.exit("degrade: transient failure")  # the first attempt only
Path("data", name).mkdir(parents=True, exist_ok=True)
Path("data", name, "out.txt").write_text(f"{name} lr={params.train.lr}\\n")
if name in ("evaluate", "register"):
    from gvr import tracking
    with tracking.stage_run(params, name) as run:
        if name == "evaluate":
            Path("data/eval").mkdir(parents=True, exist_ok=True)
            Path("data/eval/metrics.json").write_text(json.dumps({"psnr": 30.0, "bilinear_psnr": 25.0}))
        else:
            from gvr import registry
            metrics = json.loads(Path("data/eval/metrics.json").read_text())
            mv = registry.register(params, "model", metrics, run_id=run.info.run_id)
            Path("data/registry.json").write_text(json.dumps(registry.describe(mv, params)))
'''


def _git(ws: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=gvr", "-c", "user.email=gvr@localhost", *args], cwd=ws, check=True,
                   capture_output=True)


def make_workspace(ws: Path, experiment: str, model_name: str) -> Path:
    """A git + DVC repository with params.yaml, dvc.yaml, the stage script and a stand-in model."""
    ws.mkdir(parents=True)
    (ws / "params.yaml").write_text(
        "# pipeline params (test workspace)\n"
        "profile: null\n"
        "storage:\n  root: data\n"
        f"tracking:\n  experiment: {experiment}\n  registered_model: {model_name}\n"
        "orchestration:\n  retries: 1\n  retry_delay_s: 0\n"
        "train:\n  lr: 0.0001\n"
        "register:\n  metric: psnr\n"
        "profiles:\n  tiny:\n    train:\n      lr: 0.001  # small-scale learning rate\n")
    (ws / "stage.py").write_text(STAGE_SCRIPT)
    (ws / "model").mkdir()
    save_file({"w": torch.zeros(2, 2)}, str(ws / "model" / "model.safetensors"))
    (ws / "model" / "config.json").write_text("{}")
    deps = {"curate": [], "degrade": ["data/curate"], "evaluate": ["data/degrade"],
            "register": ["data/eval/metrics.json", "model"]}
    stages = {}
    for name in STAGES:
        stages[name] = {"cmd": f"python stage.py {name}", "deps": ["stage.py", *deps[name]],
                        "params": ["profile", "profiles", "train.lr"]}
        stages[name]["outs"] = [{"data/registry.json": {"cache": False}}] if name == "register" \
            else [f"data/{name}/out.txt"]
    stages["evaluate"]["metrics"] = [{"data/eval/metrics.json": {"cache": False}}]
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (ws / ".gitignore").write_text("order.log\n.degrade-failed-once\n.gvr/\nmlflow.db\n")
    _git(ws, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=ws, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    _git(ws, "add", "-A")
    _git(ws, "commit", "-q", "-m", "workspace")
    return ws


def order(ws: Path) -> list[dict]:
    """The stage log: one line per stage attempt."""
    path = ws / "order.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summary(server, run) -> str:
    (artifact,) = server.artifacts(run.flow_run_id, key="gvr-summary")
    assert artifact["type"] == "markdown"
    return artifact["data"]


# ------------------------------------------------------------------------------------ no services


def test_read_stages_keeps_dvc_yaml_order_and_commands(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "b": {"cmd": "echo b"}, "a": {"cmd": ["echo a1", "echo a2"], "wdir": "sub"}, "c": {"cmd": "echo c"}}},
        sort_keys=False))
    stages = read_stages(tmp_path)
    assert stages == [Stage("b", ("echo b",)), Stage("a", ("echo a1", "echo a2"), "sub"), Stage("c", ("echo c",))]
    assert [s.name for s in select_stages(stages, ["c", "b"])] == ["b", "c"]  # dvc.yaml order wins
    with pytest.raises(GVRError, match="nope"):
        select_stages(stages, ["nope"])


@pytest.mark.parametrize("text, error", [
    (None, "not found"),
    ("stages:\n  a:\n    foreach: [1, 2]\n    do: {cmd: echo}\n", "foreach"),
    ("stages:\n  a:\n    deps: [x]\n", "no cmd"),
])
def test_read_stages_errors(tmp_path, text, error):
    if text is not None:
        (tmp_path / "dvc.yaml").write_text(text)
    with pytest.raises(GVRError, match=error):
        read_stages(tmp_path)


PARAMS = ("# top comment\nprofile: null\ntrain:\n  lr: 0.1  # paper value\n"
          "profiles:\n  tiny:\n    train:\n      lr: 0.5\n")


def test_apply_params_writes_profile_and_overrides_into_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    assert apply_params(tmp_path).train.lr == 0.1 and path.read_text() == PARAMS  # nothing asked: untouched

    apply_params(tmp_path, overrides=["train.lr=0.2"])  # no active profile: the top-level section
    assert yaml.safe_load(path.read_text())["train"]["lr"] == 0.2

    p = apply_params(tmp_path, "tiny", ["train.lr=0.25", "train.seed=3"])
    assert (p.profile, p.train.lr, p.train.seed) == ("tiny", 0.25, 3)
    assert load_params(path) == p  # the file alone now gives the same params
    text = path.read_text()
    assert "# top comment" in text and "# paper value" in text  # comments survive
    raw = yaml.safe_load(text)
    assert raw["train"]["lr"] == 0.2 and raw["profiles"]["tiny"]["train"] == {"lr": 0.25, "seed": 3}


@pytest.mark.parametrize("profile, overrides, error", [
    (None, ["train.lr=-1"], "train.lr"),
    (None, ["train.nope=1"], "unknown key"),
    ("huge", [], "unknown profile"),
])
def test_apply_params_rejects_bad_values_and_leaves_the_file(tmp_path, profile, overrides, error):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    with pytest.raises(ConfigError, match=error):
        apply_params(tmp_path, profile, overrides)
    assert path.read_text() == PARAMS


def test_dvc_status():
    assert dvc_status("Running stage 'a':\n> echo") == "ran"
    assert dvc_status("Stage 'a' didn't change, skipping") == "skipped"
    assert dvc_status("Stage 'a' is cached - skipping run, checking out outputs") == "restored"


# ------------------------------------------------------------------------------------ served deployment


@pytest.fixture(scope="module")
def served(prefect_server, mlflow_server, tmp_path_factory):
    """A workspace and its deployment served for this module's tests."""
    name = f"gvr-flow-{uuid.uuid4().hex[:8]}"
    ws = make_workspace(tmp_path_factory.mktemp("flow") / "ws", experiment=name, model_name=name)
    env = {**mlflow_server.env(), "DVC_NO_ANALYTICS": "1"}
    with served_deployment(prefect_server, ws, env=env):
        yield ws


def test_deployment_runs_every_stage_in_order_then_dvc_skips(served, prefect_server, mlflow_server):
    ws = served
    params = load_params(ws / "params.yaml")
    client = mlflow_server.client()

    # 1. first run: every stage, degrade retried once
    run = run_deployment(prefect_server, parameters={"profile": "tiny"})
    assert run.returncode == 0 and run.state == "COMPLETED", run.output
    log = order(ws)
    assert [e["stage"] for e in log] == ["curate", "degrade", "degrade", "evaluate", "register"]
    assert {e["lr"] for e in log} == {0.001}  # the profile reached every stage through params.yaml
    parent_id = log[0]["parent"]
    assert parent_id and all(e["parent"] == parent_id for e in log)
    tasks = prefect_server.task_runs(run.flow_run_id)
    assert [t["name"] for t in tasks] == STAGES
    assert [t["run_count"] for t in tasks] == [1, 2, 1, 1]
    text = summary(prefect_server, run)
    assert "| degrade | ran | 2 |" in text and "| psnr | 30 |" in text and "- champion: True" in text

    # 2. MLflow: a parent run with the stage runs nested under it, and a champion
    parent = client.get_run(parent_id)
    assert parent.data.tags["prefect.flow_run_id"] == run.flow_run_id and parent.info.status == "FINISHED"
    assert parent.data.metrics["psnr"] == 30.0
    exp = client.get_experiment_by_name(params.tracking.experiment)
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.info.run_name for r in children) == ["evaluate", "register"]
    assert client.get_model_version_by_alias(params.tracking.registered_model, "champion").version == "1"

    # 3. second run: nothing changed, DVC skips every stage
    again = run_deployment(prefect_server)
    assert again.returncode == 0 and again.state == "COMPLETED", again.output
    assert order(ws) == log
    assert all(f"| {s} | skipped |" in summary(prefect_server, again) for s in STAGES)


def test_without_dvc_the_commands_run_directly(served, prefect_server, mlflow_server):
    ws = served
    before = len(order(ws))
    run = run_deployment(prefect_server, parameters={"use_dvc": False})
    assert run.returncode == 0 and run.state == "COMPLETED", run.output
    assert [e["stage"] for e in order(ws)[before:]][-4:] == STAGES
    text = summary(prefect_server, run)
    assert all(f"| {s} | ran |" in text for s in STAGES)
    record = json.loads((ws / "data" / "registry.json").read_text())
    assert record["promoted"] is False  # same metrics as the champion: a tie keeps it
    name = load_params(ws / "params.yaml").tracking.registered_model
    assert mlflow_server.client().get_model_version_by_alias(name, "champion").version != str(record["version"])


def test_a_failing_stage_fails_the_run_after_its_retries(served, prefect_server):
    ws = served
    before = len(order(ws))
    try:
        run = run_deployment(prefect_server, parameters={"overrides": ["train.lr=0.5"]})
        assert run.returncode != 0 and run.state == "FAILED"
        assert [e["stage"] for e in order(ws)[before:]] == ["curate", "curate"]  # retries: 1
        assert "| curate | failed | 2 |" in summary(prefect_server, run)
    finally:
        _git(ws, "checkout", "params.yaml")
