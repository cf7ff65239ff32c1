"""The `sparrow` command on the shipped recipes, redirected to temporary folders."""

import csv
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparrow_plugin.cli import main, run
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.hosts.tiny import TinyHostConfig, TinyVideoLLM

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SMALL_HOST = TinyHostConfig(vision_depth=1, num_layers=2, hidden_size=64, intermediate_size=128, llm_frames=2)


@pytest.fixture
def tiny_host(tmp_path, synthetic_root):
    host = TinyVideoLLM.create([e.text for e in MeViSDataset(synthetic_root, "train", image_size=32).expressions], SMALL_HOST)
    host.save_pretrained(tmp_path / "host")
    return tmp_path / "host"


def _recipe(name: str, tmp_path: Path, root: Path, host: Path, substitute: dict[str, str] | None = None) -> str:
    """The shipped recipe with its data, host and output folders moved under tmp_path;
    ``substitute`` maps regular expressions to replacements (each must match)."""
    text = (RECIPES / name).read_text()
    if "outputs/tiny/tsf/train" in text:
        text = text.replace("outputs/tiny/tsf/train", str(_train_track_cache(Path(root))))
    text = text.replace("outputs/tiny/host", str(host)).replace("data/synthetic", str(root))
    text = text.replace("outputs/tiny", str(tmp_path / "outputs"))
    for pattern, replacement in (substitute or {}).items():
        text, count = re.subn(pattern, replacement, text)
        assert count, pattern
    path = tmp_path / name.replace("/", "_")
    path.write_text(text)
    return str(path)


@functools.cache
def _train_track_cache(root: Path) -> Path:
    """The TSF cache of ``root``'s train split (annotation tracks), next to it, built once
    as make builds it (in a process of its own, so its Trainer's logging stays there)."""
    from .test_distributed import sparrow

    cache = root.parent / f"{root.name}.tsf-train"
    recipe = root.parent / f"{root.name}.tsf-train.yaml"
    recipe.write_text(f"data:\n  init_args:\n    root: {root}\n")
    sparrow(["tsf", "build", "--config", str(recipe), "--out", str(cache)], cwd=root.parent)
    return cache


FULL_RECIPES = sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*.yaml") if p.parent.name != "overlays")
OVERLAYS = sorted(p.relative_to(RECIPES).as_posix() for p in (RECIPES / "overlays").glob("*.yaml"))


