"""gvr.registry: promotion rule, registration and aliases on a real MLflow server, model URI resolution.

The registered artifact here is a small stand-in model folder (config.json + model.safetensors of
random weights); the pyfunc's pipeline is a stand-in too, so these tests cover the registry
plumbing, not the model.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gvr import registry, tracking
from gvr.config import Params, RegisterParams
from gvr.errors import GVRError, InputError
from gvr.registry import Champion, promotion_decision

# ------------------------------------------------------------------------------------ the rule

BASELINES = ["bilinear"]


@pytest.mark.parametrize("metrics, champion, rule, expected", [
    ({"psnr": 30.0, "bilinear_psnr": 25.0}, None, {}, True),  # first version beating the baseline
    ({"psnr": 24.0, "bilinear_psnr": 25.0}, None, {}, False),  # first version losing to it
    ({"psnr": 25.0, "bilinear_psnr": 25.0}, None, {}, False),  # a tie is not a win
    ({"psnr": 30.0}, None, {}, False),  # the baseline score is required but missing
    ({"psnr": 30.0}, None, {"require_beats_baseline": False}, True),
    ({"psnr": 30.0, "bilinear_psnr": 25.0}, Champion("1", 29.0), {}, True),
    ({"psnr": 30.0, "bilinear_psnr": 25.0}, Champion("1", 30.0), {}, False),  # ties keep the champion
    ({"psnr": 30.0, "bilinear_psnr": 25.0}, Champion("1", 29.6), {"min_delta": 0.5}, False),
    ({"psnr": 30.0, "bilinear_psnr": 25.0}, Champion("1", 29.4), {"min_delta": 0.5}, True),
    ({"psnr": 30.0, "bilinear_psnr": 25.0}, Champion("1", None), {}, False),  # unknown champion score
    ({"psnr": float("nan"), "bilinear_psnr": 25.0}, None, {}, False),
    ({"lpips": 0.2, "bilinear_lpips": 0.4}, Champion("2", 0.25), {"metric": "lpips", "mode": "min"}, True),
    ({"lpips": 0.2, "bilinear_lpips": 0.1}, None, {"metric": "lpips", "mode": "min"}, False),
])
def test_promotion_decision(metrics, champion, rule, expected):
    promoted, reason = promotion_decision(RegisterParams(**{"metric": "psnr", **rule}), metrics, BASELINES, champion)
    assert promoted is expected
    assert reason


def test_reason_names_what_was_compared():
    _, reason = promotion_decision(RegisterParams(metric="psnr"), {"psnr": 24.0, "bilinear_psnr": 25.0}, BASELINES, None)
    assert "bilinear_psnr" in reason
    _, reason = promotion_decision(RegisterParams(metric="psnr"), {"psnr": 30.0, "bilinear_psnr": 25.0}, BASELINES,
                                   Champion("4", 31.0))
    assert "v4" in reason


# ------------------------------------------------------------------------------------ stand-ins


def _model_dir(root: Path, seed: int = 0) -> Path:
    """A stand-in exported model folder: config.json + random weights."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(4, 4, generator=g)}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"scale": 8, "seed": seed}))
    return root


class StandInPipeline:
    """GVRPipeline's calling convention; returns a video of the asked HR size filled with the seed's value."""

    calls: list[dict] = []

    def __init__(self, model_dir: str):
        self.config = json.loads((Path(model_dir) / "config.json").read_text())
        self.codec = SimpleNamespace(spatial_factor=self.config["scale"], temporal_factor=4)

    def __call__(self, *, lr_latent, prompt, hr_size, steps, noise_aug, guidance, seed, decode):
        StandInPipeline.calls.append(dict(prompt=prompt, hr_size=hr_size, steps=steps, noise_aug=noise_aug,
                                          guidance=guidance, seed=seed, decode=decode))
        b, _, t = lr_latent.shape[:3]
        frames = (t - 1) * self.codec.temporal_factor + 1
        value = seed / 127.5 - 1  # decodes to uint8 `seed`
        return SimpleNamespace(video=torch.full((b, 3, frames, *hr_size), value))


