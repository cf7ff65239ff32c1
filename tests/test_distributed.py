"""A real two-process DDP run on the CPU (gloo), through the installed ``sparrow`` script.

Lightning's ``ddp`` strategy starts the second rank by re-running the command, as it does on
a GPU node. The tiny recipe is redirected to temporary folders as in test_cli; the synthetic
``valid_u`` split of conftest has an odd number of expressions (11), so a DistributedSampler
over two ranks pads it with a repeated sample, which the metric must not count twice.
"""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparrow_plugin.cli import main
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.hosts.tiny import TinyVideoLLM
from tests.test_cli import SMALL_HOST, _recipe

pytestmark = pytest.mark.slow

SPARROW = Path(sys.executable).parent / "sparrow"
TWO_RANKS = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
# the variables a launcher (torchrun, SLURM) sets: Lightning must start both ranks itself here
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synthetic_root):
    """A tiny host (SMALL_HOST) and the tiny recipe pointing at it, under one module folder."""
    folder = tmp_path_factory.mktemp("ddp")
    host = TinyVideoLLM.create([e.text for e in MeViSDataset(synthetic_root, "train", image_size=32).expressions], SMALL_HOST)
    host.save_pretrained(folder / "host")
    recipe = _recipe(
        "tiny/stage1.yaml", folder, synthetic_root, folder / "host",
        substitute={r"every_n_train_steps: \d+": "every_n_train_steps: 1"},
    )
    return folder, recipe


def sparrow(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """The installed console script; fails with the tail of its stderr. On a timeout (a rank
    waiting forever on the other) both ranks are killed: Lightning starts the second one in
    the first one's process group."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    command = [str(SPARROW), *args]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"sparrow {args[0]} did not finish in {timeout:.0f} s (a rank waiting on the other?):\n{stderr[-4000:]}")
    assert process.returncode == 0, f"sparrow {args[0]} exited {process.returncode}:\n{stderr[-4000:]}"
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def fit_args(recipe: str, steps: int) -> list[str]:
    return [
        "fit", "--config", recipe, *TWO_RANKS,
        "--trainer.max_steps", str(steps),
        "--model.init_args.lr_scheduler.init_args.warmup_steps", "1",
        "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "1",
        # one sample per rank and step, and the real recipes' no-target policy (answer without
        # [SEG]): a rank whose sample has no target runs neither the [SEG] adapter nor SAM2's
        # decoder while the other rank does, which DDP's reducer must survive (with seed 0 the
        # first two steps hold such a sample: without the model's zero term this fit hangs)
        "--data.init_args.batch_size", "1",
        "--model.init_args.config.no_target", "answer",
        "--ckpt_path", "last",
    ]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def logged_steps(log: Path) -> list[int]:
    return [int(row["step"]) for row in csv.DictReader(log.open()) if row.get("train/loss")]


@pytest.fixture(scope="module")
def first_fit(run_dir):
    """Two optimizer steps on two ranks."""
    folder, recipe = run_dir
    sparrow(fit_args(recipe, 2), cwd=folder)
    return folder / "outputs" / "stage1"


def test_two_rank_fit_saves_only_what_trains(first_fit):
    checkpoint = load(first_fit / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2
    keys = list(checkpoint["state_dict"])
    assert keys, "the checkpoint holds no weights"
    frozen = [k for k in keys if "image_encoder" in k or "spatial_encoder" in k]
    assert not frozen, f"frozen SAM2 encoder weights in the checkpoint: {frozen[:5]}"
    assert not [k for k in keys if k.startswith("module.")], "DDP's wrapper prefix leaked into the checkpoint"
    assert any("lora" in k for k in keys), "no LoRA weights in the checkpoint"


def test_two_rank_resume_continues_the_step_count(run_dir, first_fit):
    folder, recipe = run_dir
    first = load(first_fit / "checkpoints" / "last.ckpt")
    sparrow(fit_args(recipe, 4), cwd=folder)
    second = load(first_fit / "checkpoints" / "last.ckpt")
    assert second["global_step"] == 4
    assert set(second["state_dict"]) == set(first["state_dict"])
    changed = [k for k in first["state_dict"] if not torch.equal(first["state_dict"][k], second["state_dict"][k])]
    assert changed, "two more steps changed no trained weight"
    logs = sorted((first_fit / "logs").glob("version_*/metrics.csv"))
    assert len(logs) == 2, logs
    assert logged_steps(logs[0]) and max(logged_steps(logs[0])) < 2
    steps = logged_steps(logs[1])
    assert steps and min(steps) == 2, f"the resumed run logged steps {steps}: it restarted instead of continuing at 2"


def test_two_rank_test_scores_each_expression_once(run_dir, synthetic_root, tmp_path):
    folder, recipe = run_dir
    expressions = len(MeViSDataset(synthetic_root, "valid_u", image_size=32))
    assert expressions % 2 == 1, "the split must be odd for the sampler to pad"
    common = ["--config", recipe, "--data.init_args.eval_batch_size", "4"]
    one, two = tmp_path / "one_rank.json", tmp_path / "two_ranks.json"
    main(["test", *common, "--trainer.devices", "1", "--results", str(one)])
    sparrow(["test", *common, *TWO_RANKS, "--results", str(two)], cwd=tmp_path)
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert single["expressions"] == expressions
    assert double["expressions"] == expressions, f"two ranks scored {double['expressions']} of {expressions} expressions"
    assert double["J&F"] == pytest.approx(single["J&F"], abs=1e-6)
    assert double["J"] == pytest.approx(single["J"], abs=1e-6)
    assert double["F"] == pytest.approx(single["F"], abs=1e-6)
