"""Every mistake a user can make gets one clear message (exit status 2, no traceback), or
the behaviour a user would expect; command-line cases run the installed `sparrow` script."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sparrow_plugin.cli import COMMANDS, run
from sparrow_plugin.hosts.tiny import TinyVideoLLM

from .conftest import _one_step
from .test_cli import RECIPES

pytestmark = pytest.mark.slow

SPARROW = Path(sys.executable).parent / "sparrow"
REPOSITORY = Path(__file__).resolve().parents[1]


def sparrow(*args, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPARROW), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def refused(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """The error message of a run that must have stopped with one: exit status 2, no
    traceback, every fragment in the message."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    message = done.stderr[done.stderr.index("sparrow: error: ") :]
    for fragment in fragments:
        assert fragment in message, message
    return message


def succeeded(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout + done.stderr


# ----------------------------------------------------------------------------- fixtures


def _copy_data(work, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(work["data"], root)
    return root


# ----------------------------------------------------------------------------- silent wrong results


def test_a_checkpoint_of_another_model_is_refused_naming_what_differs(work, unipixel_checkpoint):
    done = sparrow("validate", "--config", work["recipe"], "--ckpt_path", unipixel_checkpoint)
    refused(done, str(unipixel_checkpoint), "was trained as another model", "base: 'unipixel' in the checkpoint, 'tiny' here", "config.lora.rank")


def test_the_checkpoints_settings_are_taken_when_asked(work, unipixel_checkpoint):
    done = sparrow("validate", "--config", work["recipe"], "--ckpt_path", unipixel_checkpoint, "--ckpt_settings", "checkpoint")
    output = succeeded(done)
    assert "building the model as the checkpoint was trained" in output and "base: 'unipixel' (the recipe says 'tiny')" in output
    assert "val/J&F" in output


def test_another_hosts_weights_are_refused_when_the_model_loads(work, tmp_path):
    """Same architecture and settings, other weights (GLUS-S against GLUS-A, say)."""
    host = TinyVideoLLM.from_pretrained(work["folder"] / "host")
    with torch.no_grad():
        host.llm.model.norm.weight.add_(0.5)
    host.save_pretrained(tmp_path / "other_host")
    done = sparrow(
        "validate", "--config", work["recipe"], "--ckpt_path", work["checkpoint"], "--model.init_args.host_args", json.dumps({"path": str(tmp_path / "other_host")})
    )
    refused(done, "host weights: 1 of", "llm.model.norm.weight")


def test_recipe_and_command_line_settings_win_over_the_checkpoint_from_any_folder(work, tmp_path):
    """The run's settings apply (the checkpoint's differing ones are named in a warning);
    relative paths of the recipe resolve from where the command runs."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = sparrow(
        "validate", "--config", work["recipe"], "--ckpt_path", work["checkpoint"],
        "--model.init_args.config.decoder.mode", "track", "--data.init_args.val_limit", "2", cwd=elsewhere,
    )
    output = succeeded(done)
    assert "sparrow: warning:" in output and "decoder.mode: 'per_frame' in the checkpoint, 'track' here" in output


def test_mistyped_keys_at_any_depth_name_the_file_and_the_closest_key(work, tmp_path):
    recipe = Path(work["recipe"]).read_text().replace("mode: per_frame", "mdoe: per_frame").replace("rank: 8", "rnak: 8")
    (tmp_path / "typos.yaml").write_text(recipe)
    for extra in ([], ["--ckpt_path", work["checkpoint"]]):
        done = sparrow("test", "--config", tmp_path / "typos.yaml", *extra)
        refused(
            done,
            f"{tmp_path / 'typos.yaml'}: model.init_args.config.decoder.mdoe is not a setting (did you mean 'model.init_args.config.decoder.mode'?)",
            "model.init_args.config.lora.rnak is not a setting (did you mean 'model.init_args.config.lora.rank'?)",
        )


def test_mistyped_command_line_settings_are_listed_with_the_closest_key(work):
    typos = {"--trainer.max_stpes": "--trainer.max_steps", "--data.init_args.val_limt": "--data.init_args.val_limit",
             "--model.init_args.config.decoder.mdoe": "--model.init_args.config.decoder.mode"}
    done = sparrow("fit", "--config", work["recipe"], *(arg for typo in typos for arg in (typo, "3")))
    refused(done, *(f"the command line: {typo} is not a setting (did you mean {closest!r}?)" for typo, closest in typos.items()))


def test_an_rle_whose_counts_do_not_cover_its_size_is_refused(work, tmp_path):
    root = _copy_data(work, tmp_path)
    mask_path = root / "valid_u" / "mask_dict.json"
    masks = json.loads(mask_path.read_text())
    anno_id = next(k for k, v in masks.items() if v[0] is not None)
    small = np.zeros((60, 80), dtype=np.uint8)
    small[5:25, 10:40] = 1
    masks[anno_id][0]["counts"] = mask_utils.encode(np.asfortranarray(small))["counts"].decode()
    mask_path.write_text(json.dumps(masks))
    done = sparrow("test", "--config", work["recipe"], "--data.init_args.root", root)
    refused(done, str(mask_path), f"anno_id {anno_id}, frame '00000'", "RLE counts cover 4800 pixels")


# ----------------------------------------------------------------------------- tracebacks where a sentence was due


def _broken_checkpoints(work, folder: Path) -> dict:
    folder.mkdir()
    good = work["checkpoint"].read_bytes()
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "truncated.ckpt").write_bytes(good[: len(good) // 3])
    (folder / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    checkpoint = torch.load(work["checkpoint"], map_location="cpu", weights_only=True)
    key = next(k for k in checkpoint["state_dict"] if k.endswith("lora_A.default.weight"))
    checkpoint["state_dict"][key] = torch.zeros(3, 5)
    torch.save(checkpoint, folder / "wrong_shape.ckpt")
    return {
        "missing.ckpt": "checkpoint file not found",
        "empty.ckpt": "empty file (0 bytes)",
        "truncated.ckpt": "truncated or damaged",
        "random.ckpt": "not a PyTorch checkpoint",
        "wrong_shape.ckpt": f"{key}: (3, 5) in the checkpoint, (8, 64) here",
        ".": "is a folder, not a checkpoint file",
    }


def test_broken_checkpoint_files_are_one_message_each(work, tmp_path):
    folder = tmp_path / "checkpoints"
    for name, problem in _broken_checkpoints(work, folder).items():
        path = (folder / name) if name != "." else folder
        refused(sparrow("test", "--config", work["recipe"], "--ckpt_path", path), f"{path}", problem)


def test_a_broken_last_checkpoint_stops_a_resume_with_one_message(work, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(work["checkpoint"].parent, run_dir / "checkpoints")
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    done = sparrow("fit", "--config", work["recipe"], *_one_step(run_dir)[2:], "--trainer.max_steps", "2", "--ckpt_path", "last")
    refused(done, str(last), "truncated or damaged")


def test_a_corrupt_frame_read_by_a_worker_reads_as_without_workers(work, tmp_path):
    root = _copy_data(work, tmp_path)
    frame = sorted((root / "valid_u" / "JPEGImages").glob("*/*.jpg"))[0]
    frame.write_bytes(b"not a jpeg")
    done = sparrow("test", "--config", work["recipe"], "--data.init_args.root", root, "--data.init_args.num_workers", "1")
    message = refused(done, f"sparrow: error: {frame}: corrupt JPEG")
    assert "DataLoader worker" not in message


def test_report_refuses_a_file_that_is_not_json_and_a_name_per_file(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    refused(sparrow("report", tmp_path / "broken.json"), f"{tmp_path / 'broken.json'}: not a results file, it is not valid JSON")
    results = {"J": 0.5, "F": 0.5, "J&F": 0.5, "expressions": 1}
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(results))
    refused(sparrow("report", tmp_path / "a.json", tmp_path / "b.json", "--names", "only"), "1 names for 2 files")
    assert "only J" in succeeded(sparrow("report", tmp_path / "a.json", "--names", "only"))


def test_report_adds_another_splits_kinds_as_rows(tmp_path):
    """--also: the same models on another split, one file per column; its kinds become rows,
    and a kind the column already has is refused."""
    def write(name, **kinds):
        results = {"J": 0.5, "F": 0.5, "J&F": 0.5, "expressions": 9}
        for kind, value in kinds.items():
            results.update({f"{kind}/J": value, f"{kind}/F": value, f"{kind}/J&F": value, f"{kind}/expressions": 4})
        (tmp_path / f"{name}.json").write_text(json.dumps(results))
        return tmp_path / f"{name}.json"

    a, b = write("a", motion=0.25), write("b", motion=0.5)
    a_cross, b_cross = write("a_cross", crossing_identity=0.125), write("b_cross", crossing_identity=0.75)
    table = succeeded(sparrow("report", a, b, "--names", "x", "y", "--also", a_cross, b_cross))
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert list(rows) == ["overall", "motion", "crossing_identity"]
    assert rows["crossing_identity"][-1] == "0.750" and rows["crossing_identity"][-4] == "0.125"
    refused(sparrow("report", a, b, "--also", a_cross), "1 --also files for 2 columns")
    refused(sparrow("report", a, "--also", a), f"{a}: --also adds kinds that the column already has (motion)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_recipe_on_a_cpu_lists_everything_missing_before_anything_loads(tmp_path):
    """VideoGLaMM's recipe on a machine with nothing: the GPU, every download (its temporal
    tower included) and the benchmark's splits, in one message."""
    done = sparrow("fit", "--config", RECIPES / "videoglamm" / "stage1.yaml", cwd=tmp_path)
    refused(
        done, "this run cannot start:",
        "recipes/videoglamm/stage1.yaml: trainer.accelerator is 'gpu', and this machine has no CUDA GPU",
        "make train BASE=videoglamm TINY=1",
        "checkpoints/videoglamm: the VideoGLaMM release folder",
        "checkpoints/clip-vit-large-patch14-336:",
        "InternVideo2-stage2_1b-224p-f4.pt:",
        "host_args.temporal_tower:",
        "data/mevis/train: the 'train' split", "data/mevis/valid_u: the 'valid_u' split",
    )


# ----------------------------------------------------------------------------- the command line and set-up


def test_help_lists_every_command_and_each_has_its_own_help():
    overview = succeeded(sparrow("--help"))
    for command in COMMANDS:
        assert re.search(rf"^  {re.escape(command)}\s", overview, re.MULTILINE), overview
        assert "usage:" in succeeded(sparrow(command, "--help")).lower()
    refused(sparrow("fitt"), "unknown command 'fitt' (did you mean 'fit'?)")


def test_predict_writes_to_a_named_folder_by_default(work, tmp_path):
    done = sparrow("predict", "--config", work["recipe"], "--trainer.default_root_dir", tmp_path / "run", "--trainer.limit_predict_batches", "1")
    output = succeeded(done)
    folder = tmp_path / "run" / "predictions"
    assert f"predictions written to {folder}" in output
    answers = json.loads((folder / "answers.json").read_text())
    assert answers and all((folder / key).is_dir() for key in answers)


def test_data_synth_refuses_a_folder_in_use_and_nonsensical_counts(tmp_path):
    out = tmp_path / "synthetic"
    succeeded(sparrow("data", "synth", "--out", out, "--train-videos", "1", "--valid-videos", "1"))
    (out / "notes.txt").write_text("mine")
    refused(sparrow("data", "synth", "--out", out, "--train-videos", "1", "--valid-videos", "1"), f"{out}: folder is not empty", "--overwrite")
    succeeded(sparrow("data", "synth", "--out", out, "--train-videos", "2", "--valid-videos", "1", "--overwrite"))
    assert len(json.loads((out / "train" / "meta_expressions.json").read_text())["videos"]) == 2 and (out / "notes.txt").is_file()
    for count in ("0", "-3"):
        refused(sparrow("data", "synth", "--out", tmp_path / "other", "--train-videos", count), f"train_videos must be at least 1, got {count}")


def test_the_schedule_follows_the_trainers_step_budget(work, tmp_path):
    warmup = ["--model.init_args.lr_scheduler.init_args.warmup_steps", "1"]
    cli = run(["fit", "--config", work["recipe"], *_one_step(tmp_path / "run")[2:], "--trainer.max_steps", "3", *warmup])
    schedule = cli.trainer.lr_scheduler_configs[0].scheduler
    assert schedule.total_steps == 3 and schedule.last_epoch == 3
    assert schedule.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # decayed within the 3 steps, not held at a rate


def test_words_the_tiny_host_does_not_know_are_named_in_a_warning(work, tmp_path):
    root = _copy_data(work, tmp_path)
    meta_path = root / "valid_u" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    video = next(iter(meta["videos"]))
    meta["videos"][video]["expressions"]["0"]["exp"] = "the pink ball"
    meta_path.write_text(json.dumps(meta))
    output = succeeded(sparrow("test", "--config", work["recipe"], "--data.init_args.root", root))
    warning = re.search(r"sparrow: warning: words the host's tokenizer does not know, read as '<unk>': (.+?) \(in (.+)\)", output)
    assert warning, output
    assert {"pink", "ball"} <= set(warning.group(1).split(", ")) and "'the pink ball'" in warning.group(2)


def test_the_repository_documents_what_it_points_at():
    """README and docstrings point at the repository's own docs, not at files users lack."""
    for path in [REPOSITORY / "README.md", *REPOSITORY.glob("src/**/*.py"), *REPOSITORY.glob("baselines/**/*.py")]:
        assert "shared/" not in path.read_text(), path
    for link in re.findall(r"\]\((docs/[^)#]+)", (REPOSITORY / "README.md").read_text()):
        assert (REPOSITORY / link).is_file(), link
