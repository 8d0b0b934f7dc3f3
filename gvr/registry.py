"""MLflow model registry for SimpleGVR: a pyfunc model, registration with the promotion rule, and
resolving a model URI (`models:/gvr@champion`, `runs:/...`, a folder, an s3:// prefix) to a local folder.

The registered artifact is the exported model folder (`model.safetensors` + `config.json`, maybe
`sampler.json`) inside an MLflow pyfunc model, so MLflow serving and `mlflow.pyfunc.load_model`
can run it, while `gvr upscale` downloads the folder once (`resolve_model_uri`) and loads
`GVRPipeline` directly.

Promotion rule (params `register.*`): a new version takes the champion alias only when
  1. its `metric` beats every baseline's score in the same metrics (keys `{baseline}_{metric}`,
     baselines from `evaluate.baselines`, e.g. `psnr` vs `bilinear_psnr`) if
     `require_beats_baseline`, and
  2. there is no champion yet, or it beats the champion's `metric` by more than `min_delta`
     (`mode` max: higher is better; min: lower is better). Ties keep the current champion.
The decision and its reason are tags on the version (`gvr.promoted`, `gvr.promotion_reason`); the
metrics are version tags, the run's metrics and the logged model's metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gvr import tracking
from gvr.config import Params, RegisterParams
from gvr.errors import GVRError, InputError

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # nodes without mlflow can still resolve and load local model folders
    PythonModel = object

log = logging.getLogger(__name__)

ARTIFACT_KEY = "model"  # the exported folder's key in the pyfunc's artifacts
PROMOTED_TAG = "gvr.promoted"
REASON_TAG = "gvr.promotion_reason"
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
_WHERE = ".gvr-model-path"  # in a cached download: the downloaded model's path inside it


# ------------------------------------------------------------------------------------ pyfunc


def load_pipeline(model_dir: str, device: str = "auto", dtype: str = "bfloat16"):
    """The inference pipeline of an exported model folder (imported lazily: torch is heavy)."""
    from gvr.pipeline import load_pipeline as load

    return load(model_dir, device, dtype)


class GVRModel(PythonModel):
    """MLflow pyfunc: LR latents `(B, C, T, h, w)` float32 in, HR videos `(B, frames, H, W, 3)` uint8 out.

    Inference params (`predict(..., params={...})`): prompt, steps, noise_aug, guidance, seed and
    short_side (HR short side in pixels, aspect ratio kept); their defaults are the registering
    run's `upscale.*`, recorded in the signature. `model_config` picks the device and dtype at load
    time (`mlflow.pyfunc.load_model(uri, model_config={"device": "cuda:1"})`).
    """

    def load_context(self, context) -> None:
        cfg = context.model_config or {}
        self.pipe = load_pipeline(context.artifacts[ARTIFACT_KEY], cfg.get("device", "auto"),
                                  cfg.get("dtype", "bfloat16"))

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        import torch

        from gvr.io.video import to_frames
        from gvr.upscale import hr_size_for

        p = {**PREDICT_DEFAULTS, **(params or {})}
        lr = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32))  # (B, C, T, h, w)
        f = self.pipe.codec.spatial_factor
        size = hr_size_for((lr.shape[3] * f, lr.shape[4] * f), int(p["short_side"]))
        out = self.pipe(lr_latent=lr, prompt=p["prompt"], hr_size=size, steps=int(p["steps"]),
                        noise_aug=float(p["noise_aug"]), guidance=float(p["guidance"]), seed=int(p["seed"]),
                        decode=True)
        return np.stack([to_frames(v) for v in out.video])  # (B, frames, H, W, 3)


PREDICT_DEFAULTS = {"prompt": "", "steps": 50, "noise_aug": 0.3, "guidance": 1.0, "seed": 0, "short_side": 1088}


def predict_signature(params: Params):
    """The pyfunc's input/output tensors and inference params (defaults from `upscale.*`)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    up = params.upscale
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1, 3))]),
        params=ParamSchema([ParamSpec("prompt", "string", ""), ParamSpec("steps", "long", up.steps),
                            ParamSpec("noise_aug", "double", up.noise_aug), ParamSpec("guidance", "double", up.guidance),
                            ParamSpec("seed", "long", up.seed), ParamSpec("short_side", "long", up.short_side)]),
    )


