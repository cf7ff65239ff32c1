"""Grounded conversation generation (VideoGCG): mask mIoU and phrase recall.

For one video, with P predicted and G ground-truth grounded phrases, each a (T, H, W) mask:

* the volume IoU of every (predicted, ground-truth) pair, intersection and union summed
  over all frames (:func:`volume_iou`; two empty masks have IoU 0);
* a greedy one-to-one matching: repeatedly the unmatched pair of highest IoU, until the best
  remaining IoU is 0 (:func:`greedy_volume_matching`; ties go to the first pair in
  (pred, gt) row-major order). This is VideoGLaMM's ``compute_miou`` (eval_gcg_metrics.py),
  not the optimal (Hungarian) assignment;
* the video's mIoU: the mean IoU of the matched pairs (unmatched objects are ignored; no
  pair at all scores 0);
* matched phrases: pairs of that same matching whose IoU is >= 0.5 and whose phrases'
  sentence embeddings have a cosine similarity >= 0.5.

Over the benchmark, ``mIoU`` is the mean of the videos' mIoU and ``recall`` the matched
ground-truth phrases over all ground-truth phrases. A video whose prediction is missing or
unreadable scores 0 (its phrases count in recall's denominator) and is counted in
``missing``.

Phrase embeddings (:class:`PhraseEmbedder`): a model loaded from a local folder with
``transformers.AutoTokenizer`` / ``AutoModel``; the last hidden state is mean-pooled over
the attention mask, then L2-normalised, which is what sentence-transformers computes for
all-MiniLM-style models (mean pooling, normalisation). VideoGLaMM's own script embeds each
phrase with ``bert-base-uncased`` as the plain mean of its last hidden state: giving that
model's folder reproduces its embeddings (the attention-mask mean of one phrase is its mean).

Differences from VideoGLaMM's ``eval_gcg_metrics.py``, by design: its recall runs its own
greedy pass over IoU and stops at the first pair failing either threshold, where here every
pair of the mIoU matching that passes both counts; it drops a video whose result file is
missing, where here it scores 0; a pair of empty masks is 0/0 there, 0 here.

Caption metrics (METEOR, CIDEr, CLAIR) are not computed yet.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparrow_plugin.errors import ConfigError

__all__ = [
    "IOU_THRESHOLD",
    "SIMILARITY_THRESHOLD",
    "Similarity",
    "volume_iou",
    "greedy_volume_matching",
    "GCGVideoScore",
    "score_video",
    "summarise",
    "PhraseEmbedder",
]

IOU_THRESHOLD = 0.5
SIMILARITY_THRESHOLD = 0.5

# (predicted phrases, ground-truth phrases) -> (P, G) cosine similarities
Similarity = Callable[[list[str], list[str]], np.ndarray]


def volume_iou(pred, gt) -> np.ndarray:
    """(P, G) float64 IoU between (P, T, H, W) and (G, T, H, W) bool masks, intersection
    and union summed over all frames; 0 where both masks are empty."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.ndim != 4 or gt.ndim != 4 or pred.shape[1:] != gt.shape[1:]:
        raise ValueError(f"expected (P, T, H, W) and (G, T, H, W) masks of the same T, H, W, got {pred.shape} and {gt.shape}")
    pixels = int(np.prod(pred.shape[1:]))
    pred, gt = pred.reshape(len(pred), pixels), gt.reshape(len(gt), pixels)
    areas_pred, areas_gt = pred.sum(axis=1), gt.sum(axis=1)
    iou = np.zeros((len(pred), len(gt)), dtype=np.float64)
    for i in range(len(pred)):
        for j in range(len(gt)):
            if areas_pred[i] and areas_gt[j]:
                intersection = int(np.count_nonzero(pred[i] & gt[j]))
                iou[i, j] = intersection / (int(areas_pred[i]) + int(areas_gt[j]) - intersection)
    return iou


def greedy_volume_matching(iou: np.ndarray) -> list[tuple[int, int]]:
    """(pred, gt) index pairs, in the order taken: repeatedly the unmatched pair of highest
    IoU (the first in row-major order on a tie), until the best remaining IoU is 0."""
    iou = np.nan_to_num(np.array(iou, dtype=np.float64), nan=0.0)
    if iou.ndim != 2:
        raise ValueError(f"expected a (P, G) IoU matrix, got shape {iou.shape}")
    pairs = []
    while iou.size and iou.max() > 0:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        pairs.append((int(i), int(j)))
        iou[i, :] = -1.0
        iou[:, j] = -1.0
    return pairs


@dataclass(frozen=True)
class GCGVideoScore:
    miou: float
    pairs: list[tuple[int, int]]  # (pred, gt), the greedy matching in the order taken
    ious: list[float]  # of each pair
    matched: int | None  # pairs with IoU and phrase similarity >= 0.5; None without similarity
    gt_phrases: int


