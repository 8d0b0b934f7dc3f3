"""Video decode/encode through PyAV: exact frame counts, seek-based frame sampling, atomic H.264 writes.

Frames are numpy uint8 `(T, H, W, 3)` RGB. Paths may be local or s3:// (remote reads stream through
ranged GETs; writes go through `gvr.io.sio.atomic_local`). Anything PyAV cannot make sense of
(a zero-byte file, a truncated mp4, text named .mp4, a stream with undecodable frames) raises
`InputError("<path>: <what is wrong>")`.

Frame counts are exact: containers often report 0 or an estimate (AVI indexes count dropped frames,
WebM has no count), so `probe` demuxes the whole stream (cheap: no decoding) and counts the
non-empty packets, one per frame for video codecs. That packet index (presentation timestamps and
keyframes) lets `read_frames` seek to the keyframe before each wanted frame instead of decoding
everything before it; if a container's timestamps do not support that, it falls back to decoding
from the start, which is always correct.

Not handled: rotation metadata (phone videos are returned as stored, not as displayed) and
interlacing (fields are returned as decoded).
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from gvr.config import StorageParams
from gvr.errors import InputError, StorageError
from gvr.io import storage as sio

# Containers whose sample tables record the exact frame count: fewer packets than that means the
# file was cut short (only the mov family; AVI indexes also count dropped frames).
_EXACT_COUNT_FORMATS = ("mov", "mp4", "m4a", "3gp")
# Containers whose packet timestamps are true presentation times. AVI stores decode-order times
# (and DivX "packed" B-frames), so there frame k is only known by decoding from the start.
_SEEKABLE_FORMATS = ("mov", "mp4", "m4a", "3gp", "matroska", "webm")


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` finds: exact frame count, nominal fps, frame size, duration and codec."""

    path: str
    frames: int
    fps: float
    width: int
    height: int
    duration_s: float
    codec: str


def uniform_indices(total: int, n: int) -> list[int]:
    """`n` frame indices spread uniformly over `total` frames (segment centres); all frames if n >= total.

    Centres rather than endpoints: the first and last frames are the likeliest to be fades.
    """
    if total <= 0 or n <= 0:
        return []
    if n >= total:
        return list(range(total))
    return [int((i + 0.5) * total / n) for i in range(n)]


class _Fallback(Exception):
    """Timestamps do not support seeking: decode from the start instead."""


