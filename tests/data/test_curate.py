"""Curation: the paper's filters, reason precedence, failures recorded, atomic manifest, resume."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gvr.config import Params, load_params
from gvr.data import curate as cur
from gvr.data.curate import (
    COLUMNS,
    REASONS,
    brightness,
    curate,
    laplacian_variance,
    read_manifest,
    reject_reason,
)
from gvr.data.synthetic import write_synthetic_dataset
from gvr.errors import InputError, StorageError
from gvr.io import storage as st


def make_params(input_dir, root, **curate_overrides) -> Params:
    sets = [f"curate.input={input_dir}", f"storage.root={root}", "curate.min_frames=20", "curate.musiq=false",
            "compute.use_ray=false", "compute.workers=2"]
    return load_params(None, overrides=sets + [f"curate.{k}={v}" for k, v in curate_overrides.items()])


@pytest.fixture
def raw(tmp_path, synthetic_videos, broken_videos) -> Path:
    """Every synthetic kind, a too-short clip and the broken files, in one input folder."""
    folder = tmp_path / "raw"
    folder.mkdir()
    for path in synthetic_videos.values():
        shutil.copy(path, folder / path.name)
    shutil.copytree(broken_videos["zero_byte"].parent, folder / "broken")
    write_synthetic_dataset(folder / "short", count=1, frames=10, size=(64, 96), seed=9)
    (folder / "notes.txt").write_text("not listed: wrong extension")
    return folder


EXPECTED = {"0000_pan.mp4": None, "0001_texture.mp4": None, "0002_static.mp4": None,
            "0003_dark.mp4": "too_dark", "0004_bright.mp4": "too_bright", "0005_blurry.mp4": "blurry",
            "broken/one_frame.mp4": "too_short", "short/0000_pan.mp4": "too_short",
            "broken/zero_byte.mp4": "unreadable", "broken/truncated.mp4": "unreadable",
            "broken/text.mp4": "unreadable"}


def reasons_by_name(table: pd.DataFrame, root: Path) -> dict[str, str | None]:
    return {str(Path(p).relative_to(root)): r for p, r in zip(table["path"], table["reason"])}


def test_filters_measure_what_they_say():
    flat = np.full((3, 32, 32, 3), 100, np.uint8)
    assert brightness(flat) == pytest.approx(100)
    assert laplacian_variance(flat) == 0
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    soft = np.repeat(np.repeat(sharp[:, ::4, ::4], 4, axis=1), 4, axis=2)  # same values, less detail
    assert laplacian_variance(sharp) > laplacian_variance(soft) > 0


def test_reason_precedence():
    cp = Params().curate
    good = {"frames": 100, "brightness": 120.0, "laplacian_var": 200.0, "musiq": 60.0}
    assert reject_reason(good, cp) is None
    assert reject_reason({**good, "error": "x"}, cp) == "unreadable"
    # every filter failing at once: the earliest reason wins, then the next once it is fixed
    bad = {"frames": 10, "brightness": 5.0, "laplacian_var": 1.0, "musiq": 1.0}
    fixes = [("frames", 100), ("brightness", 250.0), ("brightness", 120.0), ("laplacian_var", 200.0),
             ("musiq", 60.0)]
    for (key, value), reason in zip(fixes, REASONS[1:]):
        assert reject_reason(bad, cp) == reason
        bad = {**bad, key: value}
    assert reject_reason(bad, cp) is None


def test_curate_reasons_and_manifest(raw, tmp_path):
    params = make_params(raw, tmp_path / "out")
    table, summary = curate(params, progress=False)
    assert list(table.columns) == COLUMNS
    assert reasons_by_name(table, raw) == EXPECTED
    assert summary["total"] == len(EXPECTED) and summary["accepted"] == 3
    assert {r: summary[r] for r in REASONS} == {r: list(EXPECTED.values()).count(r) for r in REASONS}

    written = read_manifest(str(tmp_path / "out" / "manifest.csv"))
    assert list(written.columns) == COLUMNS and len(written) == len(EXPECTED)
    assert written.loc[written["accepted"], "reason"].isna().all()
    assert set(written["reason"].dropna()) <= set(REASONS)
    good = written[written["path"].str.endswith("0000_pan.mp4")].iloc[0]
    assert (good["frames"], good["width"], good["height"], good["fps"]) == (30, 96, 64, 24.0)
    assert good["brightness"] > 20 and good["laplacian_var"] > 30
    broken = written[written["reason"] == "unreadable"]
    assert broken["frames"].isna().all() and broken["brightness"].isna().all()


def test_resume_reuses_measurements_and_rechecks_changed_files(raw, tmp_path):
    params = make_params(raw, tmp_path / "out")
    first = curate(params, progress=False)
    assert first.summary["evaluated"] == len(EXPECTED)

    again = curate(params, progress=False)
    assert (again.summary["evaluated"], again.summary["cached"]) == (0, len(EXPECTED))
    pd.testing.assert_frame_equal(again.table, first.table)

    # a rewritten file is measured again; thresholds are re-applied without measuring anything
    write_synthetic_dataset(raw / "short", count=1, frames=25, size=(64, 96), seed=9)
    strict = make_params(raw, tmp_path / "out", min_laplacian_var=1e9)
    table, summary = curate(strict, progress=False)
    assert summary["evaluated"] == 1
    assert summary["blurry"] == 3 + 1 + 1  # the good clips, the now long-enough one, the blurry one
    assert len(st.list_files(cur.cache_folder(str(tmp_path / "out" / "manifest.csv")))) == 1  # compacted


def test_interrupted_run_keeps_finished_work_and_no_partial_manifest(raw, tmp_path, monkeypatch):
    params = make_params(raw, tmp_path / "out")
    monkeypatch.setattr(cur, "_FLUSH_EVERY", 1)  # checkpoint after every video

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt  # killed while writing the manifest

    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, "to_csv", crash)
        with pytest.raises(KeyboardInterrupt):
            curate(params, progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.cache"]  # no manifest, no temp file
    summary = curate(params, progress=False).summary
    assert summary["evaluated"] == 0 and summary["cached"] == len(EXPECTED)


def test_transient_failures_are_reported_not_cached(raw, tmp_path, monkeypatch):
    params = make_params(raw, tmp_path / "out")
    real = cur.measure_video

    def flaky(stat, opts):
        if stat.path == str(raw / "0000_pan.mp4"):
            raise ConnectionError("connection reset by peer")
        return real(stat, opts)

    monkeypatch.setattr(cur, "measure_video", flaky)
    table, summary = curate(params, progress=False)
    assert reasons_by_name(table, raw)["0000_pan.mp4"] == "unreadable"
    assert summary["accepted"] == 2
    monkeypatch.setattr(cur, "measure_video", real)
    table, summary = curate(params, progress=False)
    assert summary["evaluated"] == 1 and reasons_by_name(table, raw)["0000_pan.mp4"] is None


def test_missing_input_and_musiq_weights_fail_early(tmp_path, monkeypatch):
    with pytest.raises(StorageError, match="not found"):
        curate(make_params(tmp_path / "nowhere", tmp_path / "out"), progress=False)
    (tmp_path / "raw").mkdir()
    monkeypatch.setenv("GVR_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    with pytest.raises(InputError, match="no local weights"):
        curate(make_params(tmp_path / "raw", tmp_path / "out", musiq="true"), progress=False)
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_curate_on_s3(s3_bucket, synthetic_videos):
    st.put_dir(synthetic_videos["pan"].parent, st.join(s3_bucket, "raw"))
    root = st.join(s3_bucket, "ws")
    params = make_params(st.join(s3_bucket, "raw"), root)
    table, summary = curate(params, progress=False)
    assert all(p.startswith(s3_bucket + "/raw/") for p in table["path"])
    assert summary["total"] == len(synthetic_videos) and summary["accepted"] == 3
    assert st.exists(st.join(root, "manifest.csv"))
    assert curate(params, progress=False).summary["cached"] == len(synthetic_videos)


def test_musiq_filter_with_local_weights(tmp_path, synthetic_videos, musiq_weights):
    raw = tmp_path / "raw"
    raw.mkdir()
    for kind in ("pan", "dark"):
        shutil.copy(synthetic_videos[kind], raw / synthetic_videos[kind].name)
    base = dict(musiq="true", musiq_weights=str(musiq_weights), sample_frames=1, min_musiq=0)
    table, _ = curate(make_params(raw, tmp_path / "out", **base), progress=False)
    pan, dark = table.iloc[0], table.iloc[1]
    assert pan["accepted"] and np.isfinite(pan["musiq"])
    assert dark["reason"] == "too_dark" and pd.isna(dark["musiq"])  # rejected early: MUSIQ not run

    # a bar above the score: low_quality, decided from the cached score
    params = make_params(raw, tmp_path / "out", **base)
    params.curate.min_musiq = float(pan["musiq"]) + 1.0
    table, summary = curate(params, progress=False)
    assert table.iloc[0]["reason"] == "low_quality" and summary["evaluated"] == 0


def test_real_sample_videos(tmp_path, sample_videos):
    raw = tmp_path / "raw"
    raw.mkdir()
    for path in sample_videos:
        shutil.copy(path, raw / path.name)
    table, summary = curate(make_params(raw, tmp_path / "out", min_frames=77), progress=False)
    by_name = {Path(p).name: row for p, (_, row) in zip(table["path"], table.iterrows())}
    assert summary["unreadable"] == 0 and summary["total"] == len(sample_videos)
    assert by_name["realshort.mp4"]["reason"] == "too_short"  # 36 frames
    assert by_name["vtest.avi"]["frames"] == 795 and by_name["vtest.avi"]["accepted"]
    assert (by_name["cockatoo.mp4"]["width"], by_name["cockatoo.mp4"]["height"]) == (1280, 720)


@pytest.mark.slow
def test_curate_through_ray(raw, tmp_path):
    """The same verdicts when videos are measured in Ray workers (starts a local instance: slow)."""
    ray = pytest.importorskip("ray")
    params = make_params(raw, tmp_path / "out")
    params.compute.use_ray = True
    try:
        table, _ = curate(params, progress=False)
    finally:
        ray.shutdown()
    assert reasons_by_name(table, raw) == EXPECTED