def _requirements() -> list[str]:
    """gvr's core requirements: the serving environment must also have gvr itself (the gvr image)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("gvr") or []
    except PackageNotFoundError:
        return ["torch", "numpy", "einops", "safetensors", "pyyaml"]
    return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r]


# ------------------------------------------------------------------------------------ promotion


@dataclass(frozen=True)
class Champion:
    """The version holding the champion alias and its score on the promotion metric (None if unknown)."""

    version: str
    value: float | None


def promotion_decision(rule: RegisterParams, metrics: Mapping[str, float], baselines: Sequence[str],
                       champion: Champion | None) -> tuple[bool, str]:
    """Whether a candidate with `metrics` takes the champion alias, and why (see the module docstring)."""
    m = rule.metric
    value = metrics[m]
    if math.isnan(value):
        return False, f"{m} is NaN"

    def beats(a: float, b: float, delta: float) -> bool:
        return a > b + delta if rule.mode == "max" else a < b - delta

    if rule.require_beats_baseline:
        expected = [f"{b}_{m}" for b in baselines]
        present = [k for k in expected if k in metrics]
        if not present:
            return False, f"no baseline score to beat (expected {' or '.join(expected) or 'evaluate.baselines'})"
        for key in present:
            if not beats(value, metrics[key], 0.0):
                return False, f"{m} {value:.4g} does not beat {key} {metrics[key]:.4g}"
    if champion is None:
        return True, f"first champion ({m} {value:.4g}" + (", beats the baselines)" if rule.require_beats_baseline
                                                             else ")")
    if champion.value is None or math.isnan(champion.value):
        return False, f"champion v{champion.version} has no recorded {m}; move the alias by hand"
    if not beats(value, champion.value, rule.min_delta):
        return False, (f"{m} {value:.4g} does not beat champion v{champion.version} ({champion.value:.4g}) "
                       f"by more than {rule.min_delta:g}")
    return True, f"{m} {value:.4g} beats champion v{champion.version} ({champion.value:.4g}) by more than {rule.min_delta:g}"


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"metrics: {k!r} is {v!r}, expected a number (metrics.json is a flat name -> number map)")
        out[k] = float(v)
    return out


@contextlib.contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow's errors (unknown model, version, run or artifact) into one GVRError about `what`."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        raise GVRError(f"{what}: {e.message}") from None


def _champion(client, name: str, alias: str, metric: str) -> Champion | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no registered model yet, or no alias on it
        return None
    value = mv.tags.get(metric)
    if value is None and mv.run_id:  # e.g. a version registered by hand: fall back to its run
        with contextlib.suppress(MlflowException):
            value = client.get_run(mv.run_id).data.metrics.get(metric)
    return Champion(mv.version, None if value is None else float(value))


def _description(metrics: Mapping[str, float], promoted: bool, reason: str) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items()))
    verdict = "promoted" if promoted else "not promoted"
    return f"SimpleGVR export, {verdict}: {reason}.\n\n| metric | value |\n|---|---|\n{rows}\n"


@contextlib.contextmanager
def _logging_run(mlflow, params: Params, run_id: str | None) -> Iterator[Any]:
    """The run the model is logged to: `run_id`, else the active run, else a new `register` stage run."""
    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        yield active
    elif run_id is not None:
        with mlflow.start_run(run_id=run_id, nested=active is not None) as run:
            yield run
    else:
        with tracking.stage_run(params, "register") as run:
            if run is None:
                raise GVRError("register runs on rank 0 only (RANK is set to another rank)")
            yield run


def register(params: Params, model_dir: str, metrics: Mapping[str, Any], run_id: str | None = None):
    """Log `model_dir` as a pyfunc model, register a version carrying `metrics`, apply the promotion rule.

    Args:
        params: resolved params (`tracking.*` names the store, model and alias; `register.*` the rule).
        model_dir: the exported model folder (local path or s3:// prefix).
        metrics: flat name -> number (evaluate's metrics.json); must contain `register.metric`.
        run_id: MLflow run to log the model to (default: the active run, else a new `register` run).

    Returns the registered `ModelVersion` (tags and aliases current).
    """
    from gvr.io.storage import local_dir

    metrics = _numeric(metrics)
    if params.register.metric not in metrics:
        raise InputError(f"register.metric: {params.register.metric!r} is not in the metrics "
                         f"(have: {', '.join(sorted(metrics)) or 'none'})")
    name, alias = params.tracking.registered_model, params.tracking.champion_alias
    local = local_dir(model_dir, params.storage)
    if not (Path(local) / "config.json").is_file():
        raise InputError(f"{model_dir}: not an exported model folder (no config.json)")
    mlflow = tracking.connect(params)
    client = mlflow.MlflowClient()
    with _logging_run(mlflow, params, run_id) as run:
        # 1. the model and its metrics
        with warnings.catch_warnings():  # an input example would make MLflow load and run the model here
            warnings.filterwarnings("ignore", message=".*input example.*")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=GVRModel(), artifacts={ARTIFACT_KEY: local},
                signature=predict_signature(params), pip_requirements=_requirements(),
                model_config={"device": params.compute.device, "dtype": params.compute.dtype},
                metadata={"gvr_profile": params.profile or "default"})
        mlflow.log_metrics(metrics, model_id=info.model_id)
        # 2. the decision against the current champion
        champion = _champion(client, name, alias, params.register.metric)
        promoted, reason = promotion_decision(params.register, metrics, params.evaluate.baselines, champion)
        tags = {**{k: repr(v) for k, v in metrics.items()}, PROMOTED_TAG: str(promoted).lower(),
                REASON_TAG: reason, "gvr.profile": params.profile or "default", "gvr.source": str(model_dir)}
        if os.environ.get(tracking.PARENT_RUN_ENV):
            tags["gvr.pipeline_run_id"] = os.environ[tracking.PARENT_RUN_ENV]
        # 3. the version, and the alias when the rule holds
        with _mlflow_errors(f"registering {name!r}"):
            mv = mlflow.register_model(info.model_uri, name, tags=tags)
            client.update_model_version(name, mv.version, description=_description(metrics, promoted, reason))
            if promoted:
                client.set_registered_model_alias(name, alias, mv.version)
        mlflow.set_tags({"gvr.registered_model": name, "gvr.registered_version": mv.version,
                         PROMOTED_TAG: str(promoted).lower()})
        log.info("registered %s v%s (run %s): %s%s", name, mv.version, run.info.run_id,
                 "promoted to @" + alias + ": " if promoted else "not promoted: ", reason)
    return client.get_model_version(name, mv.version)


def describe(version, params: Params) -> dict[str, Any]:
    """A JSON-able record of a registered version and its alias decision (for registry.json, summaries)."""
    alias = params.tracking.champion_alias
    return {"registered_model": version.name, "version": int(version.version), "run_id": version.run_id,
            "model_uri": f"models:/{version.name}/{version.version}",
            "promoted": version.tags.get(PROMOTED_TAG) == "true", "reason": version.tags.get(REASON_TAG, ""),
            "alias": alias, "champion": alias in (version.aliases or [])}


# ------------------------------------------------------------------------------------ resolving


def _parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` -> (NAME, ALIAS, None); `models:/NAME/VERSION` -> (NAME, None, VERSION)."""
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, None, version
    return rest, None, None  # a logged-model id (models:/m-...): already immutable


def _pin_version(client, uri: str) -> str:
    """The immutable URI behind `uri`: aliases and `latest` resolved to a version number."""
    if not uri.startswith("models:/"):
        return uri
    name, alias, version = _parse_models_uri(uri)
    if alias is None and version not in ("latest", None) and not version.isdigit():
        raise GVRError(f"{uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest")
    if alias is None and version is None:
        return uri
    with _mlflow_errors(uri):
        model = client.get_registered_model(name)
    if alias is not None:
        if alias not in (model.aliases or {}):
            known = ", ".join(sorted(model.aliases or {})) or "none"
            raise GVRError(f"{uri}: registered model {name!r} has no alias {alias!r} (aliases: {known})")
        return f"models:/{name}/{model.aliases[alias]}"
    if version == "latest":
        found = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
        if not found:
            raise GVRError(f"{uri}: registered model {name!r} has no versions")
        return f"models:/{name}/{found[0].version}"
    with _mlflow_errors(uri):
        client.get_model_version(name, version)
    return uri


def _exported_folder(path: str, uri: str) -> str:
    """The exported model folder inside a downloaded MLflow model (or `path` itself)."""
    import yaml

    mlmodel = Path(path) / "MLmodel"
    if mlmodel.is_file():
        flavor = (yaml.safe_load(mlmodel.read_text()).get("flavors") or {}).get("python_function") or {}
        rel = ((flavor.get("artifacts") or {}).get(ARTIFACT_KEY) or {}).get("path")
        if rel is None:
            raise GVRError(f"{uri}: an MLflow model, but not a gvr one (no '{ARTIFACT_KEY}' artifact)")
        path = str(Path(path) / rel)
    if not (Path(path) / "config.json").is_file():
        raise GVRError(f"{uri}: not a gvr model (no config.json in {path})")
    return path


def resolve_model_uri(uri: str, params: Params | None = None) -> str:
    """A local folder holding the exported model that `uri` names, downloading it once into the cache.

    `uri` is `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/NAME/latest`, `runs:/RUN/PATH`,
    an `mlflow-artifacts:/` URI, a local folder, or an s3:// prefix. Registry URIs are pinned to a
    version first, so the cache (`$GVR_CACHE_DIR/models`) never serves a stale champion.
    """
    from gvr.io import storage

    params = params or Params()
    if not uri.startswith(MLFLOW_SCHEMES):
        return _exported_folder(storage.local_dir(uri, params.storage), uri)
    mlflow = tracking.connect(params)
    pinned = _pin_version(mlflow.MlflowClient(), uri)
    key = hashlib.sha256(f"{mlflow.get_tracking_uri()}\0{pinned}".encode()).hexdigest()[:24]
    dest = storage.cache_dir() / "models" / key
    if not (dest / _WHERE).is_file():
        shutil.rmtree(dest, ignore_errors=True)  # an interrupted copy from an older version of this code
        tmp = dest.parent / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir(parents=True)
        try:
            with _mlflow_errors(uri):
                got = mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(tmp))
            # runs:/RUN/PATH lands in tmp/PATH, a registry URI in tmp itself: remember which
            (tmp / _WHERE).write_text(os.path.relpath(got, tmp))
            with contextlib.suppress(OSError):  # another process landed the same download first
                os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("downloaded %s (%s) to %s", uri, pinned, dest)
    return _exported_folder(str(dest / (dest / _WHERE).read_text()), uri)