def score_video(
    pred_masks,
    gt_masks,
    pred_phrases: Sequence[str] = (),
    gt_phrases: Sequence[str] = (),
    similarity: Similarity | None = None,
) -> GCGVideoScore:
    """One video's scores: ``pred_masks`` (P, T, H, W) and ``gt_masks`` (G, T, H, W) bool
    (sequences of (T, H, W) arrays are stacked); ``similarity`` is called once with the
    (predicted, ground-truth) phrases when some pair reaches the IoU threshold; without it
    ``matched`` is None."""
    pred, gt = _as_masks(pred_masks), _as_masks(gt_masks)
    shape = next((m.shape[1:] for m in (pred, gt) if m is not None), (0, 0, 0))
    pred = pred if pred is not None else np.zeros((0, *shape), dtype=bool)
    gt = gt if gt is not None else np.zeros((0, *shape), dtype=bool)
    iou = volume_iou(pred, gt)
    pairs = greedy_volume_matching(iou)
    ious = [float(iou[i, j]) for i, j in pairs]
    matched = None
    if similarity is not None:
        if len(pred_phrases) != len(pred) or len(gt_phrases) != len(gt):
            raise ValueError(f"{len(pred)} and {len(gt)} masks, but {len(pred_phrases)} and {len(gt_phrases)} phrases")
        candidates = [(i, j) for (i, j), value in zip(pairs, ious) if value >= IOU_THRESHOLD]
        matched = 0
        if candidates:
            sims = np.asarray(similarity(list(pred_phrases), list(gt_phrases)), dtype=np.float64)
            if sims.shape != (len(pred), len(gt)):
                raise ValueError(f"the similarity function returned shape {sims.shape}, expected {(len(pred), len(gt))}")
            matched = sum(1 for i, j in candidates if sims[i, j] >= SIMILARITY_THRESHOLD)
    return GCGVideoScore(float(np.mean(ious)) if ious else 0.0, pairs, ious, matched, len(gt))


def _as_masks(masks) -> np.ndarray | None:
    """(N, T, H, W) bool, or None for an empty sequence (whose T, H, W are unknown)."""
    if isinstance(masks, np.ndarray):
        return masks.astype(bool, copy=False)
    return np.stack([np.asarray(m, dtype=bool) for m in masks]) if len(masks) else None


def summarise(scores: Sequence[GCGVideoScore]) -> dict[str, float]:
    """``mIoU`` (mean over videos, 0 for none) and, when every score has ``matched``,
    ``recall`` (matched over ground-truth phrases, 0 when there are none)."""
    results = {"mIoU": float(np.mean([s.miou for s in scores])) if scores else 0.0}
    if all(s.matched is not None for s in scores):
        total = sum(s.gt_phrases for s in scores)
        results["recall"] = sum(s.matched for s in scores) / total if total else 0.0
    return results


class PhraseEmbedder:
    """Sentence embeddings of phrases from a local model folder: the attention-mask mean of
    the last hidden state, L2-normalised (sentence-transformers' all-MiniLM pipeline).
    Calling it with two phrase lists gives their (len(a), len(b)) cosine similarities.
    Embeddings are cached by phrase."""

    def __init__(self, path: str | Path, batch_size: int = 64, max_length: int = 256):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: phrase model folder not found (a sentence-embedding model saved locally, e.g. all-MiniLM-L6-v2)")
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        except (OSError, ValueError) as error:
            raise ConfigError(f"{self.path}: cannot load the phrase model ({error})") from None
        self._pad = self.tokenizer.pad_token is not None  # without a pad token, one phrase at a time
        self.batch_size = batch_size if self._pad else 1
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if limit else max_length
        self._inputs = set(inspect.signature(self.model.forward).parameters)
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, phrases: Sequence[str]) -> np.ndarray:
        """(N, D) float64 unit vectors (a phrase without tokens gives zeros)."""
        import torch

        todo = [p for p in dict.fromkeys(phrases) if p not in self._cache]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            encoded = self.tokenizer(batch, padding=self._pad, truncation=True, max_length=self.max_length, return_tensors="pt")
            mask = encoded["attention_mask"]
            if mask.shape[1] == 0:
                vectors = np.zeros((len(batch), self.model.config.hidden_size))
            else:
                with torch.no_grad():
                    hidden = self.model(**{k: v for k, v in encoded.items() if k in self._inputs}).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
                vectors = torch.nn.functional.normalize(pooled.double(), dim=-1).numpy()
            self._cache.update(zip(batch, vectors))
        if not phrases:
            return np.zeros((0, self.model.config.hidden_size))
        return np.stack([self._cache[p] for p in phrases])

    def __call__(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        return self.embed(a) @ self.embed(b).T
