"""Reading a user's video (a file PyAV decodes, or a folder of frames) and writing one.

``read_video`` returns every frame, or the frames at a chosen rate, as uint8 RGB with the
names predictions are written under (``00000``, ``00001``, ... by position in the source,
or a folder's own file names). A file that does not open, holds no video stream, breaks off
mid-stream or decodes to no frame, and a folder without readable images, raise a
:class:`~sparrow_plugin.errors.DatasetError` naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from sparrow_plugin.errors import DatasetError

__all__ = ["VideoFrames", "FRAME_SUFFIXES", "probe_video", "read_video", "read_frames", "write_video"]

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
            step = float(rate) / fps
            indices = sorted({math.ceil(k * step - 1e-6) for k in range(math.ceil(stream.frames / step))} - {stream.frames})
            indices = [i for i in indices if i < stream.frames]
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


def write_video(path: str | Path, frames: np.ndarray, fps: float, keyframe_interval: int | None = None) -> Path:
    """(T, H, W, 3) uint8 RGB -> an H.264 mp4 (MPEG-4 Part 2 where this FFmpeg has no
    H.264 encoder); odd sizes are padded by a pixel, as yuv420p needs even ones.
    ``keyframe_interval``: frames between keyframes (default: the encoder's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    padded = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
        for frame in padded:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
