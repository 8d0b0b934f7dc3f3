"""The tiny pipeline end to end, as users run it, against real local services.

1. `prefect deployment run gvr/full-pipeline` on a served deployment (real Prefect server) runs every
   DVC stage; a real MLflow server holds the parent run with one nested run per stage and a
   `champion` version; `gvr upscale --model models:/NAME@champion` writes playable mp4s of the
   expected size; a second `dvc repro` does nothing; `dvc push` / `dvc pull` round-trip the
   pipeline's outputs through an S3 remote (moto).
2. The same DAG with every input and output on S3 (moto through s3fs), run by the flow without DVC.
"""

import json
import os
import subprocess
import sys
import uuid

import pytest
import torch
from safetensors.torch import save_file

from fixtures.services import run_deployment, served_deployment
from gvr.io.video import probe, read_frames
from gvr.upscale import hr_size_for
from gvr.workspace import add_videos, create_workspace, tool_env

STAGES = ["curate", "degrade", "train-stage1", "derive-sampler", "train-stage2", "train-stage3", "evaluate",
          "register"]


def gvr(*args, cwd, env, check=True):
    res = subprocess.run([sys.executable, "-m", "gvr.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode:
        pytest.fail(f"gvr {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def dvc(*args, cwd, env):
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"dvc {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def test_tiny_pipeline_via_prefect_deployment(tmp_path, prefect_server, mlflow_server, s3_server):
    name = f"gvr-e2e-{uuid.uuid4().hex[:6]}"
    ws = create_workspace(tmp_path / "ws", profile="tiny",
                          overrides=[f"tracking.experiment={name}", f"tracking.registered_model={name}"])
    add_videos(ws, good=8, bad=True)
    env = tool_env({**os.environ, **mlflow_server.env()})

    # 1. the deployment runs every stage in order
    with served_deployment(prefect_server, ws, env=mlflow_server.env()):
        run = run_deployment(prefect_server, timeout_s=1500)
    assert run.state == "COMPLETED", run.output[-4000:]
    tasks = sorted(prefect_server.task_runs(run.flow_run_id), key=lambda t: t["start_time"] or "")
    assert [t["name"] for t in tasks] == STAGES
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    assert prefect_server.artifacts(run.flow_run_id, key="gvr-summary")

    # 2. curation rejected what it should, with reasons
    manifest = (ws / "data" / "manifest.csv").read_text()
    for reason in ("too_dark", "too_bright", "blurry", "too_short"):
        assert reason in manifest

    # 3. MLflow: one pipeline run, a nested run per stage, a champion version
    client = mlflow_server.client()
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("gvr.kind") == "pipeline"]
    assert len(parents) == 1
    children = {r.data.tags["gvr.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert children == set(STAGES)
    champion = client.get_model_version_by_alias(name, "champion")
    metrics = json.loads((ws / "data" / "eval" / "metrics.json").read_text())
    assert float(champion.tags["psnr"]) == pytest.approx(metrics["psnr"])
    assert 0 < metrics["codec_psnr"] < 100 and 0 <= metrics["ssim"] <= 1

    # 4. batch upscaling from the registry: an LR latent and an LR video in, mp4s of the right size out
    inputs, out = tmp_path / "lr", tmp_path / "hr"
    inputs.mkdir()
    save_file({"latent": torch.randn(16, 3, 4, 6)}, inputs / "from_t2v.safetensors")
    lr_video = next((ws / "data" / "raw").glob("*.mp4"))
    (inputs / "clip.mp4").write_bytes(lr_video.read_bytes())
    (inputs / "clip.txt").write_text("a textured scene, panning")
    gvr("upscale", "--model", f"models:/{name}@champion", "--input", str(inputs), "--output", str(out),
        "--params", str(ws / "params.yaml"), cwd=ws, env=env)
    lat = probe(out / "from_t2v.mp4")
    assert (lat.frames, lat.height, lat.width) == (9, *hr_size_for((32, 48), 64))
    vid, src = probe(out / "clip.mp4"), probe(lr_video)
    assert (vid.frames, vid.height, vid.width) == (src.frames, *hr_size_for((src.height, src.width), 64))
    assert read_frames(out / "clip.mp4", [0, vid.frames - 1]).std() > 1  # decodes, and is not blank

    # 5. DVC: nothing left to do; outputs round-trip through an S3 remote
    assert "Running stage" not in dvc("repro", cwd=ws, env=env)
    bucket = s3_server.make_bucket()
    s3env = {**env, **s3_server.env()}
    dvc("remote", "add", "-d", "store", f"{bucket}/dvc", cwd=ws, env=s3env)
    dvc("remote", "modify", "store", "endpointurl", s3_server.endpoint_url, cwd=ws, env=s3env)
    dvc("push", cwd=ws, env=s3env)
    weights = (ws / "data" / "models" / "stage3" / "model.safetensors").read_bytes()
    dvc("gc", "--workspace", "--force", cwd=ws, env=s3env)  # keep the remote, drop nothing in use
    for path in ("data/models", "data/pairs", "data/manifest.csv"):
        subprocess.run(["rm", "-rf", str(ws / path)], check=True)
    subprocess.run(["rm", "-rf", str(ws / ".dvc" / "cache")], check=True)
    dvc("pull", cwd=ws, env=s3env)
    assert (ws / "data" / "models" / "stage3" / "model.safetensors").read_bytes() == weights
    assert "Running stage" not in dvc("repro", cwd=ws, env=s3env)


def test_tiny_pipeline_on_s3(tmp_path, s3_server):
    bucket = s3_server.make_bucket()
    env = tool_env({**os.environ, **s3_server.env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    ws = create_workspace(tmp_path / "ws", profile="tiny",
                          overrides=[f"storage.root={bucket}/gvr", f"curate.input={bucket}/raw",
                                     "compute.use_ray=false"])
    os.environ.update(s3_server.env())  # this process writes the raw videos to the bucket
    try:
        add_videos(ws, good=6, raw=f"{bucket}/raw")
    finally:
        for key in s3_server.env():
            os.environ.pop(key, None)
    res = subprocess.run([sys.executable, "-m", "flows.pipeline", "--workspace", str(ws), "--no-dvc"], cwd=ws,
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert not (ws / "data").exists() or not any((ws / "data").rglob("*.safetensors"))  # nothing local

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server.endpoint_url, key="testing", secret="testing")
    root = f"{bucket[5:]}/gvr"
    for key in ("manifest.csv", "pairs/stage1/index.json", "pairs/eval/index.json", "models/stage3/model.safetensors",
                "models/stage3/config.json", "sampler/detail_aware.json", "eval/metrics.json", "registry.json"):
        assert fs.exists(f"{root}/{key}"), key
    metrics = json.loads(fs.cat(f"{root}/eval/metrics.json"))
    assert metrics["clips"] >= 1 and "psnr" in metrics