class VideoReader:
    """One open video: `info` (exact count from a packet scan) and `read(indices)` of frames.

    Use as a context manager; `probe` and `read_frames` are one-call wrappers.
    """

    def __init__(self, path: str | os.PathLike, storage: StorageParams | None = None):
        self.path = os.fspath(path)
        self._storage = storage
        self._container = None
        self._file = None
        self._info: VideoInfo | None = None
        self._pts: list[int] = []  # presentation timestamps in display order, one per frame
        self._seek_ts: dict[int, int] = {}  # display index of each keyframe -> timestamp to seek to
        self._keyframes: list[int] = []  # display indices of keyframes, sorted
        self._index_of: dict[int, int] = {}  # pts -> display index
        self._open()

    # ------------------------------------------------------------------ opening and scanning

    def _fail(self, what: str) -> InputError:
        return InputError(f"{self.path}: {what}")

    def _open(self) -> None:
        import av

        if not sio.is_remote(self.path):
            try:
                if os.path.getsize(self.path) == 0:
                    raise self._fail("empty file (0 bytes)")
            except FileNotFoundError:
                raise InputError(f"{self.path}: not found") from None
        try:
            if sio.is_remote(self.path):
                self._file = self._file or sio.open_read(self.path, self._storage)
                self._file.seek(0)
                self._container = av.open(self._file, "r")
            else:
                self._container = av.open(self.path, "r")
        except StorageError:
            raise
        except (av.FFmpegError, OSError, ValueError) as e:
            self.close()
            raise self._fail(f"not a readable video ({_why(e)})") from None
        if not self._container.streams.video:
            self.close()
            raise self._fail("no video stream")
        self._stream = self._container.streams.video[0]
        self._used = False  # nothing demuxed from this container yet
        self._stream.thread_type = "AUTO"  # frame + slice threads: decoding is the cost

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the container (and the remote file handle)."""
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def info(self) -> VideoInfo:
        """Exact frame count and stream facts (scans packets on first use; decodes one frame)."""
        if self._info is None:
            self._info = self._scan()
        return self._info

    def _scan(self) -> VideoInfo:
        import av

        if self._used:  # the scan needs every packet from the start
            self._container.close()
            self._open()
        self._used = True
        s = self._stream
        # 1. demux every packet of the stream: one non-empty packet per frame
        packets = []  # (pts, dts, keyframe)
        try:
            for p in self._container.demux(s):
                if p.size > 0 and not p.is_discard:
                    packets.append((p.pts, p.dts, p.is_keyframe))
        except av.FFmpegError as e:
            raise self._fail(f"corrupt or truncated container ({_why(e)})") from None
        if not packets:
            raise self._fail("no video frames")
        fmt = self._container.format.name.split(",")
        if s.frames > len(packets) and any(f in _EXACT_COUNT_FORMATS for f in fmt):
            raise self._fail(f"truncated: the container lists {s.frames} frames but only "
                             f"{len(packets)} are present")

        # 2. display order index for seeking (true, distinct presentation timestamps only)
        seekable = any(f in _SEEKABLE_FORMATS for f in fmt)
        if seekable and all(p[0] is not None for p in packets) and len({p[0] for p in packets}) == len(packets):
            order = sorted(range(len(packets)), key=lambda i: packets[i][0])
            self._pts = [packets[i][0] for i in order]
            self._index_of = {pts: i for i, pts in enumerate(self._pts)}
            for display, i in enumerate(order):
                pts, dts, key = packets[i]
                if key:
                    self._keyframes.append(display)
                    # dts <= pts: a backward seek to it lands on this keyframe or an earlier one
                    self._seek_ts[display] = min(pts, dts) if dts is not None else pts

        fps = float(s.average_rate or s.guessed_rate or 0) or _fps_from_duration(s, len(packets))
        codec = s.codec_context.name

        # 3. decode the first frame: proves the codec is supported and gives the true frame size
        first = next(self._decode_sequential(), None)  # reopens: `s` is stale from here on
        if first is None:
            raise self._fail("no decodable frames")
        return VideoInfo(self.path, len(packets), fps, first.width, first.height,
                         len(packets) / fps if fps else 0.0, codec)

    # ------------------------------------------------------------------ decoding

    def _decode_sequential(self) -> Iterator:
        """Frames from the start of the stream, in display order (on a freshly opened container)."""
        import av

        # Reopening rather than seeking to 0: always correct, whatever the timestamps look like.
        self._container.close()
        self._open()
        self._used = True
        try:
            yield from self._container.decode(self._stream)
        except av.FFmpegError as e:
            raise self._fail(f"corrupt video data ({_why(e)})") from None

    def _decode_from(self, keyframe: int) -> Iterator[tuple[int, object]]:
        """(display index, frame) pairs after seeking to the keyframe at display index `keyframe`."""
        import av

        self._container.seek(self._seek_ts[keyframe], stream=self._stream, backward=True)
        self._used = True
        try:
            for frame in self._container.decode(self._stream):
                idx = self._index_of.get(frame.pts)
                if idx is None:
                    raise _Fallback
                yield idx, frame
        except av.FFmpegError as e:
            raise self._fail(f"corrupt video data ({_why(e)})") from None

    def read(self, indices: Sequence[int] | None = None, *, size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames at `indices` (all when None) as uint8 (N, H, W, 3) RGB, resized to `size`=(H, W) if given.

        Indices may repeat and come in any order; the output follows them.
        """
        n = self.info.frames
        wanted = list(range(n)) if indices is None else [int(i) for i in indices]
        bad = [i for i in wanted if not 0 <= i < n]
        if bad:
            raise self._fail(f"frame index {bad[0]} out of range (the video has {n} frames)")
        if not wanted:
            h, w = size or (self.info.height, self.info.width)
            return np.zeros((0, h, w, 3), np.uint8)
        targets = sorted(set(wanted))
        got = None
        if self._pts and len(targets) < n:
            with contextlib.suppress(_Fallback):
                got = self._read_seeking(targets, size)
        if got is None:
            got = self._read_sequential(targets, size)
        return np.stack([got[i] for i in wanted])

    def _read_seeking(self, targets: list[int], size) -> dict[int, np.ndarray]:
        got, it, pos = {}, None, -1
        for t in targets:
            key = self._keyframes[max(0, bisect.bisect_right(self._keyframes, t) - 1)]
            if it is None or pos >= t or key > pos:  # behind us, or a keyframe skips the gap
                it, pos = self._decode_from(key), -1
            for idx, frame in it:
                if pos >= 0 and idx != pos + 1:
                    raise _Fallback  # output order is not timestamp order: trust only a full decode
                pos = idx
                if idx == t:
                    got[t] = _to_rgb(frame, size)
                if idx >= t:
                    break
            if t not in got:
                raise _Fallback  # the seek overshot or the stream ended early
        return got

    def _read_sequential(self, targets: list[int], size) -> dict[int, np.ndarray]:
        wanted, got, decoded = set(targets), {}, 0
        for idx, frame in enumerate(self._decode_sequential()):
            decoded = idx + 1
            if idx in wanted:
                got[idx] = _to_rgb(frame, size)
            if idx >= targets[-1]:
                break
        if len(got) < len(wanted):
            raise self._fail(f"frame {min(wanted - set(got))} could not be decoded (only {decoded} "
                             f"of {self.info.frames} frames decode)")
        return got