def _parses(capsys, *configs: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *(a for c in configs for a in ("--config", str(RECIPES / c))), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed


@pytest.mark.parametrize("recipe", FULL_RECIPES)
def test_every_recipe_parses(recipe, capsys):
    _parses(capsys, recipe)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("host", ["videoglamm", "unipixel", "glus"])
def test_every_overlay_parses_on_the_host_recipes(overlay, host, capsys):
    _parses(capsys, f"{host}/stage1.yaml", overlay)


def test_stage1_recipe_fast_dev_run(tmp_path, synthetic_root, tiny_host):
    recipe = _recipe("tiny/stage1.yaml", tmp_path, synthetic_root, tiny_host)
    cli = run(["fit", "--config", recipe, "--trainer.fast_dev_run", "true"])
    assert_one_step_trained(cli)


def test_console_script_exits_zero_after_training(tmp_path, synthetic_root, tiny_host):
    """The installed ``sparrow`` script, as make runs it: success is exit status 0."""
    recipe = _recipe("tiny/stage1.yaml", tmp_path, synthetic_root, tiny_host)
    script = Path(sys.executable).parent / "sparrow"
    done = subprocess.run([str(script), "fit", "--config", recipe, "--trainer.fast_dev_run", "true"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def assert_one_step_trained(cli) -> None:
    """A fast_dev_run made its optimizer step, with a finite loss, and validated."""
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1
    assert torch.isfinite(metrics["train/loss"]) and "val/J&F" in metrics


def test_resume_from_last_continues_the_step_count(tmp_path, synthetic_root, tiny_host):
    recipe = _recipe(
        "tiny/stage1.yaml", tmp_path, synthetic_root, tiny_host,
        substitute={r"every_n_train_steps: \d+": "every_n_train_steps: 1", r"val_check_interval: \d+": "val_check_interval: 4"},
    )
    common = ["--config", recipe, "--trainer.log_every_n_steps", "1", "--data.init_args.val_limit", "2"]
    main(["fit", *common, "--trainer.max_steps", "2", "--ckpt_path", "last"])
    last = tmp_path / "outputs" / "stage1" / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=False)
    assert first["global_step"] == 2
    main(["fit", *common, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    second = torch.load(last, map_location="cpu", weights_only=False)
    assert second["global_step"] == 4
    logs = sorted((tmp_path / "outputs" / "stage1" / "logs").glob("version_*/metrics.csv"))
    assert len(logs) == 2
    steps = [int(row["step"]) for row in csv.DictReader(logs[1].open()) if row.get("train/loss")]
    assert steps and min(steps) == 2  # the resumed run continued at step 2, it did not restart
    assert set(second["state_dict"]) == set(first["state_dict"])


def test_test_command_writes_results(tmp_path, synthetic_root, tiny_host, capsys):
    recipe = _recipe("tiny/stage1.yaml", tmp_path, synthetic_root, tiny_host)
    results = tmp_path / "results.json"
    main(["test", "--config", recipe, "--results", str(results)])
    printed = capsys.readouterr().out
    assert "no [SEG]" in printed and "Test metric" not in printed  # our table, not Lightning's as well
    data = json.loads(results.read_text())
    assert data["expressions"] == len(MeViSDataset(synthetic_root, "valid_u", image_size=32))
    assert "J&F" in data and "no_seg" in data
    main(["report", str(results), str(results), "--names", "before", "after"])
    table = capsys.readouterr().out
    assert "overall" in table and "before J" in table and "after J" in table


def test_test_on_a_split_only_the_server_scores_writes_the_submission_zip(tmp_path, synthetic_root, tiny_host, capsys):
    import shutil
    import zipfile

    root = tmp_path / "no_masks"
    shutil.copytree(synthetic_root, root)
    (root / "valid_u" / "mask_dict.json").unlink()  # as MeViS valid ships
    recipe = _recipe("tiny/stage1.yaml", tmp_path, root, tiny_host)
    main(["test", "--config", recipe, "--results", str(tmp_path / "out" / "results.json")])
    printed = capsys.readouterr().out
    assert "its numbers come from the benchmark's server" in printed and "J&F" not in printed
    assert not (tmp_path / "out" / "results.json").exists()  # no number is claimed
    dataset = MeViSDataset(root, "valid_u", image_size=32)
    with zipfile.ZipFile(tmp_path / "out" / "valid_u_submission.zip") as archive:
        names = set(archive.namelist())
    expected = {f"Annotations/{e.video}/{e.exp_id}/{frame}.png" for e in dataset.expressions for frame in e.frames}
    assert names == expected


def test_test_scores_ref_davis17_with_its_own_protocol(tmp_path, synthetic_root, tiny_host, capsys):
    """sparrow test on Ref-DAVIS17 (converted, ref-youtube-vos layout) with benchmark:
    ref-davis17 predicts every expression's masks and scores them as sparrow eval does:
    four annotator sets, unsupervised DAVIS against the DAVIS folder."""
    import numpy as np
    from PIL import Image

    from sparrow_plugin.evaluation import evaluate_ref_davis17

    refdavis, davis = tmp_path / "ref-davis", tmp_path / "DAVIS"
    frames = [f"{t:05d}" for t in range(3)]
    labels = np.zeros((3, 48, 64), np.uint8)
    labels[:, 8:20, 8:20], labels[:, 28:40, 40:56] = 1, 2
    for t, name in enumerate(frames):
        for path in (refdavis / "valid" / "JPEGImages" / "seq" / f"{name}.jpg",):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.stack([labels[t] * 100] * 3, axis=-1).astype(np.uint8)).save(path)
        for path in (refdavis / "valid" / "Annotations" / "seq" / f"{name}.png", davis / "Annotations_unsupervised" / "480p" / "seq" / f"{name}.png"):
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(labels[t], mode="P")
            image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
            image.save(path)
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("seq\n")
    texts = ["the red circle", "the red circle moving left", "the blue square", "the blue square moving right"]
    expressions = {str(i): {"exp": texts[i % 4], "obj_id": str(i // 4 + 1)} for i in range(8)}
    meta = refdavis / "meta_expressions" / "valid" / "meta_expressions.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"videos": {"seq": {"frames": frames, "expressions": expressions}}}))

    recipe = _recipe("tiny/stage1.yaml", tmp_path, synthetic_root, tiny_host)
    results = tmp_path / "out" / "results.json"
    main([
        "test", "--config", recipe, "--data.init_args.root", str(refdavis), "--data.init_args.layout", "ref-youtube-vos",
        "--data.init_args.test_split", "valid", "--data.init_args.benchmark", "ref-davis17",
        "--data.init_args.benchmark_root", str(davis), "--results", str(results),
    ])
    printed = capsys.readouterr().out
    scored = json.loads(results.read_text())
    assert scored["benchmark"] == "ref-davis17" and scored["objects"] == 8  # 2 objects in each of 4 sets
    assert "anno_0/J&F-Mean" not in scored and "Davis17_annot1/J&F-Mean" in scored
    again = evaluate_ref_davis17(tmp_path / "out" / "valid_masks", davis, meta, progress=False)
    assert scored["J&F-Mean"] == again.results["J&F-Mean"] and "J&F-Mean" in printed
    assert (tmp_path / "out" / "results.report.json").is_file()


def test_bad_input_gives_one_message(tmp_path, synthetic_root, tiny_host, capsys):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(synthetic_root, root)
    frame = sorted((root / "valid_u" / "JPEGImages").glob("*/*.jpg"))[0]
    frame.write_bytes(b"not a jpeg")
    recipe = _recipe("tiny/stage1.yaml", tmp_path, root, tiny_host)
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", recipe])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"sparrow: error: {frame}: corrupt JPEG" in err and "Traceback" not in err


def test_data_synth_command(tmp_path):
    main(["data", "synth", "--out", str(tmp_path / "syn"), "--seed", "3", "--train-videos", "2", "--valid-videos", "1"])
    assert (tmp_path / "syn" / "valid_u" / "mask_dict.json").is_file()


def test_predict_writes_submission_pngs_and_overlays(tmp_path, synthetic_root, tiny_host):
    from PIL import Image

    recipe = _recipe("tiny/stage1.yaml", tmp_path, synthetic_root, tiny_host)
    out = tmp_path / "predictions"
    main([
        "predict", "--config", recipe,
        "--trainer.callbacks+=sparrow_plugin.predict.MaskWriter",
        f"--trainer.callbacks.output_dir={out}",
        "--trainer.callbacks.max_overlays=2",
    ])
    dataset = MeViSDataset(synthetic_root, "valid_u", image_size=32)
    first = dataset.expressions[0]
    pngs = sorted((out / first.video / first.exp_id).glob("*.png"))
    assert [p.stem for p in pngs] == list(first.frames)
    mask = Image.open(pngs[0])
    assert mask.size == (160, 120) and set(mask.getdata()) <= {0, 255}
    assert len(list((out / "overlays").glob("*.png"))) == 2
    answers = json.loads((out / "answers.json").read_text())
    assert len(answers) == len(dataset)

    # the folder, scored by `sparrow eval` as any model's would be, gives `sparrow test`'s numbers
    results = tmp_path / "results.json"
    main(["test", "--config", recipe, "--results", str(results)])
    report = tmp_path / "eval.json"
    main(["eval", "--benchmark", "mevis", "--pred", str(out), "--gt", str(synthetic_root), "--out", str(report), "--quiet"])
    tested, scored = json.loads(results.read_text()), json.loads(report.read_text())
    assert scored["problems"] == []  # the writer's overlays folder is not taken for a video
    for key in ("J", "F", "J&F", "expressions"):
        assert scored["results"][key] == pytest.approx(tested[key], abs=1e-12), key


def test_report_counts_cut_off_answers_and_warns_about_protocol_deviations():
    from sparrow_plugin.cli import format_report

    protocol = {"J": 0.5, "F": 0.7, "J&F": 0.6, "expressions": 10, "no_seg": 2, "truncated": 1}
    partial = {**protocol, "truncated": 3, "protocol_deviations": ["eval_frames=4: only 4 frames of each video are scored"]}
    table = format_report({"full": protocol, "partial": partial})
    overall = next(line for line in table.splitlines() if line.startswith("overall"))
    assert overall.split()[2:4] == ["2/2", "1/3"]  # no [SEG], cut off
    assert "WARNING partial: not the benchmark protocol: eval_frames=4" in table
    assert "WARNING full" not in table
