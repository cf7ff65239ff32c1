"""Scoring a folder of predictions in a benchmark's own layout (``sparrow eval``).

Any model's outputs can be scored this way, ours or another's (the PNG folders VideoGLaMM's,
Sa2VA's or the SPARROW authors' scripts write), with the numbers the benchmark owners'
evaluators compute (``docs/metrics.md``). Nothing is dropped: a prediction that is missing,
unreadable, of the wrong size or with too many ids scores 0 and is listed in the report with
the file and the problem; a prediction for a video the benchmark does not have is listed and
not scored.

Layouts (``docs/metrics.md`` has the details):

* ``mevis`` (MeViS, our synthetic benchmark): ``<pred>/<video>/<exp_id>/<frame>.png``,
  non-zero is the expression's mask; ground truth ``<gt>/<split>/meta_expressions.json``
  and ``mask_dict.json``.
* ``revos``: the same prediction layout; ground truth the ReVOS folder; J, F, A and R per
  kind (referring, reasoning) and their mean.
* ``davis17`` (unsupervised or semi-supervised DAVIS 2017): ``<pred>/<sequence>/<frame>.png``
  palette PNGs whose index is the object id; ground truth the DAVIS folder
  (``Annotations_unsupervised/480p`` or ``Annotations/480p``, ``ImageSets/2017/<subset>.txt``).
* ``ref-davis17``: four such folders, one per annotator set, under ``<pred>``; scored as
  unsupervised DAVIS each, and the benchmark number is the mean of the four. Or, with the
  converted ``meta_expressions.json``, one mask folder per expression (``sparrow
  predict``'s layout), merged into the four sets first.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from sparrow_plugin.data.mevis import MeViSDataset, read_json
from sparrow_plugin.errors import DatasetError, SparrowError
from sparrow_plugin.metrics.davis import MAX_PROPOSALS, DavisSummary, semi_supervised_scores, unsupervised_scores
from sparrow_plugin.metrics.frame_scores import f_measure, jaccard
from sparrow_plugin.metrics.mevis import MeViSMetric

__all__ = [
    "BENCHMARKS",
    "REF_DAVIS17_SETS",
    "Problem",
    "EvaluationReport",
    "evaluate",
    "evaluate_mevis",
    "evaluate_revos",
    "evaluate_davis17",
    "evaluate_ref_davis17",
    "merge_ref_davis17",
    "write_submission",
]

# the four annotator sets of Ref-DAVIS17, as the folders are named by the authors' scripts
# (eval_referdavis_infer.py) and by ReferFormer-style ones (anno_0 .. anno_3)
REF_DAVIS17_SETS = {
    "Davis17_annot1": "anno_0",
    "Davis17_annot1_full_video": "anno_1",
    "Davis17_annot2": "anno_2",
    "Davis17_annot2_full_video": "anno_3",
}
_VOID = 255


@dataclass(frozen=True)
class Problem:
    """A sample that could not be scored as predicted, and why."""

    sample: str  # "<video>/<exp_id>", "<sequence>", with the annotator set in front for Ref-DAVIS17
    message: str
    scored_zero: bool = True  # False: listed only (a prediction for a video the benchmark lacks)


@dataclass
class EvaluationReport:
    benchmark: str
    results: dict[str, float]
    problems: list[Problem] = field(default_factory=list)
    per_sample: list[dict] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "results": self.results,
            "problems": [vars(problem) for problem in self.problems],
            "per_sample": self.per_sample,
            "note": self.note,
        }

    def format(self) -> str:
        lines = [f"{self.benchmark}:"]
        width = max(map(len, self.results), default=0)
        for name, value in self.results.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"  {name:<{width}}  {shown}")
        zero = [p for p in self.problems if p.scored_zero]
        if zero:
            lines.append(f"{len(zero)} sample(s) scored 0:")
            lines += [f"  {p.sample}: {p.message}" for p in zero[:50]]
            if len(zero) > 50:
                lines.append(f"  ... {len(zero) - 50} more (all in the JSON report)")
        listed = [p for p in self.problems if not p.scored_zero]
        if listed:
            lines.append(f"{len(listed)} prediction(s) not scored:")
            lines += [f"  {p.sample}: {p.message}" for p in listed[:50]]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


class _Unreadable(Exception):
    """A prediction that cannot be scored; the message names the file."""


def read_index_png(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) integer labels of a prediction PNG: palette indices for a palette PNG, grey
    values otherwise (colour PNGs are converted to grey, as ``cv2.IMREAD_GRAYSCALE`` does)."""
    if not path.is_file():
        raise _Unreadable(f"{path}: missing")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I", "I;16", "1"):
                image = image.convert("L")
            labels = np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise _Unreadable(f"{path}: not a readable PNG ({error})") from None
    if labels.ndim != 2:
        raise _Unreadable(f"{path}: expected a single-channel mask, got shape {labels.shape}")
    if size is not None and labels.shape != tuple(size):
        raise _Unreadable(f"{path}: {labels.shape[1]}x{labels.shape[0]} pixels, the ground truth is {size[1]}x{size[0]}")
    return labels


