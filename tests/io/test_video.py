"""Video I/O: exact counts, seek-based sampling equal to full decodes, round trips, bad inputs."""

import numpy as np
import pytest

from gvr.data.synthetic import synthetic_clip
from gvr.errors import InputError
from gvr.io import storage as st
from gvr.io.video import VideoReader, probe, read_frames, uniform_indices, write_video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip("texture", 40, (64, 96), seed=3)


@pytest.mark.parametrize("ext,fps", [(".mp4", 24.0), (".mkv", 30000 / 1001), (".mov", 25.0)])
def test_roundtrip_counts_fps_and_quality(tmp_path, clip, ext, fps):
    path = tmp_path / f"clip{ext}"
    write_video(path, clip, fps)
    info = probe(path)
    assert (info.frames, info.height, info.width, info.codec) == (40, 64, 96, "h264")
    assert info.fps == pytest.approx(fps, rel=1e-6)
    assert info.duration_s == pytest.approx(40 / fps, rel=1e-6)
    back = read_frames(path)
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert psnr(back, clip) > 30  # crf 18 on natural-ish content


def test_streamed_frames_and_odd_sizes(tmp_path):
    clip = synthetic_clip("pan", 12, (63, 95), seed=1)
    path = tmp_path / "odd.mp4"
    write_video(path, iter(list(clip)), 24)  # an iterator of frames works like an array
    info = probe(path)
    assert (info.height, info.width) == (64, 96)  # padded to even for 4:2:0
    back = read_frames(path)
    assert psnr(back[:, :63, :95], clip) > 30
    assert psnr(back[:, 63, :95], clip[:, 62]) > 28  # the pad repeats the last row


def test_random_access_matches_full_decode(tmp_path, clip):
    path = tmp_path / "gop.mp4"
    write_video(path, clip, 24, keyframe_interval=8)  # several keyframes: the seek path is used
    full = read_frames(path)
    wanted = [39, 0, 17, 17, 8, 7, 31, 1]
    with VideoReader(path) as r:
        assert r.info.frames == 40 and len(r._keyframes) >= 4
        got = r.read(wanted)
        np.testing.assert_array_equal(got, full[wanted])
        np.testing.assert_array_equal(r.read(uniform_indices(40, 5)), full[uniform_indices(40, 5)])


def test_resize_on_read(tmp_path, clip):
    path = tmp_path / "c.mp4"
    write_video(path, clip, 24)
    small = read_frames(path, [0, 5], size=(32, 48))
    assert small.shape == (2, 32, 48, 3)
    full = read_frames(path, [0, 5]).astype(np.float64)
    pooled = full.reshape(2, 32, 2, 48, 2, 3).mean(axis=(2, 4))  # AREA == 2x2 mean when halving
    assert np.abs(small - pooled).max() <= 0.5 + 1e-9  # up to rounding
    assert read_frames(path, [1], size=(80, 120)).shape == (1, 80, 120, 3)


def test_uniform_indices():
    assert uniform_indices(100, 10) == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert uniform_indices(5, 10) == [0, 1, 2, 3, 4]
    assert uniform_indices(0, 10) == []
    idx = uniform_indices(77, 10)
    assert len(set(idx)) == 10 and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < 77


@pytest.mark.parametrize("kind,message", [
    ("zero_byte", "empty file"),
    ("truncated", "truncated"),
    ("text", "not a readable video"),
])
def test_bad_files_raise_input_error_naming_the_file(broken_videos, kind, message):
    path = broken_videos[kind]
    with pytest.raises(InputError, match=message) as e:
        probe(path)
    assert str(e.value).startswith(str(path))
    with pytest.raises(InputError):
        read_frames(path)


def test_one_frame_video_and_out_of_range_index(broken_videos):
    path = broken_videos["one_frame"]
    assert probe(path).frames == 1
    assert read_frames(path).shape == (1, 64, 96, 3)
    with pytest.raises(InputError, match="out of range"):
        read_frames(path, [1])


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        probe(tmp_path / "nope.mp4")


def test_bad_frames_write_nothing(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(InputError, match="uint8"):
        write_video(path, np.zeros((4, 16, 16, 3), np.float32), 24)
    frames = [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 18, 3), np.uint8)]
    with pytest.raises(InputError, match="frame 1"):
        write_video(path, frames, 24)
    with pytest.raises(InputError, match="extension"):
        write_video(tmp_path / "out.gif", np.zeros((2, 16, 16, 3), np.uint8), 24)
    assert list(tmp_path.iterdir()) == []  # no partial file, no temp file


def test_s3_roundtrip(s3_bucket, clip):
    url = st.join(s3_bucket, "videos", "c.mp4")
    write_video(url, clip, 24)
    assert st.exists(url)
    assert probe(url).frames == 40
    assert psnr(read_frames(url, [3, 30]), clip[[3, 30]]) > 30


def test_real_samples_exact_counts(sample_videos):
    for path in sample_videos:
        info = probe(path)
        with VideoReader(path) as r:
            decoded = sum(1 for _ in r._decode_sequential())
        assert info.frames == decoded, path.name
        mid = info.frames // 2
        with VideoReader(path) as r:
            full = r._read_sequential([mid], None)[mid]
            np.testing.assert_array_equal(r.read([mid])[0], full)
