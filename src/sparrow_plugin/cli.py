"""The ``sparrow`` command.

    sparrow fit|validate|test|predict --config recipe.yaml [--config more.yaml] [--key value]
    sparrow test --config recipe.yaml --results out/results.json     # also writes the metrics
    sparrow predict --config recipe.yaml --output_dir out/            # masks, answers, overlays
    sparrow predict VIDEO "the red car" --config recipe.yaml --ckpt_path C --out DIR  # your own video
    sparrow data synth --out DIR --seed S                            # the synthetic benchmark
    sparrow report BEFORE.json AFTER.json                            # result files side by side
    sparrow eval --benchmark mevis --pred DIR --gt ROOT --split valid_u # score any model's PNG folder
    sparrow tiny-release --host videoglamm --out DIR --data ROOT     # a toy-size release of a host
    sparrow tsf build --config recipe.yaml --out DIR                 # the TSF track cache of a split
    sparrow demo --config recipe.yaml --ckpt_path C                  # a web page on your videos

The Lightning subcommands are LightningCLI's (``sparrow_plugin.lightning_cli``): recipes
are YAML with ``class_path`` / ``init_args`` for the model and the data, layered with
repeated ``--config``. This module dispatches and runs the other commands without
importing Lightning, so they answer at once. Errors in user input (a missing file, a
broken frame, a checkpoint that does not fit, a mistyped key) are printed as one message,
without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparrow_plugin.errors import SparrowError

__all__ = ["COMMANDS", "main", "run", "format_report"]

LIGHTNING_COMMANDS = {
    "fit": "train a recipe (resume an interrupted run with --ckpt_path last)",
    "validate": "run a recipe's validation split",
    "test": "score a model on a split with masks (--results FILE writes the metrics)",
    "predict": "write masks in the benchmark's submission layout, the answers and overlays (--output_dir DIR); "
    "on your own video: `sparrow predict VIDEO \"expression\" --config RECIPE --ckpt_path CKPT --out DIR`",
}
COMMANDS = {
    **LIGHTNING_COMMANDS,
    "data": "dataset tools: `sparrow data synth --out DIR` writes the synthetic benchmark",
    "report": "compare results files of `sparrow test --results` side by side",
    "eval": "score a folder of predictions in a benchmark's own layout: `sparrow eval --benchmark mevis --pred DIR --gt ROOT`",
    "tiny-release": "write a toy-size release of a host's architecture (for CPU runs of its recipe)",
    "tsf": "TSF tools: `sparrow tsf build --config RECIPE --out DIR` builds the target-track cache of a split",
    "demo": "a web page on your videos: `sparrow demo --config RECIPE --ckpt_path CKPT` (needs the demo extra)",
}


def main(argv: list[str] | None = None) -> None:
    """The ``sparrow`` console script; ``argv`` defaults to the command line.

    Returns None: a console script's return value becomes its exit status.
    """
    try:
        run(argv)
    except Exception as error:
        # jsonargparse and Lightning wrap errors raised while building the recipe's classes
        # or running them (a missing release, say); the user's problem is the SparrowError inside.
        cause = _sparrow_error_in(error)
        if cause is None:
            raise
        print(f"sparrow: error: {cause}", file=sys.stderr)
        sys.exit(2)


def run(argv: list[str] | None = None):
    """Run one ``sparrow`` command and return the finished ``SparrowCLI`` (its ``trainer``
    and ``model``) for the Lightning subcommands, None for the others. Errors propagate;
    :func:`main` turns the user's into one message."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else None
    if command in (None, "-h", "--help"):
        print(_overview())
        return None
    if command == "data":
        return _data_command(args[1:])
    if command == "report":
        return _report_command(args[1:])
    if command == "eval":
        return _eval_command(args[1:])
    if command == "tiny-release":
        return _tiny_release_command(args[1:])
    if command == "tsf":
        return _tsf_command(args[1:])
    if command == "demo":
        from sparrow_plugin.demo import demo_command

        return demo_command(args[1:])
    if command == "predict" and len(args) > 1 and not args[1].startswith("-"):
        return _predict_video_command(args[1:])
    if command not in LIGHTNING_COMMANDS:
        from sparrow_plugin.config import closest_name

        closest = closest_name(command, COMMANDS)
        hint = f" (did you mean {closest!r}?)" if closest else ""
        raise SparrowError(f"unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)} (sparrow --help)")
    from sparrow_plugin.lightning_cli import build_cli

    return build_cli(argv)


