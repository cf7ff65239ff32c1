"""SAM2 image features of a long video, computed when first read and kept for a few frames.

:class:`StreamedImageFeatures` stands in for the :class:`~sparrow_plugin.interfaces.ImageFeatures`
that :meth:`SAM2VideoDecoder.encode` computes for a whole clip at once: the decoder, the
proposer and the filtration head read it the same way, but a frame is encoded only when
something reads it, and only the most recently read ``cache_frames`` frames are kept
(optionally on another device, e.g. the CPU beside a GPU). Tracking reads frames in order,
so each frame is encoded once per tracking pass; with the frames read on demand too
(:class:`~sparrow_plugin.video_io.VideoSource`), a video of any length runs in bounded memory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from sparrow_plugin.interfaces import ImageFeatures

__all__ = ["StreamedImageFeatures"]

# frames encoded together when a read misses: fills SAM2's image encoder a little better
# than one at a time, and a tracking pass reads the next ones right after
_ENCODE_AHEAD = 4


class StreamedImageFeatures(ImageFeatures):
    """SAM2 features of one video's frames, encoded on demand.

    Args:
        decoder: the :class:`~sparrow_plugin.decoder.SAM2VideoDecoder` whose image encoder
            computes them.
        read: ``read(positions) -> (n, 3, S, S)`` float frames in [0, 1] at the decoder's
            size, on the decoder's device.
        num_frames: the video's length.
        cache_frames: how many frames' features are kept (at least ``chunk_frames`` and
            the few encoded ahead).
        storage: where kept features live (default: the decoder's device); ``"cpu"``
            offloads them from a GPU, moving each back when read.
        chunk_frames: frames decoded at once in the decoder's ``per_frame`` mode.
    """

    def __init__(
        self,
        decoder,
        read: Callable[[list[int]], torch.Tensor],
        num_frames: int,
        cache_frames: int = 16,
        storage: str | torch.device | None = None,
        chunk_frames: int = 8,
    ):
        if num_frames < 1:
            raise ValueError("a video of no frames has no features")
        self.decoder, self.read = decoder, read
        self.device = decoder.pixel_mean.device
        self.storage = torch.device(storage) if storage is not None else self.device
        self.cache_frames, self.chunk_frames = max(cache_frames, chunk_frames + _ENCODE_AHEAD), chunk_frames
        self.rows = torch.arange(num_frames, device=self.device)[None]  # one clip: row = frame
        self.images = None
        self._sizes: list[tuple[int, int]] | None = None
        self._kept: OrderedDict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = OrderedDict()
        self._last_miss: int | None = None
        self.encoded = 0  # frames encoded so far (a frame read again after it left the cache counts again)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        if self._sizes is None:
            self._encode([0])
        return self._sizes

    @property
    def kept_frames(self) -> list[int]:
        """The frames whose features are held now, least recently read first."""
        return list(self._kept)

    def select(self, rows: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        wanted = [int(r) for r in rows.reshape(-1).tolist()]
        if len(set(wanted)) > self.cache_frames - _ENCODE_AHEAD:
            raise ValueError(f"{len(set(wanted))} frames read at once, more than the {self.cache_frames - _ENCODE_AHEAD} this cache serves")
        for r in wanted:  # most recent: what is encoded now must not push them out
            if r in self._kept:
                self._kept.move_to_end(r)
        missing = [r for r in dict.fromkeys(wanted) if r not in self._kept]
        if missing:
            self._encode(self._with_frames_ahead(missing))
        levels = len(self._kept[wanted[0]][0])
        features = [torch.stack([self._kept[r][0][level] for r in wanted], dim=1).to(self.device) for level in range(levels)]
        positions = [torch.stack([self._kept[r][1][level] for r in wanted], dim=1).to(self.device) for level in range(levels)]
        return features, positions

    def maps(self, level: int = -1) -> torch.Tensor:
        raise NotImplementedError("features computed on demand have no maps of every frame: read frame_maps(level, rows)")

    def frame_maps(self, level: int, rows: torch.Tensor) -> torch.Tensor:
        height, width = self.sizes[level]
        features = self.select(rows)[0][level]
        return features.permute(1, 2, 0).reshape(-1, features.shape[-1], height, width)

    def frames(self, clips: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        return self.read([int(f) for f in frame_ids.tolist()])

    def _with_frames_ahead(self, missing: list[int]) -> list[int]:
        """The missing frames, and for a single one the next few in the direction reading
        goes (forward, or backward after a miss before the last one)."""
        if len(missing) != 1:
            return missing
        frame, last = missing[0], self._last_miss
        self._last_miss = frame
        step = -1 if last is not None and frame < last else 1
        ahead = [frame + k * step for k in range(_ENCODE_AHEAD)]
        return [f for f in ahead if 0 <= f < self.num_frames and (f == frame or f not in self._kept)]

    @torch.no_grad()
    def _encode(self, frames: list[int]) -> None:
        levels, positions, sizes = self.decoder.sam.encode_frames(self.decoder.normalise(self.read(frames)))
        self._sizes = sizes
        for k, frame in enumerate(frames):
            self._kept[frame] = ([f[:, k].to(self.storage) for f in levels], [p[:, k].to(self.storage) for p in positions])
            self._kept.move_to_end(frame)
        self.encoded += len(frames)
        while len(self._kept) > self.cache_frames:
            self._kept.popitem(last=False)
