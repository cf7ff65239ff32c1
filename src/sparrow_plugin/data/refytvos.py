"""Ref-YouTube-VOS-layout referring video segmentation data (Ref-YouTube-VOS, Ref-DAVIS17).

Reads the layout as shipped (``docs/data_formats.md``)::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/Annotations/<video>/<frame>.png     (palette PNGs, pixel = object id;
                                                        train only for Ref-YouTube-VOS)
    <root>/meta_expressions/<split>/meta_expressions.json

``meta_expressions.json`` is ``{"videos": {<video>: {"frames": [...], "expressions":
{<exp_id>: {"exp": str, "obj_id": str}}}}}``: one object per expression, whose mask in a
frame is where the frame's annotation PNG holds its id. Ref-DAVIS17 is read in the same
layout after the standard conversion of the DAVIS 2017 release (as ReferFormer's and the
SPARROW authors' scripts read it); its four annotator sets are four expressions per object,
listed ``obj * 4 + set`` (:func:`ref_davis17_expression_sets`).

Items are those of :class:`~sparrow_plugin.data.mevis.MeViSDataset`, so the data module,
the model and ``sparrow test`` / ``predict`` take either layout.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sparrow_plugin.data.mevis import MeViSDataset, ReferringExpression, normalised_boxes, normalize_expression, read_json
from sparrow_plugin.errors import DatasetError

__all__ = ["RefYouTubeVOSDataset", "ref_davis17_expression_sets"]

_ANNOTATOR_SETS = 4  # Ref-DAVIS17: first-frame and full-video expressions of two annotators


class RefYouTubeVOSDataset(MeViSDataset):
    """Referring expressions over videos in the Ref-YouTube-VOS layout.

    Takes :class:`~sparrow_plugin.data.mevis.MeViSDataset`'s arguments. A split with an
    ``Annotations`` folder has masks (every listed frame must have its PNG); one without
    (Ref-YouTube-VOS ``valid``, ``test``) is scored by the benchmark's server.
    """

    @classmethod
    def layout_paths(cls, root: Path, split: str) -> dict[str, Path]:
        return {
            "frames": root / split / "JPEGImages",
            "expressions": root / "meta_expressions" / split / "meta_expressions.json",
            "masks": root / split / "Annotations",
        }

    def _read_annotations(self):
        return None  # masks are PNGs, read per frame

    @property
    def has_masks(self) -> bool:
        return self.mask_path.is_dir()

    def _read_expression(self, video: str, exp_id: str, raw, frames: tuple[str, ...]) -> ReferringExpression:
        where = f"video {video!r} expression {exp_id!r}"
        if not isinstance(raw, dict) or "obj_id" not in raw:
            raise DatasetError(self.meta_path, f"{where}: expected an object with 'exp' and 'obj_id'")
        text = normalize_expression(str(raw.get("exp") or ""))
        if not text:
            raise DatasetError(self.meta_path, f"{where}: empty expression text")
        try:
            obj_id = int(raw["obj_id"])
        except (TypeError, ValueError):
            raise DatasetError(self.meta_path, f"{where}: obj_id must be an object id (an integer, as text), got {raw['obj_id']!r}") from None
        if self.has_masks and self.require_frames:
            for name in frames:
                if not self._annotation_path(video, name).is_file():
                    raise DatasetError(self._annotation_path(video, name), f"missing annotation of frame {name!r} of video {video!r}")
        return ReferringExpression(video, str(exp_id), text, (obj_id,), (obj_id,), str(raw.get("kind", "all")), frames)

    def _annotation_path(self, video: str, name: str) -> Path:
        return self.mask_path / video / f"{name}.png"

    # ------------------------------------------------------------------ masks

    def _labels(self, video: str, name: str) -> np.ndarray:
        """(H, W) object ids of one annotated frame."""
        return _read_labels(self._annotation_path(video, name))

    def visible_frames(self, expression: ReferringExpression) -> np.ndarray:
        (obj_id,) = expression.anno_ids
        return np.array([obj_id in _ids_in(self._annotation_path(expression.video, name)) for name in expression.frames])

    def _object_masks(self, expression, frame_indices, frame_names, size) -> torch.Tensor:
        (obj_id,) = expression.anno_ids
        masks = np.zeros((1, len(frame_names), *size), dtype=bool)
        for t, name in enumerate(frame_names):
            labels = self._labels(expression.video, name)
            if labels.shape != tuple(size):
                raise DatasetError(
                    self._annotation_path(expression.video, name),
                    f"annotation is {labels.shape[1]}x{labels.shape[0]} pixels, the frame {size[1]}x{size[0]}",
                )
            masks[0, t] = labels == obj_id
        return torch.from_numpy(masks)

    def annotation_boxes(self, expression: ReferringExpression, frame_indices: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_masks:
            raise DatasetError(self.mask_path, "object boxes come from the split's masks, and it has none")
        frame_indices = list(range(len(expression.frames))) if frame_indices is None else frame_indices
        names = [expression.frames[i] for i in frame_indices]
        size = self.frame_size(expression.video)
        boxes = normalised_boxes(self._object_masks(expression, frame_indices, names, size))
        return boxes, (boxes[..., 2:] > boxes[..., :2]).all(dim=-1)

    def frame_size(self, video: str) -> tuple[int, int] | None:
        first = next(e for e in self.expressions if e.video == video).frames[0]
        for path in (self._annotation_path(video, first), self._frame_path(video, first)):
            if path.is_file():
                with Image.open(path) as image:
                    return image.height, image.width
        return None


@lru_cache(maxsize=4096)
def _ids_in(path: Path) -> frozenset[int]:
    """Object ids present in one annotation PNG (cached: each expression of a video asks)."""
    return frozenset(int(i) for i in np.unique(_read_labels(path)) if i != 0)


def _read_labels(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DatasetError(path, f"expected a palette PNG of object ids, got mode {image.mode}")
            return np.array(image)
    except FileNotFoundError:
        raise DatasetError(path, "missing annotation PNG") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DatasetError(path, f"corrupt annotation PNG, cannot decode it ({error})") from None


def ref_davis17_expression_sets(meta_path: str | Path) -> dict[str, list[list[str]]]:
    """Ref-DAVIS17's expressions grouped by annotator set: per video, four lists (sets 0..3,
    :data:`~sparrow_plugin.evaluation.REF_DAVIS17_SETS`) of exp_ids, object k's expression
    at position k. The converted ``meta_expressions.json`` lists each object's four
    expressions together, ``exp index = object * 4 + set`` (the order ReferFormer's and the
    authors' ``eval_referdavis_infer.py`` read them in)."""
    meta_path = Path(meta_path)
    meta = read_json(meta_path, "Ref-DAVIS17 expressions")
    sets = {}
    for video, entry in (meta.get("videos") or {}).items():
        exp_ids = list((entry.get("expressions") or {}).keys())
        if len(exp_ids) % _ANNOTATOR_SETS:
            raise DatasetError(meta_path, f"video {video!r} has {len(exp_ids)} expressions, not four per object (one per annotator set)")
        sets[video] = [exp_ids[s::_ANNOTATOR_SETS] for s in range(_ANNOTATOR_SETS)]
    return sets
