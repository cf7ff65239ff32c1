"""Pictures while training: mask overlays of each validation, and learning curves.

``ValidationPictures`` (``sparrow fit`` adds one; ``--val_overlays N`` sets how many, 0 for
none) draws the first N validation samples of every validation run with
:func:`~sparrow_plugin.predict.overlay_strip` (ground truth above the prediction) and
writes them

* as PNGs in the logger's folder, ``<log_dir>/overlays/step<global step>/<video>_<exp_id>.png``
  (the CSV logger's ``version_<k>`` folder, for instance), and
* into TensorBoard, as images tagged ``val/overlay/<video>_<exp_id>`` at the global step,
  when a logger is a ``TensorBoardLogger``.

``plot_curves`` draws a run's logged metrics (the CSV logger's ``metrics.csv``): the
training loss over steps, and the validation J&F, overall and per expression kind;
``sparrow report --curves`` calls it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from sparrow_plugin.errors import SparrowError
from sparrow_plugin.predict import overlay_strip

__all__ = ["ValidationPictures", "plot_curves"]


class ValidationPictures(Callback):
    """Overlays of the first ``count`` validation samples, each validation (rank 0)."""

    def __init__(self, count: int = 4):
        self.count = count
        self._drawn = 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._drawn = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._drawn >= self.count or outputs is None:
            return
        for index, prediction in enumerate(outputs):
            if self._drawn >= self.count:
                return
            video, exp_id = batch.keys[index]
            masks = prediction.masks
            if masks is None:  # no [SEG]: an empty mask, labelled so
                masks = torch.zeros(len(batch.frame_names[index]), *batch.original_sizes[index], dtype=torch.bool)
            ground_truth = batch.full_masks[index] if batch.full_masks is not None else None
            strip = overlay_strip(
                batch.frames[index], masks, f"{batch.queries[index]} -> {prediction.answer}",
                ground_truth=ground_truth, frame_labels=batch.frame_names[index], emitted_seg=prediction.masks is not None,
            )
            self._write(trainer, f"{video}_{exp_id}", strip)
            self._drawn += 1

    def _write(self, trainer, name: str, picture) -> None:
        step = trainer.global_step
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "overlays" / f"step{step}"
        folder.mkdir(parents=True, exist_ok=True)
        picture.save(folder / f"{name}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"val/overlay/{name}", np.asarray(picture), step, dataformats="HWC")


def plot_curves(metrics_csv: str | Path, out: str | Path) -> Path:
    """Two panels of a CSV logger's ``metrics.csv`` as a PNG at ``out``: the training loss
    per logged step, and every validation J&F column (overall and per kind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_csv, out = Path(metrics_csv), Path(out)
    if not metrics_csv.is_file():
        raise SparrowError(f"{metrics_csv}: file not found (a CSV logger's metrics.csv)")
    with metrics_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    columns = {name for row in rows for name, value in row.items() if value not in ("", None)}
    validation = sorted((c for c in columns if c.startswith("val/") and c.endswith("J&F")), key=lambda c: (c != "val/J&F", c))
    panels = ([["train/loss"]] if "train/loss" in columns else []) + ([validation] if validation else [])
    if not panels:
        raise SparrowError(f"{metrics_csv}: no train/loss or val/...J&F column to draw (columns: {', '.join(sorted(columns)) or 'none'})")
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.4), squeeze=False)
    for axis, names in zip(axes[0], panels):
        for name in names:  # the overall J&F bold, each kind's thin beside it
            points = [(int(row["step"]), float(row[name])) for row in rows if row.get(name) not in ("", None)]
            steps, values = zip(*points)
            overall = name in ("train/loss", "val/J&F")
            axis.plot(steps, values, marker="o" if len(points) < 30 else None, linewidth=2 if overall else 1, alpha=1 if overall else 0.6,
                      label=name.removeprefix("val/").removesuffix("/J&F") if not overall else name)
        axis.set_title("training loss" if names == ["train/loss"] else "validation J&F")
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if len(names) > 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