def _unknown_folders(pred_dir: Path, known: Iterable[str], what: str) -> list[Problem]:
    """Folders of predictions for videos the benchmark lacks (``sparrow predict``'s own
    ``overlays`` folder aside)."""
    known = {*known, "overlays"}
    return [
        Problem(entry.name, f"{entry}: no such {what} in the ground truth; not scored", scored_zero=False)
        for entry in sorted(pred_dir.iterdir())
        if entry.is_dir() and entry.name not in known
    ]


def _check_pred_dir(pred_dir: Path) -> Path:
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError(pred_dir, "prediction folder not found")
    return pred_dir


# ----------------------------------------------------------------------------- MeViS


def evaluate_mevis(pred_dir: str | Path, gt_root: str | Path, split: str = "valid_u", progress: bool = True) -> EvaluationReport:
    """The MeViS protocol over ``<pred>/<video>/<exp_id>/<frame>.png`` (MeViSMetric): each
    expression's J and F are the means over every frame of the video, against the union of
    the referred objects; a missing or unreadable expression scores 0."""
    pred_dir = _check_pred_dir(pred_dir)
    dataset = MeViSDataset(gt_root, split, require_frames=False)
    if not dataset.has_masks:
        raise DatasetError(dataset.mask_path, f"split {split!r} has no masks: it is scored by the benchmark's server (sparrow test writes the submission zip)")
    metric = MeViSMetric(dataset.kinds(), expected_samples=len(dataset))
    problems, per_sample = [], []
    for index, (expression, sample, pred, gt) in enumerate(_expression_predictions(dataset, pred_dir, problems, f"mevis {split}", progress)):
        metric.update(pred, gt, kind=expression.kind, sample_index=index)  # pred None: scored 0
        # the scores just added (a state list until compute())
        per_sample.append({"sample": sample, "kind": expression.kind, "J": float(metric.j[-1]), "F": float(metric.f[-1])})
    problems += _unknown_folders(pred_dir, {e.video for e in dataset.expressions}, "video")
    return EvaluationReport(f"mevis {split}", metric.compute(), problems, per_sample)


def evaluate_revos(pred_dir: str | Path, gt_root: str | Path, split: str = "valid", progress: bool = True) -> EvaluationReport:
    """ReVOS over ``<pred>/<video>/<exp_id>/<frame>.png``, as its ``eval_revos.py`` scores it:
    per expression J, F, A (pixel accuracy) and R (robustness: one minus the predicted
    pixels outside the target over the video's foreground pixels, floored at 0), each a
    mean over frames; per kind (``referring``, ``reasoning``) the means over expressions and
    ``J&F = (J + F) / 2``; overall, the mean of the two kinds' values. The reference rounds
    each expression's scores to 0.01 % before averaging; we do not (it moves a mean by at
    most 0.005 points)."""
    from sparrow_plugin.data.revos import ReVOSDataset

    pred_dir = _check_pred_dir(pred_dir)
    dataset = ReVOSDataset(gt_root, split, require_frames=False)
    if not dataset.has_masks:
        raise DatasetError(dataset.mask_path, f"ReVOS needs its mask_dict.json to score split {split!r}")
    foreground_path = Path(gt_root) / "mask_dict_foreground.json"
    foreground = read_json(foreground_path, "ReVOS' foreground masks")
    problems, rows = [], []
    for expression, sample, pred, gt in _expression_predictions(dataset, pred_dir, problems, f"revos {split}", progress):
        row = {"sample": sample, "kind": expression.kind, "J": 0.0, "F": 0.0, "A": 0.0, "R": 0.0}
        rows.append(row)
        if pred is None:
            continue
        video_foreground = _foreground(foreground, foreground_path, expression.video, len(expression.frames), pred.shape[1:])
        outside = (pred & ~gt).reshape(len(pred), -1).sum(axis=1)
        row.update(
            J=float(jaccard(pred, gt).mean()),
            F=float(f_measure(pred, gt).mean()),
            A=float((pred == gt).reshape(len(pred), -1).mean(axis=1).mean()),
            R=float(np.maximum(1 - outside / (video_foreground + 1e-6), 0.0).mean()),
        )
    problems += _unknown_folders(pred_dir, {e.video for e in dataset.expressions}, "video")
    missing = sum(problem.scored_zero for problem in problems)
    return EvaluationReport(f"revos {split}", _revos_results(rows, missing), problems, rows)


