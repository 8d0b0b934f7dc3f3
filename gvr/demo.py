"""`gvr demo`: the whole DAG at tiny scale in a fresh workspace, in minutes on a CPU.

1. create the workspace (tiny profile, SQLite MLflow store in the workspace, DVC initialised);
2. fill data/raw with seeded synthetic clips (good, dark, bright, blurry, short) and, when the
   Debian sample videos can be fetched, a few real ones;
3. run every stage through the Prefect flow (default; a local ephemeral Prefect API) or `dvc repro`;
4. print the metrics, the registered model, and how to look at the runs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from gvr.config import load_params
from gvr.errors import GVRError
from gvr.layout import Layout
from gvr.workspace import add_videos, create_workspace, tool_env

log = logging.getLogger(__name__)


def run_demo(workspace: str = "runs/demo", *, runner: str = "prefect", params_overrides: Iterable[str] = (),
             force: bool = False, samples: bool = True) -> dict:
    """Create and run the tiny pipeline; returns the evaluation metrics."""
    ws = create_workspace(workspace, profile="tiny", overrides=params_overrides, force=force)
    videos = add_videos(ws, good=10, bad=True)
    if samples:
        try:
            videos += add_videos(ws, samples=True)
        except GVRError as e:  # no package mirror reachable: synthetic clips are enough
            log.warning("real sample videos unavailable (%s); continuing with synthetic clips", e)
    print(f"workspace {ws}: {len(videos)} raw videos")
    env = tool_env()
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ws.resolve()}/mlflow.db")
    if runner == "dvc":
        cmd = ["dvc", "repro"]
    else:
        cmd = [sys.executable, "-m", "flows.pipeline", "--workspace", str(ws.resolve())]
    print("running:", " ".join(cmd))
    if subprocess.call(cmd, cwd=ws, env=env):
        raise GVRError(f"the pipeline failed (`{' '.join(cmd)}` in {ws}); see the log above")
    layout = Layout.of(load_params(ws / "params.yaml"))
    metrics = json.loads((ws / layout.metrics).read_text())
    registry = json.loads((ws / layout.registry).read_text())
    print(json.dumps({"metrics": metrics, "registry": registry}, indent=2))
    bindir = Path(sys.executable).parent  # the commands of this installation, venv activated or not
    print(f"MLflow UI: {bindir / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}")
    print(f"upscale:   cd {ws} && {bindir / 'gvr'} upscale --model models:/gvr@champion --input <dir> --output <dir>")
    return metrics