def _overview() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = [
        "usage: sparrow <command> [options]",
        "",
        "SPARROW for pixel-grounded video LLMs: train, evaluate and predict from recipes",
        "(LightningCLI YAML under recipes/, layered with repeated --config).",
        "",
        "commands:",
        *(f"  {name:<{width}}{summary}" for name, summary in COMMANDS.items()),
        "",
        "Every command has its own help: sparrow <command> --help",
    ]
    return "\n".join(lines)


def format_report(columns: dict[str, dict]) -> str:
    """A table of J, F, J&F (and counts) per expression kind, one column per result set
    (J&F alone beyond three sets, so that the table fits a terminal), the filtration head's
    ``hit@1`` where a set has it, then a warning line for each result set whose
    ``protocol_deviations`` are not empty.

    The count columns hold one number per result set, joined by '/': ``no [SEG]`` (answers
    without [SEG], scored as empty masks) and ``cut off`` (answers cut by max_new_tokens).
    """
    kinds = ["overall"] + sorted(set().union(*(_kinds_in(results) for results in columns.values())), key=_kind_order)
    names = list(columns)
    compact = len(names) > 3
    kind_width = max(12, max(len(kind) for kind in kinds) + 1)
    if compact:
        header = f"{'kind':<{kind_width}}{'n':>5}{'no [SEG]':>20}{'cut off':>18}" + "".join(f"{name + ' J&F':>{max(12, len(name) + 6)}}" for name in names)
    else:
        header = f"{'kind':<{kind_width}}{'n':>5}{'no [SEG]':>10}{'cut off':>9}" + "".join(f"{name + ' J':>14}{'F':>8}{'J&F':>8}" for name in names)
    lines = [header, "-" * len(header)]
    for kind in kinds:
        prefix = "" if kind == "overall" else f"{kind}/"
        first = columns[names[0]]
        if f"{prefix}J" not in first:
            continue
        row = f"{kind:<{kind_width}}{int(first.get(prefix + 'expressions', 0)):>5}"
        for count, width in (("no_seg", 20 if compact else 10), ("truncated", 18 if compact else 9)):
            row += f"{'/'.join(str(int(c.get(prefix + count, 0))) for c in columns.values()):>{width}}"
        for name, results in columns.items():
            if compact:
                row += f"{results.get(prefix + 'J&F', float('nan')):>{max(12, len(name) + 6)}.3f}"
                continue
            row += f"{results.get(prefix + 'J', float('nan')):>14.3f}{results.get(prefix + 'F', float('nan')):>8.3f}"
            row += f"{results.get(prefix + 'J&F', float('nan')):>8.3f}"
        lines.append(row)
    if any("hit@1" in results for results in columns.values()):
        lines.append("hit@1 (the filtration head's most confident box is the target's, IoU >= 0.5): " + ", ".join(
            f"{name} {results['hit@1']:.3f}" for name, results in columns.items() if "hit@1" in results
        ))
    for name, results in columns.items():
        if results.get("protocol_deviations"):
            lines.append(f"WARNING {name}: not the benchmark protocol: {'; '.join(results['protocol_deviations'])}")
    return "\n".join(lines)


def _kinds_in(results: dict) -> set[str]:
    """The expression kinds a results file reports (its ``<kind>/<metric>`` keys)."""
    return {key.split("/")[0] for key in results if "/" in key}


def _kind_order(kind: str):
    from sparrow_plugin.data.synthetic import CROSS_KINDS, EXPRESSION_KINDS, HARD_KINDS

    known = EXPRESSION_KINDS + HARD_KINDS + CROSS_KINDS
    return (known.index(kind) if kind in known else len(known), kind)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are SparrowErrors: one message, exit status 2, like the rest."""

    def error(self, message: str):
        raise SparrowError(f"{self.prog}: {message} (see {self.prog} --help)")


def _data_command(argv: list[str]) -> None:
    parser = _Parser(prog="sparrow data", description="dataset tools")
    sub = parser.add_subparsers(dest="tool", required=True, parser_class=_Parser)
    synth = sub.add_parser("synth", help="write the synthetic benchmark (MeViS layout)", description="write the synthetic benchmark (MeViS layout)")
    synth.add_argument("--out", required=True, help="dataset root to create (must be empty or absent, unless --overwrite)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train-videos", type=int, default=None, help="videos in the train split (default 800)")
    synth.add_argument("--valid-videos", type=int, default=None, help="videos in the valid_u split (default 80)")
    synth.add_argument("--hard-videos", type=int, default=None, help="videos in the valid_hard split (default 60)")
    synth.add_argument("--cross-videos", type=int, default=None, help="videos in the valid_cross split (default 40)")
    synth.add_argument("--overwrite", action="store_true", help="replace the splits of an existing benchmark")
    args = parser.parse_args(argv)
    from sparrow_plugin.data.synthetic import SyntheticConfig, generate_benchmark

    sizes = {name: getattr(args, name) for name in ("train_videos", "valid_videos", "hard_videos", "cross_videos") if getattr(args, name) is not None}
    root = generate_benchmark(args.out, seed=args.seed, config=SyntheticConfig(**sizes), overwrite=args.overwrite)
    print(f"synthetic benchmark written to {root}")


def _tiny_release_command(argv: list[str]) -> None:
    parser = _Parser(prog="sparrow tiny-release", description="write a tiny release of a host's architecture")
    parser.add_argument("--host", required=True, help="a shipped host shim (videoglamm, unipixel, glus)")
    parser.add_argument("--out", required=True, help="release folder to write")
    parser.add_argument("--data", required=True, help="synthetic benchmark whose train expressions make the vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proposer", default=None, help="also write a tiny proposer release on the host's SAM2 here (for its stage 2)")
    args = parser.parse_args(argv)
    import importlib

    from sparrow_plugin.data.mevis import MeViSDataset
    from sparrow_plugin.registry import KNOWN_HOST_MODULES, get_host_factory

    if args.host not in KNOWN_HOST_MODULES or args.host == "tiny":
        raise SparrowError(f"no tiny release for host {args.host!r}; hosts with one: videoglamm, unipixel, glus")
    writer = importlib.import_module(f"{KNOWN_HOST_MODULES[args.host]}.tiny").write_tiny_release
    vocabulary = [e.text for e in MeViSDataset(args.data, "train", image_size=32).expressions]
    release = writer(args.out, vocabulary, seed=args.seed)
    print(f"tiny {args.host} release written to {release}")
    if args.proposer:
        from sparrow_plugin.decoder import build_sam2
        from sparrow_plugin.grounding.proposer import ClassAgnosticProposer
        from sparrow_plugin.grounding.releases import tiny_proposer_config, write_proposer_release

        spec = get_host_factory(args.host)(path=release).decoder_spec()
        encoder = build_sam2(spec.config, state_dict=spec.state_dict, overrides=spec.overrides).image_encoder
        proposer = ClassAgnosticProposer(tiny_proposer_config(encoder.neck.d_model))
        print(f"tiny proposer release on its SAM2 written to {write_proposer_release(args.proposer, proposer, encoder, spec.config)}")


def _tsf_command(argv: list[str]) -> None:
    parser = _Parser(prog="sparrow tsf", description="Target-Specific Tracking Features tools")
    sub = parser.add_subparsers(dest="tool", required=True, parser_class=_Parser)
    build = sub.add_parser(
        "build", help="build (or resume) the target-track cache of a split", description=(
            "Build the TSF track cache of a split through Lightning's predict loop: sharded over "
            "--devices/--num-nodes with --strategy as training is, each rank writing its own shard; "
            "an interrupted build resumes. Point a recipe's data.init_args.tsf_tracks at the folder."
        ),
    )
    build.add_argument("--config", action="append", required=True, help="the recipe whose data (root, layout, train split) the cache is for; repeatable")
    build.add_argument("--out", required=True, help="the cache folder")
    build.add_argument("--split", default=None, help="the split (default: the recipe's train_split, else train)")
    build.add_argument("--source", default="annotation", help="where the boxes come from: annotation (the split's masks) or detect+track (GroundingDINO + an IoU tracker)")
    build.add_argument("--detector", default=None, help="detect+track: a GroundingDINO folder (model and processor, save_pretrained)")
    build.add_argument("--box-threshold", type=float, default=None, help="detect+track: GroundingDINO's box threshold (default: its own, 0.35)")
    build.add_argument("--text-threshold", type=float, default=None, help="detect+track: GroundingDINO's text threshold (default: its own, 0.25)")
    build.add_argument("--tracker", default="iou", help="detect+track: iou (through the detections) or sam2 (SAM2 propagates the box)")
    build.add_argument("--sam2-config", default=None, help="tracker sam2: a SAM2 config name or YAML")
    build.add_argument("--sam2-checkpoint", default=None, help="tracker sam2: its official .pt")
    build.add_argument("--accelerator", default="cpu")
    build.add_argument("--devices", default="1")
    build.add_argument("--strategy", default="auto")
    build.add_argument("--num-nodes", type=int, default=1)
    build.add_argument("--overwrite", action="store_true", help="replace a cache that another build made")
    args = parser.parse_args(argv)
    from sparrow_plugin.recipes import read_recipe
    from sparrow_plugin.tsf.builder import build_track_cache

    data: dict = {}
    for path in args.config:
        recipe_data = read_recipe(Path(path)).get("data") or {}
        data.update(recipe_data.get("init_args") or {})
    if "root" not in data:
        raise SparrowError(f"{args.config[-1]}: the recipe names no data.init_args.root, the dataset the cache is for")
    split = args.split or data.get("train_split", "train")
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    count = build_track_cache(data["root"], split, args.out, source=args.source, overwrite=args.overwrite, detector=args.detector,
                              box_threshold=args.box_threshold, text_threshold=args.text_threshold, tracker=args.tracker,
                              sam2_config=args.sam2_config, sam2_checkpoint=args.sam2_checkpoint, layout=data.get("layout", "mevis"),
                              accelerator=args.accelerator, devices=devices, strategy=args.strategy, num_nodes=args.num_nodes)
    print(f"{count} tracks of {Path(data['root']) / split} in {args.out}")


def _predict_video_command(argv: list[str]) -> None:
    """``sparrow predict VIDEO "expression" ...``: :class:`~sparrow_plugin.predictor.SparrowPredictor`
    on the recipe's model and the checkpoint, writing what :mod:`sparrow_plugin.video_predict`
    describes, in memory that does not grow with the video's length."""
    import yaml

    from sparrow_plugin.recipes import merged_recipe
    from sparrow_plugin.video_io import probe_video

    parser = _Parser(
        prog="sparrow predict VIDEO",
        description="segment what an expression refers to in your own video: masks, an overlay video and a JSON",
        epilog="model settings as with sparrow fit: --model.init_args.config.decoder.mode track (the checkpoint is refused "
        "when they change what it was trained as)",
    )
    parser.add_argument("video", help="a video file (mp4, webm, mov, ...: what PyAV decodes) or a folder of frames")
    parser.add_argument("expression", nargs="?", help="what to segment")
    parser.add_argument("--expression", dest="more", action="append", default=[], help="another expression (repeatable); all are tracked in one pass")
    parser.add_argument("--config", action="append", required=True, help="the recipe the checkpoint was trained with; repeatable")
    parser.add_argument("--ckpt_path", required=True, help="the trained checkpoint")
    parser.add_argument("--out", required=True, help="the output folder")
    parser.add_argument("--fps", type=float, default=None, help="frames per second for SAM2 (default: every frame)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the recipe's trainer.accelerator; cuda when it says gpu or auto and one is there)")
    parser.add_argument("--precision", default=None, help="32, bf16-mixed or 16-mixed (default: the recipe's trainer.precision)")
    parser.add_argument("--cache_frames", type=int, default=16, help="frames whose SAM2 features are kept at a time")
    parser.add_argument("--offload_features", action="store_true", help="keep those features on the CPU (long videos on a small GPU)")
    args, rest = parser.parse_known_args(argv)
    expressions = ([args.expression] if args.expression else []) + args.more
    if not expressions:
        raise SparrowError("sparrow predict VIDEO: give an expression (sparrow predict VIDEO \"the red car\" --config ... --out DIR)")
    settings, prefix = {}, "--model.init_args."
    pairs = iter(rest)
    for arg in pairs:
        key, _, value = arg.partition("=")
        if not key.startswith(prefix):
            raise SparrowError(f"sparrow predict VIDEO: unknown option {key!r} (model settings start with {prefix}; see sparrow predict VIDEO --help)")
        settings[key[len(prefix):]] = yaml.safe_load(value if _ else next(pairs, ""))
    probe_video(args.video)  # a video that does not open is named before the model loads
    trainer = merged_recipe(args.config).get("trainer") or {}
    device = args.device or _device_for(str(trainer.get("accelerator", "auto")))
    precision = args.precision or str(trainer.get("precision", "32")).replace("-true", "")
    from sparrow_plugin.predictor import SparrowPredictor

    predictor = SparrowPredictor.from_checkpoint(
        args.config, args.ckpt_path, settings, device=device, precision=precision, cache_frames=args.cache_frames, offload_features=args.offload_features,
    )
    predictor.predict_to_folder(args.video, expressions, args.out, fps=args.fps)
    print(f"predictions written to {args.out}")


def _device_for(accelerator: str) -> str:
    """A recipe's ``trainer.accelerator`` as a torch device."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("gpu", "cuda"):
        raise SparrowError("the recipe's trainer.accelerator asks for a GPU and torch finds none: pass --device cpu")
    return "cpu"


def _report_command(argv: list[str]) -> None:
    parser = _Parser(prog="sparrow report", description="compare results files side by side")
    parser.add_argument("files", nargs="*", help="JSON files written by `sparrow test --results`")
    parser.add_argument(
        "--curves", nargs=2, metavar=("METRICS_CSV", "OUT_PNG"), default=None,
        help="draw a run's learning curves (train/loss, each val J&F) from its CSV logger's metrics.csv into a PNG",
    )
    parser.add_argument("--names", nargs="+", help="column names, one per file (default: file stems)")
    parser.add_argument("--proposer", default=None, help="a proposer's recall.json (written by its pre-training), printed below the table")
    parser.add_argument(
        "--also", nargs="+", default=None, metavar="FILE",
        help="results of the same models on another split, one file per column: its kinds are added as rows (e.g. valid_cross's crossing_identity)",
    )
    args = parser.parse_args(argv)
    if args.curves is not None:
        from sparrow_plugin.pictures import plot_curves

        print(f"learning curves written to {plot_curves(*args.curves)}")
        if not args.files:
            return
    if not args.files:
        raise SparrowError("sparrow report: give results files to compare (or --curves METRICS_CSV OUT_PNG)")
    if args.names is not None and len(args.names) != len(args.files):
        raise SparrowError(f"sparrow report: {len(args.names)} names for {len(args.files)} files; give one name per file or none")
    if args.also is not None and len(args.also) != len(args.files):
        raise SparrowError(f"sparrow report: {len(args.also)} --also files for {len(args.files)} columns; give one per column")
    names = args.names or [Path(f).stem for f in args.files]
    if len(set(names)) != len(names):
        raise SparrowError(f"sparrow report: column names must differ, got {names} (name them with --names)")
    columns = {name: _read_results(Path(file)) for name, file in zip(names, args.files)}
    for name, file in zip(names, args.also or []):
        columns[name] = _with_kinds_of(columns[name], _read_results(Path(file)), Path(file))
    print(format_report(columns))
    if args.proposer:
        recall = _read_json(Path(args.proposer), "a proposer's recall.json (sparrow fit --config recipes/<host>/proposer.yaml writes it)")
        print("proposer: " + ", ".join(f"{name} {value:.3f}" for name, value in recall.items() if name.startswith("AR@")) + f" ({recall.get('queries', '?')} queries)")


def _eval_command(argv: list[str]) -> None:
    from sparrow_plugin.evaluation import BENCHMARKS, evaluate, write_report

    parser = _Parser(
        prog="sparrow eval",
        description="score a folder of predictions (any model's) in a benchmark's own layout, as the benchmark's evaluator does",
        epilog="benchmarks: " + "; ".join(f"{name}: {summary}" for name, summary in BENCHMARKS.items()),
    )
    parser.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    parser.add_argument("--pred", required=True, type=Path, help="the prediction folder (stvg: the predictions JSON)")
    parser.add_argument("--gt", required=True, type=Path, help="the benchmark's root folder, as downloaded (stvg: the annotation JSON)")
    parser.add_argument("--split", default=None, help="mevis, revos: the split (default valid_u, valid); davis17: the subset (default val)")
    parser.add_argument("--task", default="unsupervised", choices=["unsupervised", "semi-supervised"], help="davis17 only")
    parser.add_argument(
        "--expressions", type=Path, default=None,
        help="ref-davis17 only: the converted meta_expressions.json; --pred then holds one mask folder per expression (sparrow predict's layout)",
    )
    parser.add_argument(
        "--phrase-model", type=Path, default=None,
        help="videogcg only: a local sentence-embedding model folder (transformers) for the phrase similarity of recall",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the report (results, problems, per-sample scores) as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.expressions is not None and args.benchmark != "ref-davis17":
        raise SparrowError("sparrow eval: --expressions is for --benchmark ref-davis17 only")
    if args.phrase_model is not None and args.benchmark != "videogcg":
        raise SparrowError("sparrow eval: --phrase-model is for --benchmark videogcg only")
    report = evaluate(
        args.benchmark, args.pred, args.gt, split=args.split, task=args.task,
        expressions=args.expressions, phrase_model=args.phrase_model, progress=not args.quiet,
    )
    print(report.format())
    if args.out is not None:
        write_report(report, args.out)
        print(f"report written to {args.out}")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SparrowError(f"{path}: file not found ({what})")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SparrowError(f"{path}: not a results file, it is not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise SparrowError(f"{path}: expected a JSON object ({what})")
    return content


def _read_results(path: Path) -> dict:
    if not path.is_file():
        raise SparrowError(f"{path}: results file not found (write it with `sparrow test --results {path}`)")
    results = _read_json(path, "a results file of `sparrow test --results`")
    if "J&F" not in results:
        raise SparrowError(f"{path}: not a results file of `sparrow test --results` (no 'J&F' entry)")
    return results


def _with_kinds_of(results: dict, other: dict, other_path: Path) -> dict:
    """``results`` with the per-kind entries of ``other`` (another split) added."""
    shared = sorted(_kinds_in(results) & _kinds_in(other))
    if shared:
        raise SparrowError(f"{other_path}: --also adds kinds that the column already has ({', '.join(shared)}); it is for another split's kinds")
    merged = {**results, **{key: value for key, value in other.items() if "/" in key}}
    merged["protocol_deviations"] = list(dict.fromkeys([*results.get("protocol_deviations", []), *other.get("protocol_deviations", [])]))
    return merged


def _sparrow_error_in(error: BaseException | None) -> SparrowError | None:
    while error is not None and not isinstance(error, SparrowError):
        error = error.__cause__ or error.__context__
    return error


if __name__ == "__main__":
    main()