def _foreground(foreground: dict, path: Path, video: str, num_frames: int, size) -> np.ndarray:
    """(T,) foreground pixels of each frame of a ReVOS video."""
    entry = foreground.get(video)
    rles = entry.get("masks_rle") if isinstance(entry, dict) else None
    if not isinstance(rles, list) or len(rles) != num_frames:
        raise DatasetError(path, f"video {video!r}: expected {{'masks_rle': [one RLE per frame ({num_frames})]}}")
    counts = np.zeros(num_frames)
    for t, rle in enumerate(rles):
        if rle:
            mask = mask_utils.decode(rle)
            mask = mask.sum(axis=2) if mask.ndim == 3 else mask
            if mask.shape != tuple(size):
                raise DatasetError(path, f"video {video!r} frame {t}: foreground RLE of size {list(mask.shape)}, the frames are {list(size)}")
            counts[t] = np.count_nonzero(mask)
    return counts


def _revos_results(rows: list[dict], missing: int) -> dict[str, float]:
    results = {}
    measures = ("J", "F", "A", "R")
    for kind in ("referring", "reasoning"):
        chosen = [row for row in rows if row["kind"] == kind]
        if chosen:
            means = {m: float(np.mean([row[m] for row in chosen])) for m in measures}
            results.update({f"{kind}/{m}": v for m, v in means.items()})
            results[f"{kind}/J&F"] = (means["J"] + means["F"]) / 2
            results[f"{kind}/expressions"] = len(chosen)
    kinds = [k for k in ("referring", "reasoning") if f"{k}/J" in results]
    for m in (*measures, "J&F"):
        results[m] = float(np.mean([results[f"{k}/{m}"] for k in kinds])) if kinds else 0.0
    results["expressions"] = len(rows)
    results["missing"] = missing
    return results


def _expression_predictions(dataset: MeViSDataset, pred_dir: Path, problems: list[Problem], desc: str, progress: bool):
    """Each expression of ``dataset`` as ``(expression, sample, pred, gt)``: its (T, H, W)
    prediction and ground truth, or None for both when the prediction cannot be read (the
    reason is added to ``problems``, and the protocol scores it 0)."""
    for expression in tqdm(dataset.expressions, desc=desc, disable=not progress):
        sample = f"{expression.video}/{expression.exp_id}"
        gt = dataset.ground_truth(expression)
        try:
            pred = _read_expression(pred_dir / expression.video / expression.exp_id, expression.frames, None if gt is None else gt.shape[1:])
        except _Unreadable as error:
            problems.append(Problem(sample, str(error)))
            yield expression, sample, None, None
            continue
        # a no-target expression of a video of unrecorded size: empty at the prediction's size
        yield expression, sample, pred, np.zeros_like(pred) if gt is None else gt


def _read_expression(folder: Path, frames: tuple[str, ...], size) -> np.ndarray:
    """(T, H, W) bool prediction of one expression; the folder must hold every frame."""
    if not folder.is_dir():
        raise _Unreadable(f"{folder}: missing")
    found = {path.stem for path in folder.glob("*.png")}
    absent = [name for name in frames if name not in found]
    if absent:
        shown = ", ".join(absent[:5]) + (f", ... ({len(absent) - 5} more)" if len(absent) > 5 else "")
        raise _Unreadable(f"{folder}: {len(frames) - len(absent)} of the video's {len(frames)} frames predicted; missing {shown}")
    masks = []
    for name in frames:
        labels = read_index_png(folder / f"{name}.png", size)
        size = labels.shape
        masks.append(labels != 0)
    return np.stack(masks)


