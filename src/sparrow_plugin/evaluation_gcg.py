"""Scoring a VideoGCG predictions file (``sparrow eval --benchmark videogcg``), with the
measures of :mod:`sparrow_plugin.metrics.gcg`.

Predictions file (:func:`evaluate_gcg`), one entry per video id (as a string)::

    {"<video id>": {"caption": str,                  (not scored yet; may be absent)
                    "phrases": [str, ...],
                    "masks": [[<COCO RLE or null>, ... one per frame], ... one per phrase]}}

RLEs are ``{"size": [H, W], "counts": str}`` at the annotation's size
(:func:`sparrow_plugin.data.videogcg.encode_rle` writes them), null an empty frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sparrow_plugin.data.mevis import read_json
from sparrow_plugin.data.videogcg import VideoGCGDataset, decode_rle
from sparrow_plugin.errors import ConfigError, DatasetError
from sparrow_plugin.evaluation import EvaluationReport, Problem
from sparrow_plugin.metrics.gcg import IOU_THRESHOLD, SIMILARITY_THRESHOLD, GCGVideoScore, PhraseEmbedder, Similarity, score_video, summarise

__all__ = ["evaluate_gcg"]


class _Unreadable(Exception):
    """A prediction that cannot be scored; the message says why."""


def evaluate_gcg(
    predictions_json: str | Path,
    annotations_json: str | Path,
    phrase_model: str | Path | None,
    progress: bool = True,
    similarity: Similarity | None = None,
) -> EvaluationReport:
    """Scores a predictions file (the module docstring has its format) on every video of a
    VideoGCG annotation file: mIoU, and recall when ``phrase_model`` (a local folder,
    :class:`PhraseEmbedder`) or ``similarity`` (a function, instead of the model) is given.
    A missing or malformed prediction scores 0 and is listed; one for a video the
    annotations lack is listed and not scored."""
    predictions_path = Path(predictions_json)
    if phrase_model is not None and similarity is not None:
        raise ConfigError("give either phrase_model or similarity, not both")
    predictions = read_json(predictions_path, "GCG predictions")
    if not isinstance(predictions, dict):
        raise DatasetError(predictions_path, 'expected {"<video id>": {"caption": ..., "phrases": [...], "masks": [...]}, ...}')
    dataset = VideoGCGDataset(annotations_json)
    if phrase_model is not None:
        similarity = PhraseEmbedder(phrase_model)
    scores, problems, per_sample = [], [], []
    for index in tqdm(range(len(dataset)), desc=f"videogcg {dataset.path.stem}", disable=not progress):
        video = dataset.video(index)
        sample = str(video.id)
        gt = np.stack(video.masks) if video.masks else np.zeros((0, len(video.frame_paths), *video.size), dtype=bool)
        try:
            if sample not in predictions:
                raise _Unreadable("no prediction")
            phrases, pred = _read_prediction(predictions[sample], len(video.frame_paths), video.size)
        except _Unreadable as error:
            problems.append(Problem(sample, f"{predictions_path}: video {sample!r}: {error}"))
            score = GCGVideoScore(0.0, [], [], None if similarity is None else 0, len(video.phrases))
        else:
            score = score_video(pred, gt, phrases, video.phrases, similarity)
        scores.append(score)
        per_sample.append({"sample": sample, "mIoU": score.miou, "matched": score.matched, "gt_phrases": score.gt_phrases})
    known = set(dataset.ids)
    problems += [
        Problem(key, f"{predictions_path}: video {key!r} is not in {dataset.path}; not scored", scored_zero=False)
        for key in predictions
        if key not in known
    ]
    results = summarise(scores)
    results["videos"] = len(scores)
    results["missing"] = sum(1 for p in problems if p.scored_zero)
    if similarity is None:
        note = "recall not computed: no phrase model given (a local sentence-embedding model folder, e.g. all-MiniLM-L6-v2)"
    elif phrase_model is not None:
        note = f"recall: IoU >= {IOU_THRESHOLD} and phrase cosine >= {SIMILARITY_THRESHOLD}, embeddings of {phrase_model}"
    else:
        note = f"recall: IoU >= {IOU_THRESHOLD} and phrase similarity >= {SIMILARITY_THRESHOLD}, by the similarity function given"
    return EvaluationReport(f"videogcg {dataset.path.stem}", results, problems, per_sample, note=f"{note}; METEOR and CIDEr are not computed yet")


def _read_prediction(entry, frames: int, size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """The phrases and (P, T, H, W) bool masks of one video's prediction."""
    if not isinstance(entry, dict) or not isinstance(entry.get("phrases"), list) or not isinstance(entry.get("masks"), list):
        raise _Unreadable('expected {"caption": str, "phrases": [str, ...], "masks": [[<RLE or null per frame>], ...]}')
    phrases, masks = entry["phrases"], entry["masks"]
    if not all(isinstance(p, str) for p in phrases):
        raise _Unreadable("phrases must be strings")
    if len(phrases) != len(masks):
        raise _Unreadable(f"{len(phrases)} phrases but {len(masks)} masks")
    decoded = np.zeros((len(masks), frames, *size), dtype=bool)
    for k, per_frame in enumerate(masks):
        if not isinstance(per_frame, list) or len(per_frame) != frames:
            got = f"{len(per_frame)} frames" if isinstance(per_frame, list) else type(per_frame).__name__
            raise _Unreadable(f"masks[{k}] ({phrases[k]!r}) has {got}, the video has {frames} frames")
        for t, rle in enumerate(per_frame):
            if rle is not None:
                try:
                    decoded[k, t] = decode_rle(rle, size)
                except ValueError as problem:
                    raise _Unreadable(f"masks[{k}] ({phrases[k]!r}), frame {t}: {problem}") from None
    return phrases, decoded
