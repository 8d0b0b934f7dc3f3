"""The `gvr` command line: help a newcomer can read, and one clear line for every kind of bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from fixtures.videos import make_broken_videos
from gvr.cli import STAGES, build_parser

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["curate", "degrade", "train", "derive-sampler", "evaluate", "register", "upscale", "demo"]


def gvr(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "gvr.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def one_error_line(res) -> str:
    """The command failed with exit 2 and exactly one `gvr: error:` line, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    errors = [line for line in res.stderr.splitlines() if line.startswith("gvr: error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return errors[0]


def test_every_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)
    for name in COMMANDS:
        text = sub.choices[name].format_help()
        assert len(sub.choices[name].description or "") > 40, name
        if name != "demo":
            assert "--profile" in text and "--set" in text, name
    assert STAGES == ("stage1", "stage2", "stage3")


def test_help_runs_as_a_program():
    res = gvr("train", "--help")
    assert res.returncode == 0 and "--stage {stage1,stage2,stage3}" in res.stdout


@pytest.mark.parametrize("override,expected", [
    ("curate.min_laplacian=3", "curate.min_laplacian: unknown key"),
    ("curate.min_laplacian_var=-5", "curate.min_laplacian_var: -5"),
    ("curate.max_brightness=999", "curate.max_brightness: 999"),
])
def test_bad_params_one_line(tmp_path, override, expected):
    res = gvr("curate", "--params", str(ROOT / "params.yaml"), "--profile", "tiny", "--set", override, cwd=tmp_path)
    assert expected in one_error_line(res)
    assert not (tmp_path / "data").exists()


def test_unknown_profile_and_missing_params(tmp_path):
    assert "unknown profile 'huge'" in one_error_line(gvr("curate", "--params", str(ROOT / "params.yaml"),
                                                          "--profile", "huge"))
    assert "params file not found" in one_error_line(gvr("curate", "--params", str(tmp_path / "nope.yaml")))


def test_unreachable_s3_endpoint(tmp_path):
    res = gvr("curate", "--params", str(ROOT / "params.yaml"), "--profile", "tiny",
              "--set", "curate.input=s3://nowhere/raw", "--set", "storage.root=s3://nowhere/gvr",
              "--set", "storage.s3_endpoint_url=http://127.0.0.1:9", "--set", "storage.s3_retries=0",
              "--set", "storage.s3_connect_timeout_s=1", cwd=tmp_path,
              env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    assert "127.0.0.1:9" in one_error_line(res)


def test_corrupt_videos_are_recorded_and_curation_goes_on(tmp_path, synthetic_videos):
    raw = tmp_path / "raw"
    broken = make_broken_videos(raw, synthetic_videos["pan"])
    (raw / "good.mp4").write_bytes(synthetic_videos["texture"].read_bytes())
    res = gvr("curate", "--params", str(ROOT / "params.yaml"), "--profile", "tiny",
              "--set", f"curate.input={raw}", "--set", f"storage.root={tmp_path / 'out'}",
              "--set", "compute.use_ray=false", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert res.returncode == 0, res.stderr[-3000:]
    table = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("path")
    reasons = {Path(p).stem: r for p, r in table["reason"].items()}
    assert reasons["zero_byte"] == reasons["truncated"] == reasons["text"] == "unreadable"
    assert reasons["one_frame"] == "too_short"
    assert pd.isna(reasons["good"]) and table["accepted"].sum() == 1
    assert {p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("manifest")} == set()
    assert set(broken) <= set(reasons)


def test_upscale_records_bad_inputs_and_goes_on(tmp_path, tiny_model_dir):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    save_file({"latent": torch.randn(16, 2, 4, 6)}, inputs / "sub" / "ok.safetensors")
    save_file({"latent": torch.full((16, 2, 4, 6), float("nan"))}, inputs / "nan.safetensors")
    save_file({"latent": torch.randn(8, 2, 4, 6)}, inputs / "channels.safetensors")
    save_file({"other": torch.randn(16, 2, 4, 6)}, inputs / "unnamed.safetensors")
    (inputs / "corrupt.safetensors").write_bytes(b"\x00" * 10)
    res = gvr("upscale", "--model", str(tiny_model_dir), "--input", str(inputs), "--output", str(tmp_path / "out"),
              "--params", str(ROOT / "params.yaml"), "--profile", "tiny", "--set", "upscale.steps=2", cwd=tmp_path,
              env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["failures.json", "sub/ok.mp4"]
    import json

    failures = {Path(f["input"]).stem: f["reason"] for f in json.loads((out / "failures.json").read_text())}
    assert set(failures) == {"nan", "channels", "unnamed", "corrupt"}
    assert "NaN" in failures["nan"] and "16" in failures["channels"] and "latent" in failures["unnamed"]

    # a rerun without the bad inputs: the done output is kept, the stale failure list goes
    for name in failures:
        (inputs / f"{name}.safetensors").unlink()
    done = (out / "sub" / "ok.mp4").stat().st_mtime_ns
    res = gvr("upscale", "--model", str(tiny_model_dir), "--input", str(inputs), "--output", str(out),
              "--params", str(ROOT / "params.yaml"), "--profile", "tiny", cwd=tmp_path,
              env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert res.returncode == 0 and not (out / "failures.json").exists()
    assert (out / "sub" / "ok.mp4").stat().st_mtime_ns == done


def test_upscale_with_missing_model_is_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    save_file({"latent": torch.randn(16, 2, 4, 6)}, tmp_path / "in" / "x.safetensors")
    res = gvr("upscale", "--model", str(tmp_path / "no-model"), "--input", str(tmp_path / "in"),
              "--output", str(tmp_path / "out"), "--params", str(ROOT / "params.yaml"), "--profile", "tiny")
    assert "no-model" in one_error_line(res)
    assert not (tmp_path / "out").exists()