# ----------------------------------------------------------------------------- DAVIS 2017


@dataclass(frozen=True)
class _DavisSequence:
    name: str
    frames: tuple[str, ...]
    objects: np.ndarray  # (N, T, H, W) bool, object k is id k + 1 (the first frame's ids)
    void: np.ndarray  # (T, H, W) bool


def _davis_sequences(davis_root: Path, task: str, subset: str) -> list[_DavisSequence]:
    """The ground truth as davis2017's ``DAVIS.get_all_masks`` reads it: every PNG of the
    sequence's annotation folder, 255 is void, the objects are the ids 1 .. max of the first
    frame."""
    annotations = davis_root / ("Annotations_unsupervised" if task == "unsupervised" else "Annotations") / "480p"
    listing = davis_root / "ImageSets" / "2017" / f"{subset}.txt"
    if not listing.is_file():
        raise DatasetError(listing, f"sequence list of the {subset!r} subset not found (expected the DAVIS 2017 folder layout)")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    sequences = []
    for name in names:
        paths = sorted((annotations / name).glob("*.png"))
        if not paths:
            raise DatasetError(annotations / name, f"no annotation PNGs for sequence {name!r}")
        labels = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    labels.append(np.array(image))
            except (UnidentifiedImageError, OSError) as error:
                raise DatasetError(path, f"not a readable annotation PNG ({error})") from None
        labels = np.stack(labels)
        void = labels == _VOID
        labels = np.where(void, 0, labels)
        ids = np.arange(1, int(labels[0].max()) + 1)
        sequences.append(_DavisSequence(name, tuple(p.stem for p in paths), labels[None] == ids[:, None, None, None], void))
    return sequences


def evaluate_davis17(
    pred_dir: str | Path,
    davis_root: str | Path,
    task: str = "unsupervised",
    subset: str = "val",
    progress: bool = True,
    _sequences: list[_DavisSequence] | None = None,
) -> EvaluationReport:
    """DAVIS 2017 over ``<pred>/<sequence>/<frame>.png`` palette PNGs, as davis2017-evaluation
    scores them (``task`` unsupervised or semi-supervised). A sequence whose prediction is
    missing, unreadable, of another size or with more ids than allowed scores 0 on every
    object and frame."""
    if task not in ("unsupervised", "semi-supervised"):
        raise SparrowError(f"DAVIS task must be 'unsupervised' or 'semi-supervised', got {task!r}")
    pred_dir = _check_pred_dir(pred_dir)
    sequences = _sequences if _sequences is not None else _davis_sequences(Path(davis_root), task, subset)
    summary, problems = DavisSummary(), []
    for sequence in tqdm(sequences, desc=f"davis17 {task}", disable=not progress):
        objects, void, frames = sequence.objects, sequence.void, sequence.frames
        if task == "semi-supervised":  # the first and last frames are not scored, nor is void
            objects, void, frames = objects[:, 1:-1], None, frames[1:-1]
        try:
            predicted = _read_davis_prediction(pred_dir / sequence.name, frames, objects.shape[2:], task, len(objects))
        except _Unreadable as error:
            problems.append(Problem(sequence.name, str(error)))
            zeros = np.zeros(objects.shape[:2])
            summary.add(sequence.name, zeros, zeros)
            continue
        if task == "unsupervised":
            j, f, _ = unsupervised_scores(objects, predicted, void)
        else:
            j, f = semi_supervised_scores(objects, predicted)
        summary.add(sequence.name, j, f)
    problems += _unknown_folders(pred_dir, {s.name for s in sequences}, "sequence")
    return EvaluationReport(f"davis17 {task} {subset}", summary.compute(), problems, summary.per_object())


def _read_davis_prediction(folder: Path, frames: tuple[str, ...], size, task: str, num_objects: int) -> np.ndarray:
    """(M, T, H, W) bool: predicted ids 1 .. the largest id in any frame, as davis2017's
    ``Results.read_masks``."""
    if not folder.is_dir():
        raise _Unreadable(f"{folder}: missing")
    labels = np.stack([read_index_png(folder / f"{name}.png", size) for name in frames])
    top = int(labels.max())
    if task == "unsupervised" and top > MAX_PROPOSALS:
        raise _Unreadable(f"{folder}: id {top} used; the unsupervised task allows at most {MAX_PROPOSALS} ids")
    if task == "semi-supervised" and top > num_objects:
        raise _Unreadable(f"{folder}: id {top} used; the sequence has {num_objects} objects")
    return labels[None] == np.arange(1, top + 1)[:, None, None, None]


