"""MaskWriter called directly, with fake trainers standing in for one or two ranks."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from PIL import Image

from sparrow_plugin.errors import SparrowError
from sparrow_plugin.predict import MaskWriter

HEIGHT, WIDTH, FRAMES = 12, 16, 3


def _sample(video: str, exp_id: str, answer: str, masked_frame: int | None, **extra):
    """One record as the model returns it and its batch entry; the mask covers a block of
    ``masked_frame`` only (None: the model emitted no [SEG])."""
    masks = None
    if masked_frame is not None:
        masks = torch.zeros(FRAMES, HEIGHT, WIDTH, dtype=torch.bool)
        masks[masked_frame, 2:6, 3:9] = True
    record = {"video": video, "exp_id": exp_id, "frame_names": [f"{i:05d}" for i in range(FRAMES)], "masks": masks}
    return {**record, "answer": answer, **extra}, f"query of {video}/{exp_id}"


def _write(writer: MaskWriter, trainer, samples) -> None:
    records, queries = zip(*samples)
    batch = SimpleNamespace(
        frames=torch.rand(len(records), FRAMES, 3, 8, 8), original_sizes=[(HEIGHT, WIDTH)] * len(records), queries=list(queries)
    )
    writer.on_predict_start(trainer, None)
    writer.write_on_batch_end(trainer, None, list(records), None, batch, 0)


def _rank(rank: int, world_size: int, barrier=lambda: None):
    return SimpleNamespace(strategy=SimpleNamespace(global_rank=rank, world_size=world_size, barrier=barrier))


def _png(path) -> np.ndarray:
    return np.array(Image.open(path))


def test_two_ranks_write_their_masks_and_rank_zero_merges_the_answers(tmp_path):
    out = tmp_path / "predictions"
    writers = [MaskWriter(str(out), max_overlays=1), MaskWriter(str(out), max_overlays=1)]
    rank1 = _rank(1, 2)
    # rank 0 reaches the barrier first; rank 1 finishes (writes its shard) while rank 0 waits
    rank0 = _rank(0, 2, barrier=lambda: writers[1].on_predict_end(rank1, None))
    _write(writers[0], rank0, [
        _sample("v0", "0", "it is [SEG]", 1, truncated=False), _sample("v1", "0", "none", None, truncated=False)
    ])
    _write(writers[1], rank1, [
        _sample("v0", "1", "[BOX] [S", 2, truncated=True), _sample("v2", "3", "it is [SEG]", 0, truncated=False)
    ])

    writers[0].on_predict_end(rank0, None)

    answers = json.loads((out / "answers.json").read_text())
    assert answers == {"v0/0": "it is [SEG]", "v1/0": "none", "v0/1": "[BOX] [S", "v2/3": "it is [SEG]"}
    assert json.loads((out / "truncated.json").read_text()) == ["v0/1"]
    assert not list(out.glob("answers.rank*.json"))  # shards merged, then deleted
    for key, masked_frame in (("v0/0", 1), ("v1/0", None), ("v0/1", 2), ("v2/3", 0)):
        for frame in range(FRAMES):
            png = _png(out / key / f"{frame:05d}.png")
            assert png.shape == (HEIGHT, WIDTH) and set(np.unique(png)) <= {0, 255}
            assert (png == 255).sum() == (24 if frame == masked_frame else 0), (key, frame)
    assert [p.name for p in (out / "overlays").glob("*.jpg")] == ["v0_0.jpg"]  # one in all, by rank 0


def test_rank_zero_names_a_shard_it_cannot_see(tmp_path):
    out = tmp_path / "predictions"
    writer = MaskWriter(str(out))
    trainer = _rank(0, 2)  # rank 1 wrote elsewhere (no shared filesystem)
    _write(writer, trainer, [_sample("v0", "0", "it is [SEG]", 0)])
    with pytest.raises(SparrowError, match=r"answers\.rank1\.json.*every rank can see"):
        writer.on_predict_end(trainer, None)


def test_single_process_writes_the_same_answers_json(tmp_path):
    out = tmp_path / "predictions"
    out.mkdir()
    (out / "truncated.json").write_text('["old/0"]')  # from an earlier run of another model
    trainer = SimpleNamespace(strategy=SingleDeviceStrategy(torch.device("cpu")))  # no world_size attribute
    writer = MaskWriter(str(out), max_overlays=5)
    _write(writer, trainer, [_sample("v0", "0", "stale", 0)])
    writer.on_predict_end(trainer, None)
    # a second run with the same callback starts afresh; records without "truncated"
    _write(writer, trainer, [_sample("v0", "1", "it is [SEG]", 1), _sample("v3", "2", "none", None)])
    writer.on_predict_end(trainer, None)

    assert json.loads((out / "answers.json").read_text()) == {"v0/1": "it is [SEG]", "v3/2": "none"}
    assert not (out / "truncated.json").exists()  # this model does not report truncation
    assert sorted(p.name for p in out.iterdir()) == ["answers.json", "overlays", "v0", "v3"]
    assert len(list((out / "overlays").glob("*.jpg"))) == 3
    assert (_png(out / "v0" / "1" / "00001.png") == 255).sum() == 24
