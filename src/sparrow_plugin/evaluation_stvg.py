"""Scoring a spatio-temporal video grounding predictions file (VidSTG, HC-STVG).

The predictions file is one JSON object keyed by the annotation's ``video_id`` (as a
string; in VidSTG one ``video_id`` is one query)::

    {"<video_id>": {"span": [start, end] or null,
                    "boxes": {"<sampled position>": [x1, y1, x2, y2], ...}}, ...}

``span`` is the predicted time span, half-open, in positions among the sampled frames of
:class:`~sparrow_plugin.data.stvg.STVGDataset` at the same ``fps`` (null: located nowhere
in time); ``boxes`` maps a sampled position to a box in pixels of the original frame
(positions without one score 0). Both keys are required.

The measures are :mod:`sparrow_plugin.metrics.stvg`'s (tIoU, vIoU, gt_vIoU and their
recalls, per query type and over all queries), read off the annotations alone: no video
is decoded. Nothing is dropped: a query without a prediction, or whose entry cannot be
read (an entry that is not an object, a span that is not null nor two integers
``0 <= start <= end``, a box that is not four finite numbers with ``x1 <= x2`` and
``y1 <= y2``, a position that is not an integer), scores 0 and is listed in the report; a
prediction for a ``video_id`` the annotations lack is listed and not scored.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from sparrow_plugin.data.mevis import is_json_int, is_json_number, read_json
from sparrow_plugin.data.stvg import STVGDataset
from sparrow_plugin.errors import DatasetError
from sparrow_plugin.evaluation import EvaluationReport, Problem
from sparrow_plugin.metrics.stvg import STVGSummary, tube_scores

__all__ = ["evaluate_stvg"]


class _Unreadable(Exception):
    """A prediction entry that cannot be scored; the message says why."""


def evaluate_stvg(
    predictions_json: str | Path,
    annotations_json: str | Path,
    video_root: str | Path | None = None,
    fps: float = 5,
    progress: bool = True,
) -> EvaluationReport:
    """Score ``predictions_json`` (module docstring) against a TubeDETR-style annotation
    file, sampled at ``fps`` as the predictions were.

    ``video_root`` is only handed to the dataset (scoring reads no video; None is fine).
    A predictions file that is missing, not valid JSON or not a JSON object raises
    :class:`~sparrow_plugin.errors.DatasetError`. The report's benchmark is
    ``"stvg <annotation file stem>"``; ``per_sample`` holds each query's ``sample``
    (video_id), ``qtype``, ``tIoU``, ``vIoU`` and ``gt_vIoU``.
    """
    predictions_json, annotations_json = Path(predictions_json), Path(annotations_json)
    predictions = read_json(predictions_json, "STVG predictions")
    if not isinstance(predictions, dict):
        raise DatasetError(predictions_json, f'expected a JSON object {{"<video_id>": {{"span": ..., "boxes": ...}}}}, got a {type(predictions).__name__}')
    dataset = STVGDataset(annotations_json, video_root, fps=fps)
    summary, problems, per_sample = STVGSummary(), [], []
    for query in tqdm(dataset.queries, desc=f"stvg {annotations_json.stem}", disable=not progress):
        sample = query.video_id
        scores = None
        if sample not in predictions:
            problems.append(Problem(sample, f"{predictions_json}: no prediction for video_id {sample!r}"))
        else:
            try:
                span, boxes = _read_prediction(predictions[sample])
            except _Unreadable as error:
                problems.append(Problem(sample, f"{predictions_json}: video_id {sample!r}: {error}"))
            else:
                scores = tube_scores(query.gt_span, query.gt_boxes, span, boxes)
        summary.add(query.qtype, scores)
        shown = scores or {"tIoU": 0.0, "vIoU": 0.0, "gt_vIoU": 0.0}
        per_sample.append({"sample": sample, "qtype": query.qtype, **{key: shown[key] for key in ("tIoU", "vIoU", "gt_vIoU")}})
    known = {query.video_id for query in dataset.queries}
    problems += [
        Problem(str(key), f"{predictions_json}: video_id {key!r} is not in {annotations_json}; not scored", scored_zero=False)
        for key in predictions
        if key not in known
    ]
    return EvaluationReport(f"stvg {annotations_json.stem}", summary.compute(), problems, per_sample)


def _read_prediction(entry) -> tuple[tuple[int, int] | None, dict[int, list[float]]]:
    """One predictions-file entry as ``(span or None, {position: box})``; raises
    ``_Unreadable`` with the reason for an entry not in the documented form."""
    if not isinstance(entry, dict) or "span" not in entry or "boxes" not in entry:
        raise _Unreadable(f'expected {{"span": [start, end] or null, "boxes": {{...}}}}, got {_short(entry)}')
    span = entry["span"]
    if span is not None:
        if not (isinstance(span, list) and len(span) == 2 and all(is_json_int(v) for v in span) and 0 <= span[0] <= span[1]):
            raise _Unreadable(f"span must be null or two integers 0 <= start <= end, got {_short(span)}")
        span = (span[0], span[1])
    if not isinstance(entry["boxes"], dict):
        raise _Unreadable(f'boxes must be an object {{"<sampled position>": [x1, y1, x2, y2]}}, got {_short(entry["boxes"])}')
    boxes = {}
    for key, box in entry["boxes"].items():
        try:
            position = int(key)
        except ValueError:
            raise _Unreadable(f"boxes: {key!r} is not a sampled-frame position (an integer)") from None
        if not (isinstance(box, list) and len(box) == 4 and all(is_json_number(v) for v in box)):
            raise _Unreadable(f"boxes[{key!r}] must be four numbers [x1, y1, x2, y2], got {_short(box)}")
        if box[2] < box[0] or box[3] < box[1]:
            raise _Unreadable(f"boxes[{key!r}] = {box} has x2 < x1 or y2 < y1 (expected [x1, y1, x2, y2])")
        boxes[position] = [float(v) for v in box]
    return span, boxes


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