def evaluate_ref_davis17(
    pred_dir: str | Path, davis_root: str | Path, expressions: str | Path | None = None, progress: bool = True
) -> EvaluationReport:
    """Ref-DAVIS17: unsupervised DAVIS 2017 ``val`` for each of the four annotator sets'
    folders, then the mean of the four global results (which the authors' scripts leave to
    the reader). Whole videos, every predicted object: nothing is cut into clips.

    Args:
        pred_dir: the four annotator-set folders of palette PNGs; or, with
            ``expressions``, one mask folder per expression as ``sparrow predict`` writes
            it (``<video>/<exp_id>/<frame>.png``), merged here into the four sets.
        expressions: the converted ``meta_expressions.json`` of Ref-DAVIS17 ``valid``,
            which says which expression belongs to which object and set.
    """
    pred_dir = _check_pred_dir(pred_dir)
    if expressions is not None:
        with tempfile.TemporaryDirectory() as merged:
            merge_problems = merge_ref_davis17(pred_dir, expressions, Path(merged))
            report = evaluate_ref_davis17(merged, davis_root, progress=progress)
        report.problems = merge_problems + report.problems
        return report
    folders = _annotator_folders(pred_dir)
    sequences = _davis_sequences(Path(davis_root), "unsupervised", "val")
    per_set, problems, per_sample = {}, [], []
    for name, folder in folders.items():
        report = evaluate_davis17(folder, davis_root, "unsupervised", "val", progress, _sequences=sequences)
        per_set[name] = report.results
        problems += [Problem(f"{name}/{p.sample}", p.message, p.scored_zero) for p in report.problems]
        per_sample += [{"set": name, **row} for row in report.per_sample]
    keys = [key for key in next(iter(per_set.values())) if key != "objects"]
    results = {key: float(np.mean([r[key] for r in per_set.values()])) for key in keys}
    for name, values in per_set.items():
        results[f"{name}/J&F-Mean"] = values["J&F-Mean"]
    results["objects"] = sum(r["objects"] for r in per_set.values())
    return EvaluationReport("ref-davis17", results, problems, per_sample, note="J&F-Mean etc. are the mean over the four annotator sets")


def merge_ref_davis17(pred_dir: Path, expressions: str | Path, out_dir: Path) -> list[Problem]:
    """Per-expression masks -> the four annotator sets' palette PNGs: in set s, object k
    (its expression ``k * 4 + s``) is id k + 1; where two objects' masks overlap the lower id
    wins, as in the authors' argmax merge. An expression without masks leaves its object
    empty in that set and is listed."""
    from sparrow_plugin.data.refytvos import ref_davis17_expression_sets

    meta = read_json(Path(expressions), "Ref-DAVIS17 expressions")
    problems = []
    for set_name in REF_DAVIS17_SETS:
        (out_dir / set_name).mkdir(parents=True, exist_ok=True)
    for video, sets in ref_davis17_expression_sets(expressions).items():
        frames = tuple(sorted(str(f) for f in meta["videos"][video]["frames"]))
        for set_name, exp_ids in zip(REF_DAVIS17_SETS, sets):
            labels, size = None, None
            for k, exp_id in enumerate(exp_ids):
                try:
                    masks = _read_expression(pred_dir / video / exp_id, frames, size)
                except _Unreadable as error:
                    problems.append(Problem(f"{set_name}/{video}/{exp_id}", f"{error} (object {k + 1} left empty)"))
                    continue
                size = masks.shape[1:]
                labels = np.zeros(masks.shape, np.uint8) if labels is None else labels
                labels[(labels == 0) & masks] = k + 1
            if labels is None:
                continue  # nothing predicted in this set: the folder is missing, and scored so
            for name, frame in zip(frames, labels):
                _write_palette_png(out_dir / set_name / video / f"{name}.png", frame)
    return problems


def _write_palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels, mode="P")
    image.putpalette(_DAVIS_PALETTE)
    image.save(path)


