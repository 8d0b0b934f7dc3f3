"""Pair synthesis helpers: clip placement, holdout split, HR fitting."""

import numpy as np

from gvr.degrade.pairs import clip_starts, fit_to_size, is_holdout, split_videos


def test_clip_starts_spread_and_fit():
    assert clip_starts(100, 17, 1) == [41]
    starts = clip_starts(100, 17, 3)
    assert starts == [0, 42, 83] and all(s + 17 <= 100 for s in starts)
    assert clip_starts(10, 17, 2) == []
    assert clip_starts(17, 17, 4) == [0]


def test_split_is_deterministic_and_keeps_min_holdout():
    paths = [f"v{i}.mp4" for i in range(40)]
    train, hold = split_videos(paths, 0.1, 1)
    rtrain, rhold = split_videos(list(reversed(paths)), 0.1, 1)
    assert set(train) == set(rtrain) and set(hold) == set(rhold)
    assert set(train).isdisjoint(hold) and set(train) | set(hold) == set(paths)
    assert hold == [p for p in paths if is_holdout(p, 0.1)] and 1 <= len(hold) < 10
    # adding videos does not move existing ones between splits
    _, more_hold = split_videos(paths + [f"w{i}.mp4" for i in range(10)], 0.1, 1)
    assert set(more_hold) & set(paths) == set(hold)
    # too few hashed into the holdout: the minimum is taken anyway
    train2, hold2 = split_videos(paths[:3], 0.0, 2)
    assert len(hold2) == 2 and len(train2) == 1


def test_fit_to_size_covers_and_crops():
    frames = np.zeros((3, 90, 160, 3), np.uint8)
    frames[:, :, 70:90] = 255  # a vertical bar in the middle survives the centre crop
    out = fit_to_size(frames, (64, 64))
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8
    assert out[:, :, 32].mean() > 200 and out[:, :, 0].mean() < 10
