"""Writing predictions: benchmark submission PNGs and overlays to look at.

``sparrow predict --config recipe.yaml --output_dir out/`` (a MaskWriter the command adds;
a recipe may name its own in ``trainer.callbacks`` instead) writes, per expression::

    out/<video>/<exp_id>/<frame>.png      0/255 masks at the original size (the MeViS and
                                          Ref-YouTube-VOS submission layout)
    out/overlays/<video>_<exp_id>.png     up to 8 frames side by side, each labelled with
                                          its frame name: the ground truth's outline above
                                          (when the split has masks), the prediction's
                                          below, in colours picked to stand out from the
                                          frames; the query and the model's answer on top
    out/answers.json                      {"<video>/<exp_id>": answer text}
    out/truncated.json                    ["<video>/<exp_id>", ...]: answers cut off by
                                          max_new_tokens (only when the model reports it)

Under multi-process prediction every rank writes the PNGs of the samples it was given
(Lightning's predict sampler does not repeat samples) and its answers to a shard,
``answers.rank<k>.json``; after a barrier rank 0 merges the shards into ``answers.json``
(and ``truncated.json``) and deletes them. ``output_dir`` must therefore be visible to
every rank (one machine, or a shared filesystem).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image, ImageDraw, ImageFont

from sparrow_plugin.errors import SparrowError

__all__ = ["OUTLINE_PALETTE", "MaskWriter", "mask_boundary", "overlay_strip", "pick_outline_colours", "shown_frames"]


class MaskWriter(BasePredictionWriter):
    """Saves every predicted mask; overlays for the first ``max_overlays`` expressions.

    Args:
        output_dir: where the PNG folders, the overlays and ``answers.json`` go (the
            layout is in this module's docstring).
        max_overlays: overlay PNGs (:func:`overlay_strip`, ground truth beside the
            prediction when the batch has ``full_masks``) to write in all (0: none);
            rank 0 writes them.
    """

    def __init__(self, output_dir: str, max_overlays: int = 16):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.max_overlays = max_overlays
        self._reset()

    def _reset(self) -> None:
        self.written_overlays = 0
        self.answers: dict[str, str] = {}
        self.truncated: list[str] = []  # keys of the answers cut off by max_new_tokens
        self.reports_truncation = False  # whether the model's records say it (older ones do not)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._reset()  # the same callback may serve several predict runs

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        """``prediction``: the model's records, one per sample of ``batch``, each with
        ``video``, ``exp_id``, ``frame_names``, ``masks`` ((T, H, W) bool or None: no [SEG]),
        ``answer`` and optionally ``truncated``; other keys are ignored."""
        writes_overlays = trainer.strategy.global_rank == 0  # one rank, so the cap holds in all
        for index, record in enumerate(prediction):
            key = f"{record['video']}/{record['exp_id']}"
            folder = self.output_dir / record["video"] / record["exp_id"]
            folder.mkdir(parents=True, exist_ok=True)
            masks = record["masks"]
            emitted_seg = masks is not None
            height, width = batch.original_sizes[index]
            if not emitted_seg:  # no [SEG]: an empty mask per frame, still written
                masks = torch.zeros(len(record["frame_names"]), height, width, dtype=torch.bool)
            for name, mask in zip(record["frame_names"], masks):
                Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(folder / f"{name}.png")
            self.answers[key] = record["answer"]
            cut_off = bool(record.get("truncated", False))
            self.reports_truncation |= "truncated" in record
            if cut_off:
                self.truncated.append(key)
            if writes_overlays and self.written_overlays < self.max_overlays:
                caption = f"{batch.queries[index]} -> {record['answer']}" + (" [cut off]" if cut_off else "")
                ground_truth = batch.full_masks[index] if batch.full_masks is not None else None
                strip = overlay_strip(
                    batch.frames[index], masks, caption,
                    ground_truth=ground_truth, frame_labels=record["frame_names"], emitted_seg=emitted_seg,
                )
                (self.output_dir / "overlays").mkdir(parents=True, exist_ok=True)
                strip.save(self.output_dir / "overlays" / f"{record['video']}_{record['exp_id']}.png")
                self.written_overlays += 1

    def on_predict_end(self, trainer, pl_module) -> None:
        strategy = trainer.strategy
        self.output_dir.mkdir(parents=True, exist_ok=True)
        truncated = self.truncated if self.reports_truncation else None
        self._shard(strategy.global_rank).write_text(json.dumps({"answers": self.answers, "truncated": truncated}))
        strategy.barrier()  # every rank's shard is on disk before rank 0 reads them
        if strategy.global_rank == 0:
            self._merge_shards(getattr(strategy, "world_size", 1))  # a single-device strategy has none

    def _shard(self, rank: int) -> Path:
        return self.output_dir / f"answers.rank{rank}.json"

    def _merge_shards(self, world_size: int) -> None:
        """Rank 0: ``answers.rank<k>.json`` for k < world_size -> answers.json (+ truncated.json)."""
        shards = [self._shard(rank) for rank in range(world_size)]
        absent = [str(shard) for shard in shards if not shard.is_file()]
        if absent:
            raise SparrowError(
                f"MaskWriter: answer shards of other ranks not found: {', '.join(absent)}; "
                "output_dir must be a folder every rank can see (one machine or a shared filesystem)"
            )
        contents = [json.loads(shard.read_text()) for shard in shards]
        answers = {key: text for content in contents for key, text in content["answers"].items()}
        (self.output_dir / "answers.json").write_text(json.dumps(answers, indent=1, sort_keys=True))
        reported = [content["truncated"] for content in contents if content["truncated"] is not None]
        truncated_file = self.output_dir / "truncated.json"
        if reported:
            truncated_file.write_text(json.dumps(sorted({key for keys in reported for key in keys}), indent=1))
        else:
            truncated_file.unlink(missing_ok=True)  # a previous run's list would describe another model
        for shard in shards:
            shard.unlink()


# Outline colours: strong and far apart (every pair at least 191 apart in RGB, cyan and blue
# the closest), so whichever two are picked also stay distinguishable from each other.
OUTLINE_PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "lime": (0, 255, 0),
    "yellow": (255, 255, 0),
    "blue": (0, 64, 255),
}
_OUTLINE_WIDTH = 2  # px at the tile size: thin enough to leave the object visible
_FILL_OPACITY = 0.2  # a light wash that tells inside from outside; the outline is what shows
_NEAR_BOUNDARY = 3  # px either side of an outline whose frame pixels the colour must stand out from
_BAND = (16, 16, 16)  # text sits on dark bands, never on the frame, so it reads on any video
_TEXT = (235, 235, 235)
_GAP = 2  # px of band between tiles and between rows
_PADDING = 4
_FONT_SIZE = 14
_ROW_LABELS = {
    "ground_truth": "ground truth",
    "ground_truth_empty": "ground truth: no target",
    "predicted": "prediction",
    "predicted_empty": "prediction: empty mask",
    "no_seg": "prediction: no [SEG]",
}


def shown_frames(num_frames: int, max_frames: int) -> list[int]:
    """Indices of the at most ``max_frames`` frames an overlay shows, evenly spaced over
    the clip and including its first and last frame."""
    if num_frames < 1 or max_frames < 1:
        raise SparrowError(f"overlay: need at least one frame to show, got num_frames={num_frames}, max_frames={max_frames}")
    if num_frames <= max_frames:
        return list(range(num_frames))
    return np.linspace(0, num_frames - 1, max_frames).round().astype(int).tolist()


def mask_boundary(masks: torch.Tensor, width: int = _OUTLINE_WIDTH) -> torch.Tensor:
    """(N, H, W) bool -> (N, H, W) bool: the mask pixels within ``width`` px of a pixel
    outside the mask. The frame's edge counts as outside, so a mask that fills the frame
    still shows an outline."""
    outside = F.pad((~masks).float()[:, None], (width,) * 4, value=1.0)
    near_outside = F.max_pool2d(outside, kernel_size=2 * width + 1, stride=1)[:, 0] > 0
    return masks & near_outside


def pick_outline_colours(pixels: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """The ``count`` colours of :data:`OUTLINE_PALETTE` farthest from ``pixels`` (N, 3) in
    0..255, best first: ranked by mean Euclidean RGB distance, ties by palette order, so
    the same pixels always give the same colours. No pixels: palette order."""
    palette = np.array(list(OUTLINE_PALETTE.values()), dtype=np.float32)
    if count > len(palette):
        raise SparrowError(f"overlay: {count} outline colours asked for, the palette has {len(palette)}")
    pixels = np.asarray(pixels, dtype=np.float32).reshape(-1, 3)
    if len(pixels):
        mean_distance = np.stack([np.linalg.norm(pixels - colour, axis=1).mean() for colour in palette])
    else:
        mean_distance = np.zeros(len(palette))
    order = sorted(range(len(palette)), key=lambda i: (-mean_distance[i], i))
    return [tuple(int(c) for c in palette[i]) for i in order[:count]]


def outline_tile(tile: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """``tile`` (H, W, 3) uint8 with ``mask`` (H, W) bool drawn on it: a light wash of
    ``colour`` inside, the boundary (:func:`mask_boundary`) in ``colour``; pixels outside
    the mask are left as they are."""
    mask_tensor = torch.as_tensor(mask, dtype=torch.bool)[None]
    boundary = mask_boundary(mask_tensor)[0].numpy()
    interior = mask & ~boundary
    drawn = tile.astype(np.float32)
    colour_array = np.array(colour, dtype=np.float32)
    drawn[interior] = drawn[interior] * (1 - _FILL_OPACITY) + colour_array * _FILL_OPACITY
    drawn[boundary] = colour_array
    return drawn.round().clip(0, 255).astype(np.uint8)


def overlay_strip(
    frames: torch.Tensor,
    predicted: torch.Tensor,
    caption: str,
    ground_truth: torch.Tensor | None = None,
    frame_labels: list[str] | None = None,
    max_frames: int = 8,
    emitted_seg: bool = True,
    tile_height: int = 240,
) -> Image.Image:
    """A picture of one expression's prediction, to look at.

    Args:
        frames: (T, 3, S, S) float in [0, 1], the clip's frames (any size; they are shown
            at the masks' aspect ratio).
        predicted: (T, H, W) bool, the predicted mask at the original size (all False
            when the model emitted no [SEG]: say so with ``emitted_seg``).
        caption: drawn above the tiles, wrapped to the picture's width (the query and
            the model's answer).
        ground_truth: (T, H, W) bool, or None (a split without masks: one row only).
        frame_labels: T names of the frames in the clip (default: their positions
            0..T-1); each tile is labelled with the frame it shows.
        max_frames: tiles per row at most, evenly spaced over the clip (:func:`shown_frames`).
        emitted_seg: False labels the prediction row "no [SEG]".
        tile_height: px; tiles keep the masks' H:W aspect ratio.

    Returns:
        An RGB image: the caption band, a band of frame labels, then a row per mask
        (ground truth above the prediction), each with its label and colour on the left.
        Masks are outlined in colours picked from :data:`OUTLINE_PALETTE` against the frame
        pixels near the outlines of the whole picture (:func:`pick_outline_colours`): the
        best for the prediction, the next for the ground truth, the same on every tile.
    """
    num_frames, height, width = predicted.shape
    if len(frames) != num_frames or (ground_truth is not None and ground_truth.shape != predicted.shape):
        got = None if ground_truth is None else tuple(ground_truth.shape)
        raise SparrowError(
            f"overlay: frames, predicted and ground_truth must cover the same T frames at one size; "
            f"got frames {tuple(frames.shape)}, predicted {tuple(predicted.shape)}, ground_truth {got}"
        )
    if frame_labels is not None and len(frame_labels) != num_frames:
        raise SparrowError(f"overlay: {len(frame_labels)} frame labels for {num_frames} frames")
    shown = shown_frames(num_frames, max_frames)
    tile_size = (tile_height, max(1, round(tile_height * width / height)))
    tiles = _resize_frames(frames[shown], tile_size)  # (N, h, w, 3) uint8

    rows: list[tuple[str, torch.Tensor]] = []  # (label, (N, h, w) bool), top to bottom
    if ground_truth is not None:
        gt = ground_truth.bool().cpu()
        label = _ROW_LABELS["ground_truth"] if gt.any() else _ROW_LABELS["ground_truth_empty"]
        rows.append((label, _resize_masks(gt[shown], tile_size)))
    if not emitted_seg:
        predicted_label = _ROW_LABELS["no_seg"]
    else:
        predicted_label = _ROW_LABELS["predicted"] if predicted.any() else _ROW_LABELS["predicted_empty"]
    rows.append((predicted_label, _resize_masks(predicted.bool().cpu()[shown], tile_size)))

    near_outlines = torch.zeros(tiles.shape[:3], dtype=torch.bool)
    for _, masks in rows:
        near_outlines |= _dilate(mask_boundary(masks), _NEAR_BOUNDARY)
    # every tile of the picture uses one colour per row, chosen against all of them
    candidates = tiles[near_outlines.numpy()] if near_outlines.any() else tiles.reshape(-1, 3)
    colours = pick_outline_colours(candidates, len(rows))
    colours = colours[::-1] if len(rows) == 2 else colours  # the best one for the prediction (bottom row)

    font = _font()
    labels = [str(i) for i in range(num_frames)] if frame_labels is None else [str(name) for name in frame_labels]
    line_height = _FONT_SIZE + 4
    swatch = _FONT_SIZE
    # wide enough for any row label, so pictures of one clip line up whatever their labels
    label_column = _PADDING + swatch + _PADDING + max(round(font.getlength(label)) for label in _ROW_LABELS.values()) + _PADDING
    strip_width = label_column + len(shown) * (tile_size[1] + _GAP)
    caption_lines = _wrap(caption, font, strip_width - 2 * _PADDING)
    caption_height = len(caption_lines) * line_height + 2 * _PADDING
    tiles_top = caption_height + line_height + _GAP  # below the caption and the frame labels
    canvas = Image.new("RGB", (strip_width, tiles_top + len(rows) * (tile_size[0] + _GAP)), _BAND)
    draw = ImageDraw.Draw(canvas)
    for line_index, line in enumerate(caption_lines):
        draw.text((_PADDING, _PADDING + line_index * line_height), line, fill=_TEXT, font=font)
    for column, frame_index in enumerate(shown):
        left = label_column + column * (tile_size[1] + _GAP)
        text = f"frame {labels[frame_index]}"
        if font.getlength(text) > tile_size[1] - _PADDING:
            text = labels[frame_index]  # narrow tiles: the name alone
        draw.text((left + _PADDING, caption_height), text, fill=_TEXT, font=font)
    for row_index, ((label, masks), colour) in enumerate(zip(rows, colours)):
        top = tiles_top + row_index * (tile_size[0] + _GAP)
        swatch_box = (_PADDING, top + _PADDING, _PADDING + swatch, top + _PADDING + swatch)
        draw.rectangle(swatch_box, fill=colour, outline=(128, 128, 128))  # grey edge: black and white swatches show too
        draw.text((2 * _PADDING + swatch, top + _PADDING), label, fill=_TEXT, font=font)
        for column, (tile, mask) in enumerate(zip(tiles, masks.numpy())):
            drawn = outline_tile(tile, mask, colour)
            canvas.paste(Image.fromarray(drawn), (label_column + column * (tile_size[1] + _GAP), top))
    return canvas


def _resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, 3, S, S) float in [0, 1], on any device -> (N, h, w, 3) uint8."""
    resized = F.interpolate(frames.detach().float().cpu(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return (resized.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool -> (N, h, w) bool. Shrinking keeps every object that covers any
    pixel of a tile pixel, so a small target does not vanish from the picture."""
    as_float = masks.float()[:, None]
    if size[0] < masks.shape[-2] or size[1] < masks.shape[-1]:
        return F.adaptive_max_pool2d(as_float, size)[:, 0] > 0
    return F.interpolate(as_float, size=size, mode="nearest-exact")[:, 0] > 0


def _dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, H, W) bool -> (N, H, W) bool, grown by ``radius`` px."""
    return F.max_pool2d(masks.float()[:, None], kernel_size=2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except (ImportError, OSError, TypeError):  # Pillow < 10.1 or without FreeType: the small bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` px, broken at spaces (inside a word only
    when the word alone is wider)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:
                cut = 1  # at least one character per line, however narrow
                while cut < len(word) and font.getlength(word[: cut + 1]) <= width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines
