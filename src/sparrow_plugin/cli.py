"""The ``sparrow`` command.

    sparrow fit|validate|test|predict --config recipe.yaml [--config more.yaml] [--key value]
    sparrow test --config recipe.yaml --results out/results.json     # also writes the metrics
    sparrow data synth --out DIR --seed S                            # the synthetic benchmark
    sparrow report BEFORE.json AFTER.json                            # two result files side by side
    sparrow tiny-release --host videoglamm --out DIR --data ROOT     # a toy-size release of a host

The Lightning subcommands are LightningCLI's: recipes are YAML with ``class_path`` /
``init_args`` for the model and the data, layered with repeated ``--config``. Errors in
user input (a missing file, a broken frame, a checkpoint that does not fit) are printed
as one message, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from sparrow_plugin.errors import SparrowError

__all__ = ["SparrowCLI", "main", "run", "format_report", "quiet_known_noise"]


_HELP = (
    "SPARROW for pixel-grounded video LLMs. The Lightning subcommands below take recipes "
    "(--config recipes/...yaml); the other commands are `sparrow data synth --out DIR`, "
    "`sparrow report RESULTS.json ...` and `sparrow tiny-release --host NAME --out DIR --data ROOT` "
    "(each with its own --help)."
)


class SparrowCLI(LightningCLI):
    """LightningCLI with a ``--results`` file for ``test`` and a readable metrics table."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--results", type=str | None, default=None, help="write test metrics to this JSON file")

    def before_fit(self) -> None:
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


def format_report(columns: dict[str, dict]) -> str:
    """A table of J, F, J&F (and counts) per expression kind, one column per result set,
    then a warning line for each result set whose ``protocol_deviations`` are not empty.

    The count columns hold one number per result set, joined by '/': ``no [SEG]`` (answers
    without [SEG], scored as empty masks) and ``cut off`` (answers cut by max_new_tokens).
    """
    kinds = ["overall"] + sorted(
        {key.split("/")[0] for results in columns.values() for key in results if "/" in key}, key=_kind_order
    )
    names = list(columns)
    header = f"{'kind':<12}{'n':>5}{'no [SEG]':>10}{'cut off':>9}" + "".join(
        f"{name + ' J':>14}{'F':>8}{'J&F':>8}" for name in names
    )
    lines = [header, "-" * len(header)]
    for kind in kinds:
        prefix = "" if kind == "overall" else f"{kind}/"
        first = columns[names[0]]
        if f"{prefix}J" not in first:
            continue
        row = f"{kind:<12}{int(first.get(prefix + 'expressions', 0)):>5}"
        for count, width in (("no_seg", 10), ("truncated", 9)):
            row += f"{'/'.join(str(int(c.get(prefix + count, 0))) for c in columns.values()):>{width}}"
        for results in columns.values():
            row += f"{results.get(prefix + 'J', float('nan')):>14.3f}{results.get(prefix + 'F', float('nan')):>8.3f}"
            row += f"{results.get(prefix + 'J&F', float('nan')):>8.3f}"
        lines.append(row)
    for name, results in columns.items():
        if results.get("protocol_deviations"):
            lines.append(f"WARNING {name}: not the benchmark protocol: {'; '.join(results['protocol_deviations'])}")
    return "\n".join(lines)


def _kind_order(kind: str):
    from sparrow_plugin.data.synthetic import EXPRESSION_KINDS

    return (EXPRESSION_KINDS.index(kind) if kind in EXPRESSION_KINDS else len(EXPRESSION_KINDS), kind)


def _data_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sparrow data", description="dataset tools")
    sub = parser.add_subparsers(dest="tool", required=True)
    synth = sub.add_parser("synth", help="write the synthetic benchmark (MeViS layout)")
    synth.add_argument("--out", required=True, help="dataset root to create")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train-videos", type=int, default=None)
    synth.add_argument("--valid-videos", type=int, default=None)
    args = parser.parse_args(argv)
    from sparrow_plugin.data.synthetic import SyntheticConfig, generate_benchmark

    sizes = {k: v for k, v in (("train_videos", args.train_videos), ("valid_videos", args.valid_videos)) if v is not None}
    root = generate_benchmark(args.out, seed=args.seed, config=SyntheticConfig(**sizes))
    print(f"synthetic benchmark written to {root}")


def _tiny_release_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sparrow tiny-release", description="write a tiny release of a host's architecture")
    parser.add_argument("--host", required=True, help="a shipped host shim (videoglamm, unipixel, glus)")
    parser.add_argument("--out", required=True, help="release folder to write")
    parser.add_argument("--data", required=True, help="synthetic benchmark whose train expressions make the vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import importlib

    from sparrow_plugin.data.mevis import MeViSDataset
    from sparrow_plugin.registry import KNOWN_HOST_MODULES

    if args.host not in KNOWN_HOST_MODULES or args.host == "tiny":
        raise SparrowError(f"no tiny release for host {args.host!r}; hosts with one: videoglamm, unipixel, glus")
    writer = importlib.import_module(f"{KNOWN_HOST_MODULES[args.host]}.tiny").write_tiny_release
    vocabulary = [e.text for e in MeViSDataset(args.data, "train", image_size=32).expressions]
    print(f"tiny {args.host} release written to {writer(args.out, vocabulary, seed=args.seed)}")


def _report_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sparrow report", description="compare metric files side by side")
    parser.add_argument("files", nargs="+", help="JSON files written by `sparrow test --results`")
    parser.add_argument("--names", nargs="*", help="column names (default: file stems)")
    args = parser.parse_args(argv)
    names = args.names or [Path(f).stem for f in args.files]
    columns = {}
    for name, file in zip(names, args.files):
        path = Path(file)
        if not path.is_file():
            raise SparrowError(f"{path}: results file not found (write it with `sparrow test --results {path}`)")
        columns[name] = json.loads(path.read_text())
    print(format_report(columns))


def main(argv: list[str] | None = None) -> None:
    """The ``sparrow`` console script; ``argv`` defaults to the command line.

    Returns None: a console script's return value becomes its exit status.
    """
    try:
        run(argv)
    except Exception as error:
        # jsonargparse wraps errors raised while instantiating the recipe's classes (a
        # missing release, say); the user's problem is the SparrowError inside.
        cause = _sparrow_error_in(error)
        if cause is None:
            raise
        print(f"sparrow: error: {cause}", file=sys.stderr)
        sys.exit(2)


def run(argv: list[str] | None = None) -> SparrowCLI | None:
    """Run one ``sparrow`` command and return the finished :class:`SparrowCLI` (its
    ``trainer`` and ``model``) for the Lightning subcommands, None for the others.
    Errors propagate; :func:`main` turns the user's into one message."""
    args = list(sys.argv[1:] if argv is None else argv)
    quiet_known_noise()
    if args and args[0] == "data":
        return _data_command(args[1:])
    if args and args[0] == "report":
        return _report_command(args[1:])
    if args and args[0] == "tiny-release":
        return _tiny_release_command(args[1:])
    return SparrowCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": _HELP},
        args=argv,  # None: LightningCLI reads sys.argv itself
    )


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


def _sparrow_error_in(error: BaseException | None) -> SparrowError | None:
    while error is not None and not isinstance(error, SparrowError):
        error = error.__cause__ or error.__context__
    return error


if __name__ == "__main__":
    main()
