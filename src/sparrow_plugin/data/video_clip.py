"""A user's own video and expressions as the model's input (``sparrow predict VIDEO "expression"``).

One sample per expression, over the same frames: every frame of the video (or those at
``fps``) for SAM2, at the decoder's size, and the host's own frames, sampled by its
:class:`~sparrow_plugin.interfaces.FrameRequest` from the whole clip. The video is decoded
once, when the first sample is read, and shared by all the expressions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sparrow_plugin.data.collate import collate_referring
from sparrow_plugin.data.mevis import normalize_expression
from sparrow_plugin.errors import ConfigError, DatasetError
from sparrow_plugin.frames import resize_frames
from sparrow_plugin.interfaces import FrameRequest
from sparrow_plugin.video_io import VideoFrames, probe_video, read_video

__all__ = ["VideoClipDataModule", "VideoClipDataset"]


class VideoClipDataset(Dataset):
    """The expressions of one video, as evaluation samples without labels."""

    def __init__(
        self, video: str | Path, expressions: list[str], fps: float | None, image_size: int, frame_request: FrameRequest | None, progress: bool = True
    ):
        self.video, self.fps, self.image_size, self.frame_request, self.progress = Path(video), fps, image_size, frame_request, progress
        self.expressions = [normalize_expression(text) for text in expressions]
        if not self.expressions or not all(self.expressions):
            raise ConfigError(f"give at least one non-empty expression for {self.video}, got {expressions!r}")
        self._decoded: tuple[VideoFrames, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.expressions)

    @property
    def decoded(self) -> tuple[VideoFrames, torch.Tensor, torch.Tensor]:
        """The video's frames, their float (T, 3, H, W) tensor and the decoder's resized
        copy, made once for all the expressions."""
        if self._decoded is None:
            video = read_video(self.video, self.fps, progress=self.progress)
            pixels = torch.from_numpy(video.frames).permute(0, 3, 1, 2).float().div_(255)
            self._decoded = video, pixels, resize_frames(pixels, (self.image_size, self.image_size))
        return self._decoded

    def __getitem__(self, index: int) -> dict:
        video, pixels, frames = self.decoded
        total, height, width = len(video.names), *video.frames.shape[1:3]
        item = {
            "frames": frames, "masks": None, "object_masks": None, "full_masks": None, "object_boxes": None,
            "object_visible": None, "has_target": None, "cond_frame": 0, "index": index,
            "frame_indices": torch.arange(total), "llm_frames": None, "llm_frame_indices": None,
            "query": self.expressions[index], "kind": "all", "video": self.video.stem, "exp_id": str(index),
            "obj_ids": [], "frame_names": list(video.names), "original_size": (height, width), "tsf_track": None,
        }
        if self.frame_request is not None:
            llm_indices = self.frame_request.sample(total)
            wanted = self.frame_request.size(height, width)
            item["llm_frames"] = resize_frames(pixels[llm_indices], wanted, self.frame_request.interpolation)
            item["llm_frame_indices"] = torch.as_tensor(llm_indices, dtype=torch.long)
        return item


class VideoClipDataModule(L.LightningDataModule):
    """``predict`` over one video file (mp4, webm, mov, ...: what PyAV decodes) or a folder
    of frames, one sample per expression.

    Args:
        video: the video file or frame folder.
        expressions: what to segment, one prediction each.
        fps: decode the frames at this rate for SAM2 (default: every frame).
        image_size: the decoder's square input size (the recipe's data ``image_size``).
    """

    def __init__(self, video: str, expressions: list[str], fps: float | None = None, image_size: int = 1024):
        super().__init__()
        self.save_hyperparameters()
        self.frame_request: FrameRequest | None = None
        self._dataset: VideoClipDataset | None = None

    @classmethod
    def missing_inputs(cls, stage: str, init_args: Mapping[str, Any]) -> list[str]:
        """A video that is not there, or that does not open, before the model loads (a
        file that breaks off mid-stream is found when it is decoded)."""
        try:
            probe_video(init_args["video"])
        except DatasetError as error:
            return [str(error)]
        return []

    def set_frame_request(self, request: FrameRequest | None) -> None:
        if request != self.frame_request:
            self.frame_request = request
            self._dataset = None

    @property
    def dataset(self) -> VideoClipDataset:
        if self._dataset is None:
            hp = self.hparams
            self._dataset = VideoClipDataset(hp.video, list(hp.expressions), hp.fps, hp.image_size, self.frame_request)
        return self._dataset

    def protocol_deviations(self, scoring: bool = True) -> list[str]:
        return []

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=1, shuffle=False, collate_fn=collate_referring)

    @property
    def video_frames(self) -> np.ndarray:
        """(T, H, W, 3) uint8, the frames the predictions are on (for the overlay video)."""
        return self.dataset.decoded[0].frames

    @property
    def video_fps(self) -> float | None:
        return self.dataset.decoded[0].fps
