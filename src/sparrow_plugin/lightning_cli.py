"""``sparrow fit|validate|test|predict``: LightningCLI, checked at the boundary.

Before anything loads, a run is checked once:

1. the recipe files and ``--key value`` settings: every key at every depth must be
   accepted (``recipes.py``);
2. the checkpoint (``--ckpt_path FILE``): it must be a readable Lightning checkpoint, and one
   trained as the model the recipe builds (``checkpoints.py``). The recipe and the command
   line decide the run: Lightning's own CLI would instead rebuild the model from the
   checkpoint's stored settings and silently drop the recipe's. With
   ``--ckpt_settings checkpoint`` the model is built as the checkpoint was trained, and
   every setting taken from it instead of the recipe is listed;
3. what the run needs: a GPU for a GPU recipe, the host's downloads, the dataset's splits,
   all listed in one message.

Then the trainer reads every checkpoint through :class:`CheckedCheckpointIO`
(``--ckpt_path last`` included), and the model refuses one trained as another model.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from sparrow_plugin.checkpoints import read_checkpoint
from sparrow_plugin.cli import format_report
from sparrow_plugin.config import SparrowConfig, flat_settings
from sparrow_plugin.errors import CheckpointError, ConfigError, SparrowError, SparrowWarning
from sparrow_plugin.recipes import check_settings, config_files, import_class
from sparrow_plugin.registry import KNOWN_HOST_MODULES
from sparrow_plugin.wrapper import SparrowWrapper, check_recipe_fits_checkpoint

__all__ = ["SparrowCLI", "SparrowArgumentParser", "CheckedCheckpointIO", "build_cli", "quiet_known_noise"]

# --ckpt_path values Lightning resolves itself (from the checkpoint callbacks' folders)
_CHECKPOINT_KEYWORDS = ("last", "best", "hpc", "registry")


def build_cli(argv: list[str] | None) -> "SparrowCLI":
    quiet_known_noise()
    warnings.formatwarning = _format_warning
    return SparrowCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_class=SparrowArgumentParser,
        parser_kwargs={"description": "SPARROW for pixel-grounded video LLMs (see `sparrow --help` for every command)"},
        args=argv,  # None: LightningCLI reads sys.argv itself
    )


class SparrowArgumentParser(LightningArgumentParser):
    """Lightning's parser, whose usage errors are one message (a SparrowError) instead of
    the whole usage text. (Unknown keys are caught before it parses, see ``recipes.py``.)"""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse is trying alternatives; it handles this itself
            return super().error(message, ex)
        lines = message.splitlines()
        raise SparrowError(f"{lines[0]}{_indented(lines[1:])} (see {self.prog.replace(' [options]', '')} --help)")


class SparrowCLI(LightningCLI):
    """LightningCLI with the checks above, ``--results`` for ``test``, a default prediction
    writer for ``predict`` and a readable metrics table."""

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser.add_argument(
            "--ckpt_settings",
            type=Literal["recipe", "checkpoint"],
            default="recipe",
            help="with --ckpt_path: `recipe` (default) builds the model from the recipe and command line and refuses a "
            "checkpoint trained as another model; `checkpoint` builds it as the checkpoint was trained",
        )
        if subcommand == "test":
            parser.add_argument("--results", type=str | None, default=None, help="also write the metrics to this JSON file")
        if subcommand in ("fit", "validate"):
            parser.add_argument(
                "--val_overlays", type=int, default=4,
                help="mask overlays of the first N validation samples, each validation, as PNGs in the logger's folder "
                "and in TensorBoard (0: none; sparrow_plugin.pictures)",
            )
        if subcommand == "predict":
            parser.add_argument(
                "--output_dir", type=str | None, default=None,
                help="where masks, answers and overlays go (default: <trainer.default_root_dir>/predictions), "
                "unless the recipe has its own prediction writer",
            )
        return parser

    # ------------------------------------------------------------------ parsing

    def parse_arguments(self, parser, args) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        self.recipe_files = config_files(argv)
        subcommand = argv[0] if argv else None
        if subcommand in self._subcommand_parsers and not {"-h", "--help"} & set(argv):
            subparser = self._subcommand_parsers[subcommand]
            check_settings(argv[1:], subparser.get_defaults().keys(), subparser._option_string_actions)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Read ``--ckpt_path FILE`` once, before anything loads, and apply the settings rule
        (the module docstring); Lightning's own version takes the checkpoint's settings."""
        self.missing_checkpoint = None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in _CHECKPOINT_KEYWORDS:
            return
        if not Path(ckpt_path).exists():
            self.missing_checkpoint = f"{ckpt_path}: checkpoint file not found"  # listed with the other missing inputs
            return
        checkpoint = read_checkpoint(ckpt_path, weights_only=config.get("weights_only"))
        if config.get("ckpt_settings") == "checkpoint":
            self._take_checkpoint_settings(subcommand, checkpoint)
        else:
            _check_checkpoint_fits(ckpt_path, checkpoint, config.get("model"))

    def _take_checkpoint_settings(self, subcommand: str, checkpoint: dict) -> None:
        """The model as the checkpoint was trained; the recipe's host paths stay when it names
        the same host (they are where the host lies on this machine)."""
        recipe = self.config[subcommand].get("model")
        recipe_args = recipe.init_args.as_dict() if recipe is not None and hasattr(recipe, "init_args") else {}
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if not hparams:
            raise CheckpointError(self.config[subcommand].ckpt_path, "stores no settings to build the model from; use its recipe instead of --ckpt_settings checkpoint")
        if "_class_path" in hparams:  # as Lightning's own CLI reads what its instantiator stored
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        model = self.config[subcommand].model
        taken = model.init_args.as_dict()
        if recipe_args.get("base") == taken.get("base") and "host_args" in recipe_args:
            model.init_args.host_args = recipe_args["host_args"]
            taken["host_args"] = recipe_args["host_args"]
        recipe_flat, taken_flat = _flat(recipe_args), _flat(taken)
        changes = [
            f"{key}: {taken_flat.get(key)!r} (the recipe says {recipe_flat.get(key)!r})"
            for key in sorted(set(recipe_flat) | set(taken_flat))
            if recipe_flat.get(key) != taken_flat.get(key)
        ]
        if changes and rank_zero_only.rank == 0:
            print("sparrow: building the model as the checkpoint was trained (--ckpt_settings checkpoint):\n  " + "\n  ".join(changes), file=sys.stderr)

    # ------------------------------------------------------------------ before anything loads

    def before_instantiate_classes(self) -> None:
        """One message for everything the run needs and does not have."""
        config = self.config[self.subcommand]
        problems = [self.missing_checkpoint] if self.missing_checkpoint else []
        problems += _accelerator_problems(config, self.recipe_files)
        for section in ("model", "data"):
            node = config.get(section)
            cls = _class_of(node)
            if cls is not None and hasattr(cls, "missing_inputs"):
                problems += cls.missing_inputs(self.subcommand, node.init_args.as_dict())
        if problems:
            raise SparrowError("this run cannot start:\n  " + "\n  ".join(problems))

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        strategy = self.trainer.strategy
        if not isinstance(strategy.checkpoint_io, CheckedCheckpointIO):
            strategy.checkpoint_io = CheckedCheckpointIO(strategy.checkpoint_io)

    # ------------------------------------------------------------------ per subcommand

    def _add_validation_pictures(self) -> None:
        from sparrow_plugin.pictures import ValidationPictures

        count = self.config[self.subcommand].get("val_overlays", 0)
        if count and not any(isinstance(c, ValidationPictures) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(ValidationPictures(count))

    def before_validate(self) -> None:
        self._add_validation_pictures()

    def before_fit(self) -> None:
        self._add_validation_pictures()
        data = self.config.get(self.subcommand, {}).get("data")
        if data is not None and hasattr(data, "init_args") and data.init_args.get("train_mix"):
            # a train_mix resumes inside an epoch through the data module's own state
            # (sparrow_plugin.data.mixing), which Lightning's check does not see
            warnings.filterwarnings(
                "ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended", module=r"lightning\.pytorch\.loops"
            )
        if self.config.get(self.subcommand, {}).get("ckpt_path") == "last":
            # resuming into the run's own checkpoint folder: that it is not empty is the point
            warnings.filterwarnings(
                "ignore", message=r"Checkpoint directory .* exists and is not empty", category=UserWarning,
                module=r"lightning\.pytorch\.callbacks\.model_checkpoint$",
            )

    def before_test(self) -> None:
        # after_test prints the results as a table per expression kind; Lightning's own
        # table of the same numbers (as float32) would print them twice
        self.config_init[self.subcommand]["verbose"] = False

    def test(self, model, datamodule=None, **kwargs) -> None:
        """``sparrow test``: a split with masks is scored in the test loop (the MeViS
        protocol), or, when the data module names a ``benchmark``, its masks are predicted
        and scored by that benchmark's own protocol (as ``sparrow eval``). A split only the
        benchmark's server scores gets its masks written and zipped in the server's layout,
        and no number is claimed."""
        if datamodule is None or not hasattr(datamodule, "test_split_has_masks"):
            self.trainer.test(model=model, datamodule=datamodule, **kwargs)
        elif not datamodule.test_split_has_masks():
            self._write_submission(model, datamodule, kwargs.get("ckpt_path"))
        elif datamodule.hparams.benchmark is not None:
            self._score_with_the_benchmarks_protocol(model, datamodule, kwargs.get("ckpt_path"))
        else:
            self.trainer.test(model=model, datamodule=datamodule, **kwargs)

    def _predicted_masks(self, model, datamodule, ckpt_path) -> tuple[Path, Path]:
        """Predict the test split's masks into ``<folder>/<split>_masks``; the folder is the
        ``--results`` file's, else the trainer's root."""
        from sparrow_plugin.predict import MaskWriter

        results = self.config[self.subcommand].get("results")
        folder = Path(results).parent if results else Path(self.trainer.default_root_dir)
        split = datamodule.hparams.test_split
        masks = folder / f"{split}_masks"
        datamodule.hparams.predict_split = split
        self.trainer.callbacks.append(MaskWriter(str(masks), max_overlays=0))
        self.trainer.predict(model=model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
        return folder, masks

    def _write_submission(self, model, datamodule, ckpt_path) -> None:
        from sparrow_plugin.evaluation import write_submission

        folder, masks = self._predicted_masks(model, datamodule, ckpt_path)
        split = datamodule.hparams.test_split
        if self.trainer.is_global_zero:
            archive = write_submission(masks, datamodule.dataset(split, "eval").expressions, folder / f"{split}_submission.zip")
            print(
                f"split {split!r} has no masks: its numbers come from the benchmark's server. Upload {archive} "
                f"(Annotations/<video>/<exp_id>/<frame>.png; the masks are also in {masks})"
            )

    def _score_with_the_benchmarks_protocol(self, model, datamodule, ckpt_path) -> None:
        from sparrow_plugin.evaluation import write_report

        _, masks = self._predicted_masks(model, datamodule, ckpt_path)
        if not self.trainer.is_global_zero:
            return
        report = datamodule.score_predictions(masks)
        print(report.format())
        path = self.config[self.subcommand].get("results")
        if path:
            results = {"benchmark": report.benchmark, **report.results, "scored_zero": [vars(p) for p in report.problems if p.scored_zero]}
            Path(path).write_text(json.dumps(results, indent=1, default=float))
            write_report(report, Path(path).with_suffix(".report.json"))
            print(f"metrics written to {path} (per sample: {Path(path).with_suffix('.report.json')})")

    def after_test(self) -> None:
        results = getattr(self.model, "test_results", None)
        if not results:
            return
        print(format_report({"result": results}))
        path = self.config.get(self.subcommand, {}).get("results")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # as computed, "protocol_deviations" included: `sparrow report` warns from the file
            Path(path).write_text(json.dumps(results, indent=1, sort_keys=True, default=float))
            print(f"metrics written to {path}")

    def before_predict(self) -> None:
        """Predictions are written by default: a MaskWriter into ``--output_dir``."""
        from sparrow_plugin.predict import MaskWriter

        output_dir = self.config[self.subcommand].get("output_dir")
        writers = [c for c in self.trainer.callbacks if isinstance(c, BasePredictionWriter)]
        if writers and output_dir:
            raise ConfigError("--output_dir and a prediction writer in trainer.callbacks both say where predictions go; keep one")
        if not writers:
            self.prediction_dir = Path(output_dir or Path(self.trainer.default_root_dir) / "predictions")
            self.trainer.callbacks.append(MaskWriter(str(self.prediction_dir)))
        else:
            self.prediction_dir = getattr(writers[0], "output_dir", None)

    def after_predict(self) -> None:
        if self.prediction_dir is not None and self.trainer.is_global_zero:
            print(f"predictions written to {self.prediction_dir}")


class CheckedCheckpointIO(CheckpointIO):
    """The trainer's checkpoint IO, loading through :func:`read_checkpoint` (so a broken
    file is one message, whichever command or strategy reads it); saving is the wrapped
    IO's."""

    def __init__(self, wrapped: CheckpointIO):
        self.wrapped = wrapped

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        self.wrapped.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location if map_location is not None else "cpu", weights_only=weights_only)

    def remove_checkpoint(self, path) -> None:
        self.wrapped.remove_checkpoint(path)

    def teardown(self) -> None:
        self.wrapped.teardown()


def _check_checkpoint_fits(ckpt_path, checkpoint: dict, model) -> None:
    """:func:`~sparrow_plugin.wrapper.check_recipe_fits_checkpoint` for the parsed model node."""
    model_class = _class_of(model)
    if model_class is not None and issubclass(model_class, SparrowWrapper):
        check_recipe_fits_checkpoint(ckpt_path, checkpoint, model.init_args.as_dict())


def _accelerator_problems(config, recipe_files) -> list[str]:
    accelerator = str(config.get("trainer", {}).get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return []
    where = ", ".join(map(str, recipe_files)) or "the command line"
    base = _model_base(config)
    if base in KNOWN_HOST_MODULES and base != "tiny":
        tiny = f"its tiny form runs on a CPU: make train BASE={base} TINY=1, or add --config recipes/overlays/tiny_cpu.yaml with a tiny release (sparrow tiny-release)"
    else:
        tiny = "its CPU counterparts are the recipes under recipes/tiny/"
    return [f"{where}: trainer.accelerator is {accelerator!r}, and this machine has no CUDA GPU (torch.cuda.is_available() is False). This recipe needs GPUs; {tiny}"]


def _model_base(config):
    model = config.get("model")
    try:
        return model.init_args.base
    except AttributeError:
        return None


def _class_of(node):
    return import_class(node.class_path) if node is not None and hasattr(node, "class_path") else None


def _flat(init_args: dict) -> dict:
    """A model's init args as flat ``key: value`` pairs (for listing what differs)."""
    flat = {}
    for key, value in init_args.items():
        if key == "config":
            settings = value if isinstance(value, SparrowConfig) else SparrowConfig.from_dict(value or {})
            flat.update({f"config.{k}": v for k, v in flat_settings(settings).items()})
        elif isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        else:
            flat[key] = value
    return flat


def _indented(lines: list[str]) -> str:
    return "".join(f"\n  {line.strip()}" for line in lines if line.strip())


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Ours as ``sparrow: warning: ...``; others with their source file, without the echo
    of the source line that raised them (noise on a terminal)."""
    if issubclass(category, SparrowWarning):
        return f"sparrow: warning: {message}\n"
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"


class _DropTips(logging.Filter):
    """Drops Lightning's advertisements for its cloud services; its other notes stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip: For seamless cloud")


_DROP_TIPS = _DropTips()


def quiet_known_noise() -> None:
    """Silences third-party messages that are known, harmless and repeated on every run,
    each by its exact message and source; every other warning still shows."""
    # FutureWarning of torch 2.14: Lightning 2.6's own pytree helper still builds `LeafSpec()`;
    # printed once per run, nothing a user can change (Lightning's to fix, not ours)
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree$",
    )
    # `make train` passes `--ckpt_path last` so that an interrupted run resumes; on the first
    # run there is nothing to resume, which Lightning reports with a misleading hint to set
    # save_last (the recipes do). A resumed run still says "Restoring states from ..."
    warnings.filterwarnings(
        "ignore", message=r'\.\w+\(ckpt_path="last"\) is set, but there is no last checkpoint available',
        category=UserWarning, module=r"lightning\.pytorch\.trainer\.connectors\.checkpoint_connector$",
    )
    # `sparrow test` on several devices: the padding DistributedSampler repeats samples, but
    # test reports only MeViSMetric, which counts each sample index once. (Not filtered for
    # `validate`, whose epoch-mean losses do see the repeats.)
    warnings.filterwarnings(
        "ignore", message=r"Using `DistributedSampler` with the dataloaders\. During `trainer\.test\(\)`",
        category=UserWarning, module=r"lightning\.pytorch\.trainer\.connectors\.data_connector$",
    )
    # "💡 Tip: For seamless cloud logging ... litlogger" (every run) and "... cloud uploads ...
    # litmodels" (runs without a ModelCheckpoint): rank_zero_info records on these loggers
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DROP_TIPS)  # the same filter object is added once