@pytest.fixture
def params(mlflow_env, tmp_path, monkeypatch) -> Params:
    """Params naming a fresh experiment and registered model on the session's server; a temp cache."""
    monkeypatch.setenv("GVR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    p = Params()
    p.tracking.experiment = f"reg-{uuid.uuid4().hex[:8]}"
    p.tracking.registered_model = f"gvr-{uuid.uuid4().hex[:8]}"
    p.compute.device = "cpu"
    p.register.metric = "psnr"  # the tests' stand-in metrics are PSNR (the default ranks by MUSIQ)
    return p


# ------------------------------------------------------------------------------------ register


def test_register_moves_champion_only_when_the_rule_holds(params, mlflow_env, tmp_path):
    client = mlflow_env.client()
    name, alias = params.tracking.registered_model, params.tracking.champion_alias
    params.register.min_delta = 0.5

    v1 = registry.register(params, str(_model_dir(tmp_path / "m1", 1)), {"psnr": 30.0, "bilinear_psnr": 25.0})
    assert v1.version == "1" and alias in v1.aliases
    assert v1.tags[registry.PROMOTED_TAG] == "true" and float(v1.tags["psnr"]) == 30.0
    assert "30" in v1.description
    run = client.get_run(v1.run_id)
    assert run.info.run_name == "register" and run.data.metrics["psnr"] == 30.0
    assert run.data.tags["gvr.registered_version"] == "1"

    v2 = registry.register(params, str(_model_dir(tmp_path / "m2", 2)), {"psnr": 30.3, "bilinear_psnr": 25.0})
    assert v2.tags[registry.PROMOTED_TAG] == "false" and "min_delta" not in v2.tags[registry.REASON_TAG]
    assert "v1" in v2.tags[registry.REASON_TAG]
    assert client.get_model_version_by_alias(name, alias).version == "1"

    v3 = registry.register(params, str(_model_dir(tmp_path / "m3", 3)), {"psnr": 31.0, "bilinear_psnr": 25.0})
    assert client.get_model_version_by_alias(name, alias).version == "3"
    assert registry.describe(v3, params) == {
        "registered_model": name, "version": 3, "run_id": v3.run_id, "model_uri": f"models:/{name}/3",
        "promoted": True, "reason": v3.tags[registry.REASON_TAG], "alias": alias, "champion": True}


def test_register_logs_into_the_given_or_active_run(params, mlflow_env, tmp_path):
    with tracking.stage_run(params, "register") as run:
        mv = registry.register(params, str(_model_dir(tmp_path / "m")), {"psnr": 20.0, "bilinear_psnr": 25.0},
                               run_id=run.info.run_id)
    assert mv.run_id == run.info.run_id
    assert mv.tags[registry.PROMOTED_TAG] == "false"  # loses to the baseline: registered, not promoted
    assert mlflow_env.client().get_registered_model(params.tracking.registered_model).aliases == {}


@pytest.mark.parametrize("metrics, error", [
    ({"ssim": 0.9}, "register.metric"),
    ({"psnr": "high"}, "expected a number"),
])
def test_register_rejects_bad_metrics(params, tmp_path, metrics, error):
    with pytest.raises(InputError, match=error):
        registry.register(params, str(_model_dir(tmp_path / "m")), metrics)


def test_register_rejects_a_folder_that_is_not_a_model(params, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json"):
        registry.register(params, str(tmp_path / "empty"), {"psnr": 1.0})


# ------------------------------------------------------------------------------------ resolve


def _same_files(a: str | Path, b: Path) -> bool:
    return all((Path(a) / f).read_bytes() == (b / f).read_bytes() for f in ("config.json", "model.safetensors"))


def test_resolve_registry_uris_to_cached_local_folders(params, tmp_path):
    name = params.tracking.registered_model
    m1, m2 = _model_dir(tmp_path / "m1", 1), _model_dir(tmp_path / "m2", 2)
    v1 = registry.register(params, str(m1), {"psnr": 30.0, "bilinear_psnr": 25.0})

    champ = registry.resolve_model_uri(f"models:/{name}@champion", params)
    assert _same_files(champ, m1) and str(tmp_path / "cache") in champ
    assert registry.resolve_model_uri(f"models:/{name}/1", params) == champ  # same version, same cache entry
    assert _same_files(registry.resolve_model_uri(f"runs:/{v1.run_id}/model", params), m1)

    registry.register(params, str(m2), {"psnr": 31.0, "bilinear_psnr": 25.0})
    moved = registry.resolve_model_uri(f"models:/{name}@champion", params)
    assert moved != champ and _same_files(moved, m2)  # the alias moved: no stale cache
    assert registry.resolve_model_uri(f"models:/{name}/latest", params) == moved


def test_resolve_errors_name_the_problem(params, tmp_path):
    name = params.tracking.registered_model
    registry.register(params, str(_model_dir(tmp_path / "m")), {"psnr": 1.0, "bilinear_psnr": 2.0})  # no alias
    with pytest.raises(GVRError, match="has no alias 'champion'.*aliases: none"):
        registry.resolve_model_uri(f"models:/{name}@champion", params)
    with pytest.raises(GVRError, match="nope"):
        registry.resolve_model_uri("models:/nope@champion", params)
    with pytest.raises(GVRError, match="not found"):
        registry.resolve_model_uri(str(tmp_path / "missing"), params)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GVRError, match="not a gvr model"):
        registry.resolve_model_uri(str(tmp_path / "empty"), params)


def test_resolve_with_unreachable_server(tmp_path):
    from fixtures.s3 import free_port

    p = Params()
    p.tracking.uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GVRError, match="unreachable"):
        registry.resolve_model_uri("models:/gvr@champion", p)


