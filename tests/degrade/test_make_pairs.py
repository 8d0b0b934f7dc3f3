"""Pair synthesis as a stage: shards and index, resume, pruning, and clear errors before any work."""

import os
from pathlib import Path

import pandas as pd
import pytest

from gvr.config import load_params
from gvr.data.synthetic import write_synthetic_dataset
from gvr.degrade.pairs import make_pairs
from gvr.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    videos = write_synthetic_dataset(tmp_path / "raw", count=4, frames=20, size=(64, 96), seed=1,
                                     kinds=("pan", "texture"))
    (tmp_path / "data").mkdir()
    pd.DataFrame({"path": videos, "accepted": True}).to_csv(tmp_path / "data/manifest.csv", index=False)

    def params(*overrides):
        return load_params(ROOT / "params.yaml", profile="tiny", overrides=[
            f"curate.input={tmp_path / 'raw'}", "compute.use_ray=false",
            "degrade.holdout_fraction=0", "degrade.min_holdout=1",  # exactly one video held out, whatever the paths hash to
            "degrade.sets={stage1: {frames: 9, clips_per_video: 2, methods: [resize, second_order]}, "
            "eval: {frames: 17, methods: [resize], split: holdout}}", *overrides])
    return params


def shard_files(root: Path, name: str) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (root / "data/pairs" / name / "shards").iterdir()}


def test_pairs_resume_and_prune(workspace, tmp_path):
    indexes = make_pairs(workspace())
    stage1, held = indexes["stage1"], indexes["eval"]
    assert len(stage1["shards"]) == 3 and len(held["shards"]) == 1  # one video held out
    assert sum(s["count"] for s in stage1["shards"]) == 6
    assert stage1["z0_shape"] == [16, 3, 8, 12] and stage1["c0_shape"] == [16, 3, 4, 6]
    assert {m for s in stage1["shards"] for m in s["methods"]} == {"resize", "second_order"}
    before = shard_files(tmp_path, "stage1")
    assert len(before) == 6  # a .safetensors and its .json entry per video

    # 1. a rerun re-encodes nothing and lists the same shards
    again = make_pairs(workspace())
    assert again["stage1"]["shards"] == stage1["shards"] and shard_files(tmp_path, "stage1") == before

    # 2. a setting that shapes the pairs: new shards, the old ones pruned
    changed = make_pairs(workspace("degrade.lr_size=[16, 24]"))
    after = shard_files(tmp_path, "stage1")
    assert changed["stage1"]["c0_shape"] == [16, 3, 2, 3] and set(after).isdisjoint(before) and len(after) == 6

    # 3. a replaced video is encoded again
    video = Path(changed["stage1"]["shards"][0]["source"])
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))
    assert len(set(shard_files(tmp_path, "stage1")) & set(after)) == 6
    make_pairs(workspace("degrade.lr_size=[16, 24]"))
    assert len(set(shard_files(tmp_path, "stage1")) & set(after)) == 4


def test_model_guided_without_base_weights_fails_before_any_work(workspace, tmp_path):
    with pytest.raises(InputError, match="base.path"):
        make_pairs(workspace("degrade.sets.stage1.methods=[model_guided]"))
    assert not (tmp_path / "data/pairs").exists()


def test_a_set_without_pairs_is_an_error_that_names_it(workspace):
    with pytest.raises(InputError, match=r"stage1 \(.*fewer than the 40"):
        make_pairs(workspace("degrade.sets.stage1.frames=40"))
