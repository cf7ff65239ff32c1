"""Training on a weighted mix of datasets: reproducible, sharded, resumable."""

import json

import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback

from sparrow_plugin.cli import main
from sparrow_plugin.data.mixing import MixSampler

from .test_cli import _recipe, tiny_host  # noqa: F401  (fixture)


def test_draws_follow_the_weights_and_a_source_repeats_only_once_exhausted():
    sampler = MixSampler([10, 40], [3.0, 1.0], samples_per_epoch=4000, seed=1)
    stream = sampler.stream(0)
    first = stream[stream < 10]
    assert abs(len(first) / 4000 - 0.75) < 0.03  # weight 3 of 4
    # source 0 (10 samples) is run through in full before any of its samples repeats
    for start in range(0, len(first) - 10, 10):
        assert sorted(first[start : start + 10]) == list(range(10))
    assert set(stream[stream >= 10]) <= set(range(10, 50))


def test_the_stream_depends_on_the_seed_and_epoch_alone_and_ranks_split_it():
    whole = MixSampler([5, 7], [1.0, 1.0], seed=3)
    assert np.array_equal(whole.stream(2), MixSampler([5, 7], [1.0, 1.0], seed=3).stream(2))
    assert not np.array_equal(whole.stream(2), whole.stream(3))
    ranks = [MixSampler([5, 7], [1.0, 1.0], seed=3, world=2, rank=r) for r in (0, 1)]
    for sampler in (whole, *ranks):
        sampler.set_epoch(2)
    shards = [list(sampler) for sampler in ranks]
    assert len(shards[0]) == len(shards[1]) == 6
    interleaved = [index for pair in zip(*shards) for index in pair]
    assert interleaved == list(whole)


def test_a_skip_resumes_inside_the_epoch_and_ends_with_it():
    sampler = MixSampler([5, 7], [1.0, 2.0], seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.skip = 4
    assert list(sampler) == full[4:] and len(sampler) == len(full) - 4
    sampler.set_epoch(2)
    assert sampler.skip == 0


class RecordBatches(Callback):
    """Writes the dataset indices of every training batch, by step, to ``path``."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(self.path, "a") as file:
            file.write(json.dumps([trainer.global_step, batch.indices.tolist()]) + "\n")


def _steps(path):
    return {step: indices for step, indices in (json.loads(line) for line in open(path))}


@pytest.mark.slow
def test_a_resumed_mix_draws_the_batches_the_interrupted_run_would_have(tmp_path, synthetic_root, tiny_host):  # noqa: F811
    mix = (
        f"[{{root: {synthetic_root}, split: train, weight: 3}}, "
        f"{{root: {synthetic_root}, split: valid_hard, weight: 1}}]"
    )
    def fit(name, max_steps, extra=()):
        recipe = _recipe(
            "tiny/stage1.yaml", tmp_path / name, synthetic_root, tiny_host,
            substitute={r"every_n_train_steps: \d+": "every_n_train_steps: 1", r"val_check_interval: \d+": "val_check_interval: 100"},
        )
        main([
            "fit", "--config", recipe, "--trainer.max_steps", str(max_steps), "--data.init_args.batch_size", "2",
            "--data.init_args.train_mix", mix, "--data.init_args.samples_per_epoch", "40", "--data.init_args.tsf_tracks", "annotation",
            "--trainer.callbacks+=tests.test_mixing.RecordBatches", f"--trainer.callbacks.path={tmp_path / name / 'batches.jsonl'}",
            *extra,
        ])
        return tmp_path / name / "batches.jsonl"

    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()
    straight = _steps(fit("straight", 4))
    fit("resumed", 2, ["--ckpt_path", "last"])
    resumed = _steps(fit("resumed", 4, ["--ckpt_path", "last"]))
    assert sorted(straight) == [0, 1, 2, 3] and sorted(resumed) == [0, 1, 2, 3]
    assert resumed == straight  # steps 2 and 3 after the resume: the same samples as without it