def test_resolve_local_and_s3_folders(tmp_path, s3_bucket, monkeypatch):
    import boto3

    monkeypatch.setenv("GVR_CACHE_DIR", str(tmp_path / "cache"))
    m = _model_dir(tmp_path / "m")
    assert registry.resolve_model_uri(str(m)) == str(m)
    s3 = boto3.client("s3")
    bucket = s3_bucket.removeprefix("s3://")
    for f in ("config.json", "model.safetensors"):
        s3.upload_file(str(m / f), bucket, f"models/v1/{f}")
    assert _same_files(registry.resolve_model_uri(f"{s3_bucket}/models/v1"), m)


# ------------------------------------------------------------------------------------ pyfunc


def test_pyfunc_from_champion_runs_the_pipeline(params, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setattr(registry, "load_pipeline", lambda model_dir, device, dtype: StandInPipeline(model_dir))
    StandInPipeline.calls.clear()
    params.upscale.steps = 7
    registry.register(params, str(_model_dir(tmp_path / "m")), {"psnr": 30.0, "bilinear_psnr": 25.0})

    model = mlflow.pyfunc.load_model(f"models:/{params.tracking.registered_model}@champion")
    latent = np.random.default_rng(0).standard_normal((2, 16, 3, 4, 6)).astype(np.float32)
    video = model.predict(latent, params={"seed": 5, "prompt": "a cat", "short_side": 64})
    # 4x6 latent, 8 px per latent pixel: 32x48 LR, short side 64 -> 64x96; 3 latent frames -> 9 frames
    assert video.shape == (2, 9, 64, 96, 3) and video.dtype == np.uint8 and (video == 5).all()
    # defaults for params not given come from the registering run's upscale.* (the signature)
    assert StandInPipeline.calls[-1] == dict(prompt="a cat", hr_size=(64, 96), steps=7, noise_aug=params.upscale.noise_aug,
                                             guidance=params.upscale.guidance, seed=5, decode=True)


def test_pyfunc_runs_a_real_tiny_model(params, tmp_path):
    """The registered champion, loaded through MLflow, runs the real GVRPipeline (tiny preset, tiny codec)."""
    import dataclasses

    import mlflow

    from gvr.config import CodecParams, TextParams
    from gvr.io.video import to_frames
    from gvr.models.presets import PRESETS, build_model
    from gvr.pipeline import GVRPipeline

    tiny = PRESETS["gvr-tiny"]
    model = build_model(tiny)
    codec = dataclasses.asdict(CodecParams(kind="tiny", channels=16, device="cpu", dtype="float32"))
    text = dataclasses.asdict(TextParams(kind="none", dim=tiny.text_dim, max_length=1, device="cpu", dtype="float32"))
    model.save_pretrained(tmp_path / "tiny", extra={"codec": codec, "text": text})
    registry.register(params, str(tmp_path / "tiny"), {"psnr": 30.0, "bilinear_psnr": 25.0})

    pyfunc = mlflow.pyfunc.load_model(f"models:/{params.tracking.registered_model}@champion")
    latent = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    video = pyfunc.predict(latent.numpy(), params={"steps": 2, "short_side": 32, "seed": 3})
    assert video.shape == (1, 5, 32, 48, 3) and video.dtype == np.uint8  # 2 latent frames -> 5 frames
    direct = GVRPipeline.from_pretrained(tmp_path / "tiny")(lr_latent=latent, hr_size=(32, 48), steps=2, seed=3)
    assert np.array_equal(video[0], to_frames(direct.video[0]))
