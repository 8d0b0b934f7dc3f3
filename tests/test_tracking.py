"""gvr.tracking against a real MLflow tracking server: nesting, params, tags, ranks, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from gvr import tracking
from gvr.config import Params, load_params
from gvr.errors import GVRError
from gvr.tracking import StageResult


def _params(**tracking_kw) -> Params:
    """Default params logging to a fresh experiment (tests share one server)."""
    p = Params()
    p.tracking.experiment = f"test-{uuid.uuid4().hex[:8]}"
    for k, v in tracking_kw.items():
        setattr(p.tracking, k, v)
    return p


def _runs(server, params: Params):
    exp = server.client().get_experiment_by_name(params.tracking.experiment)
    if exp is None:
        return []
    return server.client().search_runs([exp.experiment_id])


@pytest.fixture(autouse=True)
def _no_parent(monkeypatch):
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)


# ------------------------------------------------------------------------------------ no server


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    p = Params()
    assert tracking.tracking_uri(p, root=tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri(p) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.tracking_uri(p) == "http://env:5000"
    p.tracking.uri = "http://params:5000"
    assert tracking.tracking_uri(p) == "http://params:5000"


def test_flatten_params_uses_section_dot_key_and_drops_profiles(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("profile: tiny\ntrain: {lr: 0.1}\nprofiles:\n  tiny:\n    train: {lr: 0.5}\n")
    flat = tracking.flatten_params(load_params(path))
    assert flat["train.lr"] == "0.5"  # the resolved value, profile applied
    assert flat["profile"] == "tiny"
    assert flat["train.stages.stage1.iterations"] == str(Params().train.stages["stage1"].iterations)
    assert json.loads(flat["curate.extensions"]) == Params().curate.extensions
    assert flat["tracking.uri"] == "null"
    assert not any(k.startswith("profiles") for k in flat)


def test_rank_from_env(monkeypatch):
    assert tracking.process_rank() == 0
    monkeypatch.setenv("RANK", "3")
    assert tracking.process_rank() == 3


def test_unreachable_server_is_one_clear_error():
    from fixtures.s3 import free_port

    p = _params(uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(GVRError, match="unreachable"):
        with tracking.stage_run(p, "curate"):
            pass


def test_summary_lists_stages_metrics_and_registration():
    md = tracking.pipeline_summary(
        Params(), [StageResult("curate", "ran", 1.25), StageResult("degrade", "skipped", 0.5, attempts=2)],
        {"psnr": 31.25, "bilinear_psnr": 27.5}, {"version": 3, "champion": True})
    assert "| curate | ran | 1 | 1.2 |" in md and "| degrade | skipped | 2 | 0.5 |" in md
    assert "| psnr | 31.25 |" in md and "| bilinear_psnr | 27.5 |" in md
    assert "- version: 3" in md and "- champion: True" in md
    assert "No metrics.json yet" in tracking.pipeline_summary(Params(), [], None)


def test_read_metrics_resolves_relative_root(tmp_path):
    p = Params()
    assert tracking.read_metrics(p, tmp_path) is None
    (tmp_path / "data" / "eval").mkdir(parents=True)
    (tmp_path / "data" / "eval" / "metrics.json").write_text('{"psnr": 30.5}')
    assert tracking.read_metrics(p, tmp_path) == {"psnr": 30.5}


def test_log_helpers_without_a_run_create_nothing(mlflow_env):
    import mlflow

    p = _params()
    tracking.connect(p)
    tracking.log_metrics({"loss": 1.0})
    tracking.log_params({"a": 1})
    tracking.log_text("x", "x.txt")
    assert mlflow.active_run() is None


# ------------------------------------------------------------------------------------ server


def test_stage_run_top_level_logs_params_tags_and_metrics(mlflow_env, tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=tmp_path, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    p = _params()
    p.profile = "tiny"
    with tracking.stage_run(p, "curate", root=tmp_path) as run:
        tracking.log_metrics({"accepted": 7}, step=1)
        tracking.log_params({"curate.videos": 9})
        tracking.log_dict({"a": 1}, "report.json")
    (r,) = _runs(mlflow_env, p)
    assert r.info.run_id == run.info.run_id and r.info.run_name == "curate" and r.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in r.data.tags
    assert r.data.tags["gvr.stage"] == "curate" and r.data.tags["gvr.profile"] == "tiny"
    assert r.data.tags["mlflow.source.git.commit"] == commit
    assert r.data.params["train.lr"] == str(p.train.lr) and r.data.params["curate.videos"] == "9"
    assert r.data.metrics["accepted"] == 7
    assert [a.path for a in mlflow_env.client().list_artifacts(r.info.run_id)] == ["report.json"]


def test_stage_in_another_process_nests_under_pipeline_run(mlflow_env, tmp_path):
    p = _params()
    script = ("from gvr.config import Params; from gvr import tracking; import sys\n"
              "p = Params(); p.tracking.experiment = sys.argv[1]\n"
              "with tracking.stage_run(p, 'degrade') as run:\n"
              "    tracking.log_metrics({'pairs': 3})\n")
    with tracking.pipeline_run(p, "nightly", root=tmp_path) as parent:
        env = {**tracking.child_env(p, parent, root=tmp_path)}
        assert env == {"MLFLOW_TRACKING_URI": mlflow_env.uri, tracking.PARENT_RUN_ENV: parent.info.run_id}
        subprocess.run([sys.executable, "-c", script, p.tracking.experiment], env={**os.environ, **env}, check=True)
        with tracking.stage_run(p, "evaluate"):  # in-process: nests under the active run
            pass
    runs = {r.info.run_name: r for r in _runs(mlflow_env, p)}
    assert set(runs) == {"nightly", "degrade", "evaluate"}
    assert runs["nightly"].data.tags["gvr.kind"] == "pipeline"
    for child in ("degrade", "evaluate"):
        assert runs[child].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert runs["degrade"].data.metrics["pairs"] == 3


def test_stale_parent_id_falls_back_to_a_top_level_run(mlflow_env, monkeypatch):
    p = _params()
    with tracking.pipeline_run(p, "old") as old:
        pass
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, old.info.run_id)
    with tracking.stage_run(p, "curate") as run:
        pass
    assert "mlflow.parentRunId" not in mlflow_env.client().get_run(run.info.run_id).data.tags


def test_failure_inside_stage_marks_run_failed(mlflow_env):
    p = _params()
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run(p, "train-stage1"):
            raise RuntimeError("boom")
    (r,) = _runs(mlflow_env, p)
    assert r.info.status == "FAILED"


def test_other_ranks_log_nothing(mlflow_env, monkeypatch):
    p = _params()
    monkeypatch.setenv("RANK", "1")
    with tracking.stage_run(p, "train-stage1") as run:
        assert run is None
        tracking.log_metrics({"loss": 0.5}, step=1)
        tracking.log_params({"x": 1})
        tracking.set_tags({"y": 2})
    with tracking.pipeline_run(p) as parent:
        assert parent is None
    assert _runs(mlflow_env, p) == []
