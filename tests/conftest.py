"""Shared fixtures. Everything runs on the CPU, small, under tmp paths."""

import os

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
