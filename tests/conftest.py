"""Shared fixtures. Everything runs on the CPU, small, under tmp paths."""

import json
import os
from pathlib import Path

import lightning.pytorch  # noqa: F401  its log handler binds to sys.stderr at import: the session's, not one test's capsys
import pytest
import torch

from sparrow_plugin.data.synthetic import SyntheticConfig, generate_benchmark

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)

SMALL = SyntheticConfig(train_videos=6, valid_videos=4, hard_videos=6, cross_videos=4)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic benchmark in the MeViS layout (read-only: copy before breaking it)."""
    return generate_benchmark(tmp_path_factory.mktemp("synthetic"), seed=0, config=SMALL)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_process_group_left():
    """A recipe run in-process with Lightning's DDP strategy (one process, gloo) leaves its
    process group behind; later tests would then see a distributed run (torchmetrics
    syncs its states across it)."""
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------- trained runs, shared by the CLI tests


@pytest.fixture(scope="session")
def work(tmp_path_factory, synthetic_root):
    """A tiny host, the tiny recipe pointing at it, and a checkpoint of one training step."""
    from sparrow_plugin.data.mevis import MeViSDataset
    from sparrow_plugin.hosts.tiny import TinyVideoLLM

    from .test_cli import SMALL_HOST, _recipe

    folder = tmp_path_factory.mktemp("mistakes")
    host = TinyVideoLLM.create([e.text for e in MeViSDataset(synthetic_root, "train", image_size=32).expressions], SMALL_HOST)
    host.save_pretrained(folder / "host")
    recipe = _recipe("tiny/stage1.yaml", folder, synthetic_root, folder / "host")
    _fit_one_step(recipe, folder / "outputs" / "stage1")
    return {"folder": folder, "recipe": recipe, "checkpoint": folder / "outputs" / "stage1" / "checkpoints" / "last.ckpt", "data": synthetic_root}


@pytest.fixture(scope="session")
def unipixel_checkpoint(tmp_path_factory, synthetic_root):
    """A checkpoint of one training step of UniPixel's recipe on its tiny release."""
    from baselines.unipixel.tiny import write_tiny_release
    from sparrow_plugin.cli import run
    from sparrow_plugin.data.mevis import MeViSDataset

    from .test_cli import RECIPES

    folder = tmp_path_factory.mktemp("unipixel")
    release = write_tiny_release(folder / "release", [e.text for e in MeViSDataset(synthetic_root, "train", image_size=32).expressions])
    run_dir = folder / "stage1"
    run([
        "fit", "--config", str(RECIPES / "unipixel" / "stage1.yaml"), "--config", str(RECIPES / "overlays" / "tiny_cpu.yaml"),
        "--model.init_args.host_args", json.dumps({"path": str(release)}), "--data.init_args.root", str(synthetic_root),
        *_one_step(run_dir),
    ])
    return run_dir / "checkpoints" / "last.ckpt"


def _one_step(run_dir: Path) -> list[str]:
    return [
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.callbacks.init_args.dirpath", str(run_dir / "checkpoints"),
    ]


def _fit_one_step(recipe: str, run_dir: Path) -> None:
    from sparrow_plugin.cli import run

    run(["fit", "--config", recipe, *_one_step(run_dir)])