def _to_rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    if size is None or tuple(size) == rgb.shape[:2]:
        return rgb
    import cv2

    # Resized in RGB after colour conversion (not by swscale in YUV), so the result equals
    # cv2.resize of the full frame: AREA averages when shrinking (no aliasing), bilinear-like when enlarging.
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _fps_from_duration(stream, frames: int) -> float:
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
        return frames / seconds if seconds > 0 else 0.0
    return 0.0


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def probe(path: str | os.PathLike, storage: StorageParams | None = None) -> VideoInfo:
    """Exact frame count, fps, size, duration and codec of a video."""
    with VideoReader(path, storage) as r:
        return r.info


def read_frames(path: str | os.PathLike, indices: Sequence[int] | None = None, *,
                size: tuple[int, int] | None = None, storage: StorageParams | None = None) -> np.ndarray:
    """Decode frames `indices` (all when None) as uint8 (N, H, W, 3) RGB, optionally resized to (H, W)."""
    with VideoReader(path, storage) as r:
        return r.read(indices, size=size)


# ---------------------------------------------------------------------------------- writing

_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: float, *,
                crf: int = 18, preset: str = "medium", keyframe_interval: int | None = None,
                storage: StorageParams | None = None) -> None:
    """Encode uint8 RGB frames as a playable H.264 video (yuv420p, BT.709), atomically.

    Args:
        path: destination .mp4 / .mov / .mkv, local or s3://; appears only once complete.
        frames: uint8 array (T, H, W, 3) or an iterable of (H, W, 3) frames (streamed, for long clips).
        fps: frame rate; fractional rates such as 30000/1001 are kept exactly.
        crf: x264 constant rate factor (0 = lossless luma, 18 = visually lossless, 23 = x264 default).
        preset: x264 speed/size trade-off (ultrafast ... veryslow).
        keyframe_interval: at most this many frames between keyframes (None: x264's 250); shorter
            makes random access (`read_frames` of a few frames) cheaper and files larger.

    4:2:0 needs even sizes: an odd height or width is padded by repeating the last row or column,
    so the stored video is at most one pixel larger and crops back to the input exactly.
    """
    import av

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _CONTAINERS:
        raise InputError(f"{path}: unsupported video extension {ext!r} (use one of {sorted(_CONTAINERS)})")
    if not fps or fps <= 0 or not np.isfinite(fps):
        raise InputError(f"{path}: fps must be a positive number, got {fps!r}")
    if not 0 <= crf <= 51:
        raise InputError(f"{path}: crf must be in [0, 51], got {crf}")
    rate = Fraction(fps).limit_denominator(1001)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise InputError(f"{path}: no frames to write")
    h, w = _check_frame(path, first, 0).shape[:2]
    with sio.atomic_local(path, storage) as tmp:
        options = {"movflags": "+faststart"} if ext in (".mp4", ".mov") else {}
        with av.open(tmp, "w", format=_CONTAINERS[ext], options=options) as out:
            s = out.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            s.options = {"crf": str(crf), "preset": preset}
            if keyframe_interval:
                s.codec_context.gop_size = keyframe_interval
            cc = s.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709, tagged so players agree
            cc.color_range = 1  # limited ("TV") range, what players assume for H.264
            for i, frame in enumerate(_chain(first, it)):
                frame = _check_frame(path, frame, i)
                if frame.shape[:2] != (h, w):
                    raise InputError(f"{path}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"frame 0 was {w}x{h}")
                if h % 2 or w % 2:
                    frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                vf = vf.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)
                out.mux(s.encode(vf))
            out.mux(s.encode(None))


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _check_frame(path: str, frame: np.ndarray, i: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        if frame.ndim == 4 and i == 0:
            raise InputError(f"{path}: pass frames as (T, H, W, 3) uint8 or an iterable of (H, W, 3)")
        raise InputError(f"{path}: frame {i} must be uint8 (H, W, 3) RGB, got {frame.dtype} {frame.shape}")
    return frame


# ---------------------------------------------------------------------------------- tensors


def to_tensor(frames: np.ndarray):
    """uint8 (T, H, W, 3) RGB frames -> float tensor (1, 3, T, H, W) in [-1, 1] (the codecs' input)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)[None]


def to_frames(video) -> np.ndarray:
    """A video tensor (3, T, H, W) or (1, 3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3) RGB frames."""
    if video.ndim == 5:
        video = video[0]
    x = video.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte()
    return x.permute(1, 2, 3, 0).cpu().numpy()