def _davis_palette() -> list[int]:
    """The PASCAL VOC colour map DAVIS' PNGs use (index i -> the bits of i spread over RGB)."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [red, green, blue]
    return palette


_DAVIS_PALETTE = _davis_palette()


def _annotator_folders(pred_dir: Path) -> dict[str, Path]:
    """The four annotator-set folders, in either naming; all four must be there."""
    for names in (list(REF_DAVIS17_SETS), list(REF_DAVIS17_SETS.values())):
        present = [name for name in names if (pred_dir / name).is_dir()]
        if present:
            if len(present) < 4:
                missing = [name for name in names if name not in present]
                raise DatasetError(pred_dir, f"Ref-DAVIS17 needs one folder per annotator set; missing {', '.join(missing)}")
            return {name: pred_dir / name for name in names}
    expected = ", ".join(REF_DAVIS17_SETS) + " (or " + ", ".join(REF_DAVIS17_SETS.values()) + ")"
    raise DatasetError(pred_dir, f"no annotator-set folders; expected {expected}")


# ----------------------------------------------------------------------------- server-scored splits


def write_submission(pred_dir: str | Path, expressions, out_zip: str | Path) -> Path:
    """Zip a split's per-expression masks as MeViS' and Ref-YouTube-VOS' servers take them:
    ``Annotations/<video>/<exp_id>/<frame>.png``, every expression and listed frame present.

    Args:
        pred_dir: ``<video>/<exp_id>/<frame>.png`` masks (``sparrow predict``'s layout).
        expressions: the split's :class:`~sparrow_plugin.data.mevis.ReferringExpression` s.
    Raises:
        DatasetError: a mask is missing (the server would score the expression 0, or reject
            the file), named with how many are missing in all.
    """
    pred_dir, out_zip = Path(pred_dir), Path(out_zip)
    files, missing = [], []
    for expression in expressions:
        for name in expression.frames:
            path = pred_dir / expression.video / expression.exp_id / f"{name}.png"
            (files if path.is_file() else missing).append(path)
    if missing:
        shown = ", ".join(str(p) for p in missing[:5]) + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
        raise DatasetError(pred_dir, f"{len(missing)} mask(s) of the split are missing, so no submission was written: {shown}")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, Path("Annotations") / path.relative_to(pred_dir))
    return out_zip


# ----------------------------------------------------------------------------- entry point

BENCHMARKS = {
    "mevis": "MeViS layout (MeViS valid_u, the synthetic benchmark); --split names the split",
    "davis17": "DAVIS 2017, unsupervised (--task semi-supervised for the other); --split is the subset (val)",
    "ref-davis17": "Ref-DAVIS17: four annotator-set folders, each unsupervised DAVIS 2017 val; the mean of the four",
    "revos": "ReVOS: --gt the ReVOS folder (meta_expressions_<split>_.json, mask_dict.json, mask_dict_foreground.json); --split valid",
    "stvg": "VidSTG or HC-STVG: --pred a predictions JSON, --gt the TubeDETR-style annotation JSON of the split",
    "videogcg": "VideoGCG: --pred a predictions JSON, --gt instruction_data/<split>.json; --phrase-model DIR for recall",
}


def evaluate(
    benchmark: str,
    pred_dir,
    gt_root,
    split: str | None = None,
    task: str = "unsupervised",
    expressions=None,
    phrase_model=None,
    progress: bool = True,
) -> EvaluationReport:
    if benchmark == "mevis":
        return evaluate_mevis(pred_dir, gt_root, split or "valid_u", progress)
    if benchmark == "revos":
        return evaluate_revos(pred_dir, gt_root, split or "valid", progress)
    if benchmark == "davis17":
        return evaluate_davis17(pred_dir, gt_root, task, split or "val", progress)
    if benchmark == "ref-davis17":
        return evaluate_ref_davis17(pred_dir, gt_root, expressions, progress)
    if benchmark == "stvg":
        from sparrow_plugin.evaluation_stvg import evaluate_stvg

        return evaluate_stvg(pred_dir, gt_root, progress=progress)
    if benchmark == "videogcg":
        from sparrow_plugin.evaluation_gcg import evaluate_gcg

        return evaluate_gcg(pred_dir, gt_root, phrase_model, progress=progress)
    raise SparrowError(f"unknown benchmark {benchmark!r}; benchmarks: {', '.join(BENCHMARKS)}")


def write_report(report: EvaluationReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=1))
