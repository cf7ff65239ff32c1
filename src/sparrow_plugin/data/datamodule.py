"""The Lightning DataModule for referring video segmentation, in each benchmark's own layout."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader, Subset

from sparrow_plugin.data.collate import collate_referring
from sparrow_plugin.data.layouts import LAYOUTS, dataset_class
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.data.mixing import MixSampler, TrainSource
from sparrow_plugin.errors import ConfigError, DatasetError, SparrowWarning
from sparrow_plugin.interfaces import FrameRequest
from sparrow_plugin.tsf.cache import TrackCache, dataset_record

__all__ = ["ReferringVideoDataModule"]


class ReferringVideoDataModule(L.LightningDataModule):
    """Train / validation / test splits of one referring video segmentation dataset.

    Args:
        root: the dataset's root folder, as downloaded.
        layout: ``mevis`` (MeViS, the synthetic benchmark), ``ref-youtube-vos``
            (Ref-YouTube-VOS, Ref-DAVIS17 as converted), ``revos`` or ``lv-vis``
            (``docs/data_formats.md``).
        train_split, val_split, test_split: split folder names.
        predict_split: split ``sparrow predict`` runs on (default: the test split; MeViS
            ``valid`` has no masks and is scored by the benchmark server).
        image_size: frames are resized to this square size (the decoder's input).
        train_frames: decoder frames per training sample (a random sorted subset holding
            a frame where the target is visible); None = all. The host's LLM frames are
            sampled apart, by its own rule (``set_frame_request``, which the model calls).
        eval_frames: frames per evaluation sample; None = all (the benchmark protocol;
            anything else is reported as a deviation from it).
        batch_size, eval_batch_size: samples per batch.
        num_workers: DataLoader workers.
        val_limit: use only the first N validation samples (quick checks); None = all.
        tsf_tracks: the target tracks TSF reads in training: ``annotation`` (from the
            split's masks, the released code's way), a TSF cache folder (``sparrow tsf
            build``), or None; a model that trains with TSF asks for ``annotation`` when
            none is set.
        tsf_eval_tracks: the tracks evaluation samples carry for a model that reads TSF at
            inference from the data (``tsf.infer: dataset``): a cache folder built for the
            evaluated split (``sparrow tsf build --split``), or ``annotation`` (the split's
            own masks: an oracle, so results record it as a deviation from the protocol).
        train_mix: train on several datasets instead of ``train_split``: a list of
            :class:`~sparrow_plugin.data.mixing.TrainSource` (root, layout, split, weight),
            drawn by weight, reproducibly for ``mix_seed``; a resumed run draws the batches
            the interrupted one would have drawn next (``sparrow_plugin.data.mixing``).
        samples_per_epoch: draws per epoch of the mix; None = all its sources' samples.
        mix_seed: the seed of the mix's stream of draws.
        benchmark: score ``sparrow test`` with this benchmark's own protocol, on the
            predicted masks, as ``sparrow eval`` does, instead of per expression:
            ``ref-davis17`` (a ``ref-youtube-vos`` split of Ref-DAVIS17; the converted
            expressions say each one's object and annotator set) or ``revos``. None: the
            MeViS protocol, in the test loop.
        benchmark_root: the ground truth that protocol reads, when it is not ``root``
            (``ref-davis17``: the DAVIS 2017 folder).
    """

    def __init__(
        self,
        root: str | Path,
        layout: Literal["mevis", "ref-youtube-vos", "revos", "lv-vis"] = "mevis",
        train_split: str = "train",
        val_split: str = "valid_u",
        test_split: str = "valid_u",
        predict_split: str | None = None,
        image_size: int = 1024,
        train_frames: int | None = 8,
        eval_frames: int | None = None,
        batch_size: int = 2,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        val_limit: int | None = None,
        tsf_tracks: str | None = None,
        tsf_eval_tracks: str | None = None,
        train_mix: list[TrainSource] | None = None,
        samples_per_epoch: int | None = None,
        mix_seed: int = 0,
        benchmark: Literal["ref-davis17", "revos"] | None = None,
        benchmark_root: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if train_mix is not None and tsf_tracks not in (None, "annotation"):
            raise ConfigError(f"tsf_tracks={tsf_tracks!r}: a TSF cache is built for one split; a train_mix reads tsf_tracks: annotation")
        self._consumed = (0, 0)  # (epoch, training batches of it consumed), saved in checkpoints for the mix
        self.root = Path(root)
        self.frame_request: FrameRequest | None = None
        self._datasets: dict[tuple[str, str], MeViSDataset] = {}
        self._eval_tracks_read = False  # set by a model that reads TSF from the data at inference

    @classmethod
    def missing_inputs(cls, stage: str, init_args: Mapping[str, Any]) -> list[str]:
        """The splits a ``stage`` (fit, validate, test, predict) reads that are not on disk,
        as ``"<path>: <what>"``, reading nothing; the command line asks before anything loads."""
        arguments = inspect.signature(cls).bind(**init_args)
        arguments.apply_defaults()
        hp = arguments.arguments
        mix = _train_sources(hp["train_mix"])
        splits = {
            "fit": ([] if mix else [hp["train_split"]]) + [hp["val_split"]],
            "validate": [hp["val_split"]],
            "test": [hp["test_split"]],
            "predict": [hp["predict_split"] or hp["test_split"]],
        }[stage]
        root, layout = Path(hp["root"]), hp["layout"]
        sources = [(root, layout, split) for split in dict.fromkeys(splits)]
        if stage == "fit":
            sources += [(Path(source.root), source.layout, source.split) for source in mix]
        missing = []
        if hp["benchmark"] == "ref-davis17" and stage == "test" and not (hp["benchmark_root"] and Path(hp["benchmark_root"]).is_dir()):
            missing.append(f"{hp['benchmark_root']}: benchmark ref-davis17 scores against the DAVIS 2017 folder; set data.init_args.benchmark_root to it")
        for root, layout, split in sources:
            if layout not in LAYOUTS:
                missing.append(f"{root}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
                continue
            paths = LAYOUTS[layout].layout_paths(root, split)
            absent = [str(paths[part].relative_to(root)) for part in ("frames", "expressions") if not paths[part].exists()]
            if absent:
                missing.append(f"{root / split}: the {split!r} split in the {layout} layout, without {' and '.join(absent)} (docs/data_formats.md)")
        return missing

    def require_tsf_tracks(self) -> None:
        """A model that trains with TSF calls this: training samples then carry the target's
        track (``annotation`` unless the recipe names a cache)."""
        if self.hparams.tsf_tracks is None:
            self.hparams.tsf_tracks = "annotation"
            self._datasets.clear()

    def require_tsf_eval_tracks(self) -> None:
        """A model that reads TSF from the data at inference calls this: evaluation samples
        then carry the target's track from ``tsf_eval_tracks``.

        Raises:
            ConfigError: ``tsf_eval_tracks`` is not set (no default: the split's own
                annotation is an oracle, chosen only on purpose).
        """
        if self.hparams.tsf_eval_tracks is None:
            raise ConfigError(
                "the model reads TSF at inference from the data (tsf.infer: dataset): set the data module's tsf_eval_tracks "
                "to a cache built for the evaluated split (sparrow tsf build --split SPLIT), or to annotation (an oracle)"
            )
        if not self._eval_tracks_read:
            self._eval_tracks_read = True
            self._datasets.clear()

    def _tracks(self, split: str, source: str | None) -> str | dict | None:
        if source is None or source == "annotation":
            return source
        return TrackCache(source, {"dataset": dataset_record(self.root, split, self.hparams.layout)}).read()

    def set_frame_request(self, request: FrameRequest | None) -> None:
        """Read the host's LLM frames with every sample (see ``FrameRequest``)."""
        if request != self.frame_request:
            self.frame_request = request
            self._datasets.clear()

    def dataset(self, split: str, role: Literal["train", "eval"]) -> MeViSDataset:
        """A split read for training (augmented sampling) or evaluation; cached per (split,
        role), so a validation split equal to the training split is read as evaluation."""
        if (split, role) not in self._datasets:
            hp = self.hparams
            # training reads tsf_tracks; evaluation tsf_eval_tracks, once a model asked for them
            tracks = hp.tsf_tracks if role == "train" else hp.tsf_eval_tracks if self._eval_tracks_read else None
            self._datasets[split, role] = dataset_class(hp.layout)(
                self.root,
                split,
                image_size=hp.image_size,
                num_frames=hp.train_frames if role == "train" else hp.eval_frames,
                random_frames=role == "train",
                frame_request=self.frame_request,
                tsf_tracks=self._tracks(split, tracks),
            )
        return self._datasets[split, role]

    def test_split_has_masks(self) -> bool:
        """False for a split only the benchmark's server scores (MeViS and Ref-YouTube-VOS
        ``valid``): ``sparrow test`` then writes its submission instead."""
        return self.dataset(self.hparams.test_split, "eval").has_masks

    def score_predictions(self, masks_dir: Path):
        """The ``benchmark``'s own evaluation of the test split's predicted masks
        (``<video>/<exp_id>/<frame>.png``): an :class:`~sparrow_plugin.evaluation.EvaluationReport`."""
        from sparrow_plugin.evaluation import evaluate

        hp = self.hparams
        split = hp.test_split
        if hp.benchmark == "ref-davis17":
            expressions = self.dataset(split, "eval").meta_path
            return evaluate("ref-davis17", masks_dir, hp.benchmark_root, expressions=expressions)
        return evaluate(hp.benchmark, masks_dir, hp.benchmark_root or self.root, split=split)

    def protocol_deviations(self, scoring: bool = True) -> list[str]:
        """How evaluation here differs from the benchmark's protocol (empty: it does not);
        ``scoring`` False for predictions, which the scoring protocol does not concern."""
        eval_frames = self.hparams.eval_frames
        deviations = [f"eval_frames={eval_frames}: only {eval_frames} frames of each video are scored"] if eval_frames is not None else []
        if scoring and self.hparams.benchmark is not None:
            return deviations  # scored by the benchmark's own protocol
        if scoring and self.hparams.layout == "revos":
            deviations.append(
                "overall J&F over all expressions: ReVOS' own overall is the mean of its referring and reasoning means, "
                "with A and R beside J and F (set data.init_args.benchmark: revos, or sparrow eval --benchmark revos)"
            )
        if scoring and self.hparams.layout == "ref-youtube-vos":
            deviations.append(
                "per-expression J&F (the MeViS protocol) on a Ref-YouTube-VOS-layout split: Ref-DAVIS17's own number is "
                "unsupervised DAVIS per annotator set (set data.init_args.benchmark: ref-davis17 and benchmark_root, or sparrow eval --benchmark ref-davis17)"
            )
        if self._eval_tracks_read and self.hparams.tsf_eval_tracks == "annotation":
            deviations.append("tsf_eval_tracks=annotation: TSF at inference reads the split's own masks (an oracle)")
        return deviations

    def kinds(self) -> list[str]:
        """Expression kinds of the evaluation splits (for per-kind reporting)."""
        splits = {self.hparams.val_split, self.hparams.test_split}
        layout = dataset_class(self.hparams.layout)
        present = [split for split in splits if layout.layout_paths(self.root, split)["expressions"].is_file()]
        return sorted({kind for split in present for kind in self.dataset(split, "eval").kinds()})

    def train_dataloader(self) -> DataLoader:
        if self.hparams.train_mix:
            return self._mix_loader()
        return self._loader(self.dataset(self.hparams.train_split, "train"), self.hparams.batch_size, shuffle=True)

    def _mix_loader(self) -> DataLoader:
        hp = self.hparams
        sources = _train_sources(hp.train_mix)
        datasets = [
            dataset_class(source.layout)(
                source.root, source.split, image_size=hp.image_size, num_frames=hp.train_frames, random_frames=True,
                frame_request=self.frame_request, tsf_tracks=hp.tsf_tracks,
            )
            for source in sources
        ]
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = MixSampler([len(d) for d in datasets], [s.weight for s in sources], hp.samples_per_epoch, hp.mix_seed, world, rank)
        epoch = trainer.current_epoch if trainer is not None else 0
        sampler.set_epoch(epoch)
        consumed_epoch, consumed = self._consumed
        if consumed_epoch == epoch:  # resuming inside this epoch: what was trained on is not drawn again
            sampler.skip = consumed * hp.batch_size
        return DataLoader(
            ConcatDataset(datasets), batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
            collate_fn=collate_referring, persistent_workers=hp.num_workers > 0,
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Counts the training batches of the epoch that reached the model (the checkpoint
        records it, so a resumed mix skips them)."""
        trainer = self.trainer
        if self.hparams.train_mix and trainer is not None and trainer.training:
            epoch, consumed = self._consumed
            self._consumed = (trainer.current_epoch, consumed + 1 if epoch == trainer.current_epoch else 1)
        return batch

    def state_dict(self) -> dict:
        return {"mix_consumed": list(self._consumed)} if self.hparams.train_mix else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if "mix_consumed" in state_dict:
            self._consumed = tuple(state_dict["mix_consumed"])

    def val_dataloader(self) -> DataLoader:
        dataset = self.dataset(self.hparams.val_split, "eval")
        if self.hparams.val_limit is not None:
            dataset = Subset(dataset, range(min(self.hparams.val_limit, len(dataset))))
        return self._loader(dataset, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        dataset = self.dataset(self.hparams.test_split, "eval")
        if not dataset.has_masks:
            raise DatasetError(
                dataset.mask_path,
                f"split {self.hparams.test_split!r} has no masks, so `sparrow test` cannot score it; "
                "it is scored by the benchmark's server (`sparrow test` writes its submission zip instead)",
            )
        for deviation in self.protocol_deviations():
            warnings.warn(f"test results are not the benchmark's protocol: {deviation}", SparrowWarning)
        return self._loader(dataset, self.hparams.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        split = self.hparams.predict_split or self.hparams.test_split
        for deviation in self.protocol_deviations(scoring=False):
            warnings.warn(f"predictions are no benchmark submission: {deviation}", SparrowWarning)
        return self._loader(self.dataset(split, "eval"), self.hparams.eval_batch_size, shuffle=False)

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_referring,
            persistent_workers=self.hparams.num_workers > 0,
        )


def _train_sources(train_mix) -> list[TrainSource]:
    """A recipe's train_mix entries (mappings from YAML, or TrainSource objects) as TrainSource."""
    return [TrainSource(**source) if isinstance(source, Mapping) else source for source in train_mix or []]
