"""Reading a user's video (a file PyAV decodes, or a folder of frames) and writing one.

``read_video`` returns every frame, or the frames at a chosen rate, as uint8 RGB with the
names predictions are written under (``00000``, ``00001``, ... by position in the source,
or a folder's own file names). A file that does not open, holds no video stream, breaks off
mid-stream or decodes to no frame, and a folder without readable images, raise a
:class:`~sparrow_plugin.errors.DatasetError` naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from sparrow_plugin.errors import DatasetError

__all__ = ["VideoFrames", "VideoSource", "FRAME_SUFFIXES", "probe_video", "read_video", "read_frames", "write_video"]

# a wanted frame this many frames or more past the last decoded one is reached by seeking to
# its keyframe rather than decoding every frame in between
_SEEK_GAP = 8

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class VideoFrames:
    """Decoded frames of one video.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        names: one per frame: ``%05d`` of its position in the source video, or the frame
            file's stem for a folder.
        source_indices: each frame's position among all the source's frames.
        fps: the frames' rate (the source's, or the chosen one); None for a folder.
    """

    frames: np.ndarray
    names: list[str]
    source_indices: list[int]
    fps: float | None


def read_video(path: str | Path, fps: float | None = None, progress: bool = False) -> VideoFrames:
    """Every frame of ``path`` (a video file or a folder of frames), or those at ``fps``
    frames per second (the first frame at or after each 1/fps step; a file only)."""
    path = Path(path)
    if path.is_dir():
        if fps is not None:
            raise DatasetError(path, "a folder of frames has no frame rate: read every frame (no --fps)")
        return _read_folder(path, progress)
    if not path.is_file():
        raise DatasetError(path, "video not found")
    return _read_file(path, fps, progress)


def probe_video(path: str | Path) -> None:
    """Raise the error :func:`read_video` would for a missing path, a folder without
    frames, or a file that does not open or whose first frame does not decode; quick."""
    path = Path(path)
    if path.is_dir():
        first = next((p for p in sorted(path.iterdir()) if p.suffix.lower() in FRAME_SUFFIXES), None)
        if first is None:
            raise DatasetError(path, f"no frames in the folder (expected image files: {', '.join(FRAME_SUFFIXES)})")
        return
    if not path.is_file():
        raise DatasetError(path, "video not found (a video file or a folder of frames)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(path, "holds no video stream")
            next(container.decode(container.streams.video[0]))
    except (av.error.FFmpegError, OSError, StopIteration) as error:
        raise DatasetError(path, f"not a video PyAV can decode ({error or 'no frame'})") from None


def _read_folder(folder: Path, progress: bool) -> VideoFrames:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not paths:
        raise DatasetError(folder, f"no frames in the folder (expected image files: {', '.join(FRAME_SUFFIXES)})")
    frames = []
    for path in tqdm(paths, desc="reading frames", disable=not progress):
        try:
            with Image.open(path) as image:
                frames.append(np.array(image.convert("RGB")))
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise DatasetError(path, f"not a readable image ({error})") from None
        if frames[-1].shape != frames[0].shape:
            raise DatasetError(path, f"frame of {frames[-1].shape[1]}x{frames[-1].shape[0]} pixels, the first is {frames[0].shape[1]}x{frames[0].shape[0]}")
    return VideoFrames(np.stack(frames), [p.stem for p in paths], list(range(len(paths))), None)


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """(len(indices), H, W, 3) uint8: the frames at these positions of a video file,
    decoding only what reaching them needs. For each wanted frame far from the last one
    decoded, the decoder seeks to the keyframe at or before it and decodes forward; a
    frame's position is its timestamp times the stream's frame rate. Much faster than
    decoding every frame when the wanted ones are sparse (the host's LLM frames of a long
    video, or a low ``fps``)."""
    path = Path(path)
    wanted = sorted(set(int(i) for i in indices))
    found: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate, time_base, start = Fraction(stream.average_rate or stream.guessed_rate), Fraction(stream.time_base), stream.start_time or 0
            position = None  # of the last decoded frame
            frames = None
            for target in wanted:
                if target in found:
                    continue
                if position is None or target < position or target - position >= _SEEK_GAP:
                    container.seek(start + int(target / rate / time_base), stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                for frame in frames:
                    position = round((frame.pts - start) * time_base * rate) if frame.pts is not None else (position or 0) + 1
                    if position in wanted and position not in found:
                        found[position] = frame.to_ndarray(format="rgb24")
                    if position >= target:
                        break
    except (av.error.FFmpegError, OSError, IndexError) as error:
        raise DatasetError(path, f"not a video PyAV can decode ({error})") from None
    absent = [index for index in wanted if index not in found]
    if absent:
        raise DatasetError(path, f"no frame at position(s) {', '.join(map(str, absent[:5]))} (past the end, or a variable frame rate)")
    return np.stack([found[int(i)] for i in indices])


def _read_file(path: Path, fps: float | None, progress: bool) -> VideoFrames:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise DatasetError(path, f"not a video PyAV can open ({error})") from None
    with container:
        if not container.streams.video:
            raise DatasetError(path, "holds no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if fps is not None and stream.frames and rate:  # the length is known: decode only the kept frames
            indices = _sampled_positions(stream.frames, float(rate), fps)
            return VideoFrames(read_frames(path, indices), [f"{i:05d}" for i in indices], indices, float(fps))
        frames, names, indices = [], [], []
        next_time = 0.0
        try:
            for position, frame in enumerate(tqdm(container.decode(stream), desc="decoding video", total=stream.frames or None, disable=not progress)):
                if fps is not None:
                    time = float(frame.time) if frame.time is not None else position / float(rate)
                    if time + 1e-6 < next_time:
                        continue
                    next_time += 1 / fps
                frames.append(frame.to_ndarray(format="rgb24"))
                names.append(f"{position:05d}")
                indices.append(position)
        except (av.error.FFmpegError, OSError) as error:
            raise DatasetError(path, f"the video breaks off after {len(indices)} frames ({error})") from None
    if not frames:
        raise DatasetError(path, "decodes to no frame")
    if stream.frames and fps is None and len(frames) < stream.frames:
        raise DatasetError(path, f"the video breaks off: {len(frames)} of the {stream.frames} frames its header lists decode")
    return VideoFrames(np.stack(frames), names, indices, float(fps) if fps is not None else (float(rate) if rate else None))


def _sampled_positions(count: int, rate: float, fps: float) -> list[int]:
    """The positions of the frames kept at ``fps`` of ``count`` frames at ``rate``: the
    first at or after each 1/fps step."""
    step = rate / fps
    return sorted({math.ceil(k * step - 1e-6) for k in range(math.ceil(count / step))} - {count})


class VideoSource:
    """A video's frames (a file PyAV decodes, or a folder of frames), read when asked for,
    for videos too long to hold: what :func:`read_video` returns, without the frames.

    A file is read in runs of ``chunk`` consecutive frames around the one asked for (ahead
    in the direction reading goes), each run by one seek to its keyframe, and only the last
    run is kept; so reading every frame forward (or backward) decodes each about once.
    A frame that does not decode raises the :class:`DatasetError` :func:`read_frames`
    would, when it is reached.

    Attributes:
        names, source_indices, fps: as :class:`VideoFrames`'.
        height, width: the frames' size.
    """

    def __init__(self, path: str | Path, fps: float | None = None, chunk: int = 32):
        self.path, self.chunk = Path(path), chunk
        probe_video(self.path)
        self._run: dict[int, np.ndarray] = {}
        self._last: int | None = None
        if self.path.is_dir():
            if fps is not None:
                raise DatasetError(self.path, "a folder of frames has no frame rate: read every frame (no --fps)")
            self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
            self.names, self.source_indices, self.fps = [p.stem for p in self._files], list(range(len(self._files))), None
            self.height, self.width = self._read_file_frame(0).shape[:2]
            return
        self._files = None
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or stream.guessed_rate or 0) or None
                stored = sum(1 for packet in container.demux(stream) if packet.size)  # one per frame; no decoding
                self.height, self.width = stream.codec_context.height, stream.codec_context.width
        except (av.error.FFmpegError, OSError) as error:
            raise DatasetError(self.path, f"not a video PyAV can read to its end ({error})") from None
        if stream.frames and stored < stream.frames:
            raise DatasetError(self.path, f"the video breaks off: its header lists {stream.frames} frames, the file holds {stored}")
        count = stream.frames or stored
        if fps is not None and rate is None:
            raise DatasetError(self.path, "states no frame rate, so it cannot be read at a chosen fps: read every frame (no --fps)")
        self.source_indices = _sampled_positions(count, rate, fps) if fps is not None else list(range(count))
        self.names = [f"{i:05d}" for i in self.source_indices]
        self.fps = float(fps) if fps is not None else rate

    def __len__(self) -> int:
        return len(self.names)

    def read(self, positions: list[int]) -> np.ndarray:
        """(len(positions), H, W, 3) uint8, the frames at these positions (of the kept frames)."""
        self._check(positions)
        out = []
        for position in positions:
            if position not in self._run:
                backward = self._last is not None and position < self._last
                first = max(0, position - self.chunk + 1) if backward else position
                run = list(range(first, min(first + self.chunk, len(self))))
                self._run = dict(zip(run, self._read_run(run)))
            self._last = position
            out.append(self._run[position])
        return np.stack(out)

    def read_scattered(self, positions: list[int]) -> np.ndarray:
        """:meth:`read` for a few positions far apart (the host's frames of a long video):
        each reached by a seek of its own (:func:`read_frames`), no run around it."""
        self._check(positions)
        if self._files is not None:
            return np.stack([self._read_file_frame(p) for p in positions])
        return read_frames(self.path, [self.source_indices[p] for p in positions])

    def _check(self, positions: list[int]) -> None:
        outside = [p for p in positions if not 0 <= p < len(self)]
        if outside:
            raise IndexError(f"frame {outside[0]} of a video of {len(self)} frames")

    def _read_run(self, positions: list[int]) -> list[np.ndarray]:
        if self._files is not None:
            return [self._read_file_frame(p) for p in positions]
        return list(read_frames(self.path, [self.source_indices[p] for p in positions]))

    def _read_file_frame(self, position: int) -> np.ndarray:
        path = self._files[position]
        try:
            with Image.open(path) as image:
                frame = np.array(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise DatasetError(path, f"not a readable image ({error})") from None
        if position and frame.shape[:2] != (self.height, self.width):
            raise DatasetError(path, f"frame of {frame.shape[1]}x{frame.shape[0]} pixels, the first is {self.width}x{self.height}")
        return frame


def write_video(path: str | Path, frames: np.ndarray | Iterable[np.ndarray], fps: float, keyframe_interval: int | None = None) -> Path:
    """(T, H, W, 3) uint8 RGB, or an iterable of (H, W, 3) frames (encoded as they come,
    so a long video is never held), -> an H.264 mp4 (MPEG-4 Part 2 where this FFmpeg has
    no H.264 encoder); odd sizes are padded by a pixel, as yuv420p needs even ones.
    ``keyframe_interval``: frames between keyframes (default: the encoder's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            height, width = frame.shape[:2]
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
                if keyframe_interval is not None:
                    stream.codec_context.gop_size = keyframe_interval
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return path
