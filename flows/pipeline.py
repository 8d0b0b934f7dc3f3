"""Prefect flow `gvr`: a workspace's DVC stages in order, each one a retried task. Wiring only.

Three ways to run it:
  - served from one process, no work pool: `python -m flows.serve --workspace DIR`, then
    `prefect deployment run gvr/full-pipeline [--param profile=tiny] [--watch]`;
  - on a work pool: `prefect deploy --name full-pipeline` (prefect.yaml), a worker on the pool,
    then the same `prefect deployment run`;
  - in-process: `python -m flows.pipeline --workspace DIR` or `gvr_pipeline(workspace="DIR")` (an
    ephemeral Prefect API unless PREFECT_API_URL is set).

The stages, their order and their commands come from the workspace's dvc.yaml. With `use_dvc`
each stage is `dvc repro --single-item STAGE`, one at a time, so DVC decides what to skip;
without it (object-store roots DVC cannot track) the stage's commands run as they are. The
parent MLflow run's id reaches every stage process through `$GVR_PARENT_RUN_ID`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run

from gvr import tracking
from gvr.errors import GVRError
from gvr.tracking import StageResult
from gvr.workspace import (
    Stage,
    apply_params,
    dvc_status,
    read_stages,
    run_command,
    select_stages,
    tool_env,
    workspace_lock,
)

SUMMARY_KEY = "gvr-summary"  # the Prefect markdown artifact's key (one version per flow run)


# NO_CACHE: Prefect must never skip a stage on its own; whether a stage reruns is DVC's decision.
@task(cache_policy=NO_CACHE)
def run_stage(stage: Stage, workspace: str, env: dict[str, str], use_dvc: bool) -> StageResult:
    """Run one stage, through `dvc repro --single-item` or its commands directly; raise on failure."""
    logger = get_run_logger()
    full_env = tool_env({**os.environ, **env})  # `gvr` and `dvc` from this installation
    if use_dvc:
        res = run_command(["dvc", "repro", "--single-item", stage.name], workspace, full_env, logger.info)
        status = dvc_status(res.output)
    else:
        for cmd in stage.cmds:
            logger.info("> %s", cmd)
            res = run_command(cmd, Path(workspace) / stage.wdir, full_env, logger.info)
            if res.returncode:
                break
        status = "ran"
    if res.returncode:
        tail = "\n".join(res.tail[-15:])
        raise GVRError(f"stage {stage.name} failed with exit status {res.returncode}; last lines:\n{tail}")
    return StageResult(stage.name, status, res.seconds, attempts=task_run.run_count)


def _publish(params, results: list[StageResult], root: Path, run: Any) -> dict[str, Any] | None:
    """Markdown summary as a Prefect artifact and on the MLflow parent run; returns the metrics."""
    metrics = registration = None
    with contextlib.suppress(GVRError):  # a summary must not hide the failure that ended the run
        metrics = tracking.read_metrics(params, root)
        registration = tracking.read_registration(params, root)
    summary = tracking.pipeline_summary(params, results, metrics, registration, run)
    if metrics:
        tracking.log_metrics(metrics)
    tracking.log_text(summary, "summary.md")
    create_markdown_artifact(summary, key=SUMMARY_KEY,
                             description=f"{params.orchestration.flow_name} pipeline: stages, metrics, registry")
    return metrics


@flow(name="gvr", description="SimpleGVR pipeline: curate, degrade, train x3, evaluate, register (DVC stages)")
def gvr_pipeline(workspace: str = ".", profile: str | None = None, overrides: list[str] | None = None,
                 use_dvc: bool | None = None, stages: list[str] | None = None) -> dict[str, Any]:
    """Run the workspace's pipeline.

    Args:
        workspace: folder with params.yaml and dvc.yaml (a git + DVC repository when use_dvc).
        profile: params profile to select (written into params.yaml as its `profile:` key).
        overrides: `section.key=value` edits, written into params.yaml (see `apply_params`).
        use_dvc: run stages through `dvc repro` (default: `orchestration.use_dvc`).
        stages: only these dvc.yaml stages (default: all), still in dvc.yaml order.
    """
    logger = get_run_logger()
    ws = Path(workspace).resolve()
    with workspace_lock(ws):
        # 1. params and the stage plan
        params = apply_params(ws, profile, overrides or ())
        plan = select_stages(read_stages(ws), stages)
        use_dvc = params.orchestration.use_dvc if use_dvc is None else use_dvc
        if use_dvc and not (ws / ".dvc").is_dir():
            raise GVRError(f"{ws} is not a DVC repository (run `dvc init` there), or run with use_dvc=false")
        orch = params.orchestration
        logger.info("workspace %s, profile %s, %s: %s", ws, params.profile or "default",
                    "dvc repro" if use_dvc else "direct commands", " -> ".join(s.name for s in plan))
        # 2. stages under one MLflow parent run
        results: list[StageResult] = []
        with tracking.pipeline_run(params, flow_run.name or "pipeline", root=ws,
                                   tags={"prefect.flow_run_id": str(flow_run.id or "")}) as run:
            env = tracking.child_env(params, run, root=ws)
            try:
                for stage in plan:
                    step = run_stage.with_options(name=stage.name, task_run_name=stage.name, retries=orch.retries,
                                                  retry_delay_seconds=orch.retry_delay_s)
                    try:
                        results.append(step(stage, str(ws), env, use_dvc))
                    except Exception:
                        results.append(StageResult(stage.name, "failed", 0.0, attempts=orch.retries + 1))
                        raise
            finally:
                # 3. the summary, published whether the stages succeeded or not
                metrics = _publish(params, results, ws, run)
    return {"stages": {r.name: r.status for r in results}, "metrics": metrics or {},
            "mlflow_run_id": run.info.run_id if run is not None else None}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.pipeline --workspace DIR`: one flow run in this process."""
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline",
                                     description="Run the gvr pipeline once, in this process (an ephemeral "
                                                 "Prefect API unless PREFECT_API_URL is set).")
    parser.add_argument("--workspace", default=".", help="folder with params.yaml and dvc.yaml (default: .)")
    parser.add_argument("--profile", default=None, help="params profile, written into params.yaml")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="params override, written into params.yaml (repeatable)")
    parser.add_argument("--no-dvc", action="store_true", help="run the stage commands directly, not via dvc repro")
    parser.add_argument("--stages", nargs="+", default=None, metavar="STAGE", help="only these dvc.yaml stages")
    args = parser.parse_args(argv)
    try:
        result = gvr_pipeline(workspace=args.workspace, profile=args.profile, overrides=args.set or None,
                              use_dvc=False if args.no_dvc else None, stages=args.stages)
    except GVRError as e:
        print(f"gvr pipeline: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
