"""MLflow run helpers every stage uses: one run per stage, nested under the pipeline's parent run.

A pipeline run (`pipeline_run`) is a top-level MLflow run; the orchestrator hands its id to the
stage processes through `$GVR_PARENT_RUN_ID` (see `child_env`), and each stage's `stage_run` opens a
child run under it. Without that variable a stage run is top-level, so `gvr <stage>` and
`dvc repro` by hand are tracked too. Only rank 0 talks to MLflow: on other ranks `stage_run` yields
None and every `log_*` helper is a no-op, as it is when no run is active, so library code can log
unconditionally. Nothing here touches MLflow at import time; the tracking URI is set when a run opens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gvr.config import Params
from gvr.errors import GVRError

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "GVR_PARENT_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


# ------------------------------------------------------------------------------------ where


def tracking_uri(params: Params, root: str | os.PathLike | None = None) -> str:
    """params.tracking.uri, else $MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` in `root` (default: cwd)."""
    if params.tracking.uri:
        return params.tracking.uri
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV]
    return f"sqlite:///{(Path(root or Path.cwd()) / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one clear error when an http(s) tracking server does not answer.

    MLflow's own client retries a dead server for minutes; any HTTP answer (even 404 or 401) proves
    the server is up, so only connection errors and timeouts count as unreachable.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise GVRError(f"MLflow tracking server {uri} is unreachable ({reason}); start it, or point "
                       f"tracking.uri / ${TRACKING_URI_ENV} at a running one") from None


def connect(params: Params, root: str | os.PathLike | None = None):
    """Point the mlflow client at the params' tracking URI (checked reachable); returns the mlflow module."""
    import mlflow

    uri = tracking_uri(params, root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow


def child_env(params: Params, run: Any, root: str | os.PathLike | None = None) -> dict[str, str]:
    """Environment for stage processes: same tracking store, and `run` as their parent run."""
    env = {TRACKING_URI_ENV: tracking_uri(params, root)}
    if run is not None:
        env[PARENT_RUN_ENV] = run.info.run_id
    return env


# ------------------------------------------------------------------------------------ who


def process_rank() -> int:
    """This process's global rank: torch.distributed's when initialised, else $RANK, else 0."""
    # torch.distributed can only be initialised if this process imported it: no import needed here.
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK") or 0)
    except ValueError:
        return 0


def active_run():
    """The active MLflow run on rank 0, else None (mlflow not loaded, no run, or another rank)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or process_rank() != 0:
        return None
    return mlflow.active_run()


# ------------------------------------------------------------------------------------ runs


def flatten_params(params: Params) -> dict[str, str]:
    """Resolved params as `section.key` -> string (profile definitions left out: they are already applied)."""
    data = params.to_dict()
    data.pop("profiles", None)
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[prefix] = text[:MAX_PARAM_CHARS]

    walk("", data)
    return out


def _git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() or None


def _run_tags(params: Params, kind: str, name: str, root: str | os.PathLike | None,
              extra: Mapping[str, str] | None) -> dict[str, str]:
    from gvr import __version__

    tags = {"gvr.kind": kind, "gvr.stage": name, "gvr.profile": params.profile or "default",
            "gvr.version": __version__}
    commit = _git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {**tags, **(extra or {})}


def _experiment_id(mlflow, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else mlflow.create_experiment(name)


def _parent_from_env(mlflow) -> Any:
    """The run named by $GVR_PARENT_RUN_ID if it is still running, else None (with a warning)."""
    run_id = os.environ.get(PARENT_RUN_ENV)
    if not run_id:
        return None
    try:
        parent = mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        log.warning("$%s=%s is not a run in this tracking store (%s); logging a top-level run",
                    PARENT_RUN_ENV, run_id, e.message)
        return None
    if parent.info.status != "RUNNING":
        # A stale variable (e.g. a finished pipeline's id left in a shell) must not break a stage.
        log.warning("parent run %s is %s; logging a top-level run", run_id, parent.info.status)
        return None
    return parent


def _mlflow_or_none():
    try:
        import mlflow
    except ImportError:
        log.warning("mlflow is not installed: this run is not tracked")
        return None
    return mlflow


@contextlib.contextmanager
def stage_run(params: Params, stage: str, *, tags: Mapping[str, str] | None = None,
              root: str | os.PathLike | None = None, log_params: bool = True) -> Iterator[Any]:
    """An MLflow run for one stage, yielding the ActiveRun (None on ranks other than 0).

    Nesting, first match wins: under the run already active in this process; under the running
    run named by $GVR_PARENT_RUN_ID (the pipeline's); else top-level in `tracking.experiment`.
    Logs the resolved params (`section.key`, unless `log_params` is False) and tags stage, profile
    and the git commit. An exception inside the block marks the run FAILED and propagates.
    """
    mlflow = _mlflow_or_none() if process_rank() == 0 else None
    if mlflow is None:
        yield None
        return
    connect(params, root)
    # 1. where the run goes
    active = mlflow.active_run()
    parent = None if active is not None else _parent_from_env(mlflow)
    if active is not None:
        where = {"nested": True, "experiment_id": active.info.experiment_id}
    elif parent is not None:
        where = {"parent_run_id": parent.info.run_id, "experiment_id": parent.info.experiment_id}
    else:
        where = {"experiment_id": _experiment_id(mlflow, params.tracking.experiment)}
    # 2. the run itself
    with mlflow.start_run(run_name=stage, tags=_run_tags(params, "stage", stage, root, tags), **where) as run:
        if log_params:
            mlflow.log_params(flatten_params(params))
        yield run


@contextlib.contextmanager
def pipeline_run(params: Params, name: str | None = None, *, tags: Mapping[str, str] | None = None,
                 root: str | os.PathLike | None = None) -> Iterator[Any]:
    """The pipeline's parent run (top-level, in `tracking.experiment`); pass `child_env(...)` to stages."""
    mlflow = _mlflow_or_none() if process_rank() == 0 else None
    if mlflow is None:
        yield None
        return
    connect(params, root)
    experiment_id = _experiment_id(mlflow, params.tracking.experiment)
    run_tags = _run_tags(params, "pipeline", name or "pipeline", root, tags)
    # nested=True only matters when the caller already has a run open; otherwise this is top-level.
    with mlflow.start_run(run_name=name or "pipeline", experiment_id=experiment_id, tags=run_tags,
                          nested=mlflow.active_run() is not None) as run:
        mlflow.log_params(flatten_params(params))
        yield run


# ------------------------------------------------------------------------------------ logging


def _number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def log_params(values: Mapping[str, Any]) -> None:
    """Log extra params to the active run (values stringified)."""
    run = active_run()
    if run is not None:
        import mlflow

        mlflow.log_params({k: v if isinstance(v, str) else json.dumps(v, default=str)[:MAX_PARAM_CHARS]
                           for k, v in values.items()})


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log numeric metrics (floats, ints, 0-d tensors/arrays) to the active run."""
    run = active_run()
    if run is not None:
        import mlflow

        mlflow.log_metrics({k: _number(v) for k, v in metrics.items()}, step=step)


def log_metric(key: str, value: Any, step: int | None = None) -> None:
    """Log one metric to the active run."""
    log_metrics({key: value}, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the active run."""
    run = active_run()
    if run is not None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: str | os.PathLike, storage=None, artifact_path: str | None = None) -> None:
    """Upload one file (local path or s3:// URL) to the active run's artifacts."""
    if active_run() is None:
        return
    import mlflow

    from gvr.io.storage import local_copy

    with local_copy(path, storage) as local:
        mlflow.log_artifact(local, artifact_path)


def log_artifacts(directory: str | os.PathLike, storage=None, artifact_path: str | None = None) -> None:
    """Upload a folder's files (local path or s3:// prefix) to the active run's artifacts."""
    if active_run() is None:
        return
    import mlflow

    from gvr.io.storage import local_dir

    mlflow.log_artifacts(local_dir(directory, storage), artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    """Save `text` as an artifact file of the active run (e.g. a markdown report)."""
    run = active_run()
    if run is not None:
        import mlflow

        mlflow.log_text(text, artifact_file)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Save a dict as a JSON/YAML artifact file of the active run (format from the extension)."""
    run = active_run()
    if run is not None:
        import mlflow

        mlflow.log_dict(dict(data), artifact_file)


# ------------------------------------------------------------------------------------ summary


@dataclass(frozen=True)
class StageResult:
    """How one stage of a pipeline run went."""

    name: str
    status: str  # ran | skipped (unchanged) | restored (from DVC's run cache) | failed
    seconds: float
    attempts: int = 1


def read_metrics(params: Params, root: str | os.PathLike | None = None) -> dict[str, float] | None:
    """The evaluate stage's metrics.json (relative roots resolved against `root`), or None if absent."""
    return _read_output_json(params, "metrics", root)


def read_registration(params: Params, root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The register stage's registry.json (version and alias decision), or None if absent."""
    return _read_output_json(params, "registry", root)


def _read_output_json(params: Params, what: str, root: str | os.PathLike | None) -> Any:
    from gvr.io.storage import exists, is_remote, read_json
    from gvr.layout import Layout

    path = getattr(Layout.of(params), what)
    if not is_remote(path) and not os.path.isabs(path) and root is not None:
        path = os.path.join(root, path)
    return read_json(path, params.storage) if exists(path, params.storage) else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def pipeline_summary(params: Params, stages: Sequence[StageResult], metrics: Mapping[str, Any] | None,
                     registration: Mapping[str, Any] | None = None, run: Any = None) -> str:
    """A markdown report of one pipeline run: stages, metrics, registered version and alias."""
    lines = [f"# {params.orchestration.flow_name} pipeline — profile `{params.profile or 'default'}`", ""]
    if run is not None:
        lines += [f"MLflow run `{run.info.run_id}` (experiment `{params.tracking.experiment}`)", ""]
    lines += ["## Stages", "", "| stage | status | attempts | seconds |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.attempts} | {s.seconds:.1f} |" for s in stages]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("No metrics.json yet (evaluate has not run).")
    lines += ["", "## Model registry", ""]
    if registration:
        lines += [f"- {k}: {_fmt(v)}" for k, v in registration.items()]
    else:
        lines.append("Nothing registered in this run.")
    return "\n".join(lines) + "\n"
