"""The detector of TSF's detect + track source: GroundingDINO, through transformers.

The paper finds the queried target with GroundingDINO on a frame and follows it with a
tracker (:mod:`sparrow_plugin.tsf.trackers`). The model and its processor come from a local
folder (``save_pretrained`` of ``IDEA-Research/grounding-dino-*``, or any model that
transformers' zero-shot object detection classes load); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

from sparrow_plugin.errors import CheckpointError

__all__ = ["GroundingDinoDetector"]


class GroundingDinoDetector:
    """Text-conditioned boxes on single frames.

    Args:
        path: a folder with the model and its processor.
        box_threshold, text_threshold: GroundingDINO's two thresholds (its defaults).
        device: where the model runs.
    """

    def __init__(self, path: str | Path, box_threshold: float = 0.35, text_threshold: float = 0.25, device: str | torch.device = "cpu"):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise CheckpointError(path, "no detector here: save a GroundingDINO model and its processor there (save_pretrained) first")
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True).to(device).eval()
        self.box_threshold, self.text_threshold, self.device = box_threshold, text_threshold, device

    @torch.no_grad()
    def detect(self, image: torch.Tensor, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 4) normalised xyxy boxes of ``text`` on one (3, H, W) float RGB frame in [0, 1],
        and their (M,) scores, most confident first."""
        height, width = image.shape[-2:]
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        query = text.strip().lower().rstrip(".") + "."  # GroundingDINO's phrase format
        inputs = self.processor(images=pixels, text=query, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold, target_sizes=[(height, width)]
        )[0]
        boxes = result["boxes"].float().cpu() / torch.tensor([width, height, width, height])
        scores = result["scores"].float().cpu()
        order = scores.argsort(descending=True)
        return boxes[order].clamp(0, 1), scores[order]
