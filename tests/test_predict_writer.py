"""MaskWriter called directly, with fake trainers standing in for one or two ranks, and the
overlay pictures it writes, drawn from uniform frames whose pixels are known."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from PIL import Image

from sparrow_plugin.errors import SparrowError
from sparrow_plugin.data.synthetic import COLOURS
from sparrow_plugin.predict import (
    OUTLINE_PALETTE, MaskWriter, mask_boundary, outline_tile, overlay_strip, pick_outline_colours, shown_frames,
)

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


def _write(writer: MaskWriter, trainer, samples, full_masks=None) -> None:
    records, queries = zip(*samples)
    batch = SimpleNamespace(
        frames=torch.rand(len(records), FRAMES, 3, 8, 8),
        original_sizes=[(HEIGHT, WIDTH)] * len(records),
        queries=list(queries),
        full_masks=full_masks,
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
    assert [p.name for p in (out / "overlays").iterdir()] == ["v0_0.png"]  # one in all, by rank 0
    assert Image.open(out / "overlays" / "v0_0.png").format == "PNG"


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
    assert len(list((out / "overlays").glob("*.png"))) == 3
    assert (_png(out / "v0" / "1" / "00001.png") == 255).sum() == 24


# ----------------------------------------------------------------------------- overlays

RED = np.array(COLOURS["red"], dtype=np.float32)  # the synthetic benchmark's red, which the old tint hid
# a frame colour neither the grey text nor the palette produces: its pixels mark where the tiles are
FRAME = (40, 150, 90)


def _uniform_frames(colour, count: int = FRAMES, size: int = 8) -> torch.Tensor:
    """(count, 3, size, size) frames of one colour (0..255 RGB), in [0, 1]."""
    return (torch.tensor(colour, dtype=torch.float32) / 255).view(1, 3, 1, 1).expand(count, 3, size, size).clone()


def _block(top: int, left: int, bottom: int, right: int, count: int = FRAMES, size=(48, 64)) -> torch.Tensor:
    masks = torch.zeros(count, *size, dtype=torch.bool)
    masks[:, top:bottom, left:right] = True
    return masks


def _tile_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)))


def test_outline_colour_stands_out_from_the_frame():
    mostly_red = np.concatenate([np.tile(RED, (90, 1)), np.full((10, 3), 50.0)])  # a red target on a dark background
    colour = pick_outline_colours(mostly_red, 1)[0]
    assert _distance(colour, RED) > 250, colour
    assert pick_outline_colours(np.full((20, 3), 255.0), 1)[0] != OUTLINE_PALETTE["white"]
    assert _distance(pick_outline_colours(np.full((20, 3), 250.0), 1)[0], (255, 255, 255)) > 250
    # two colours for two rows: distinct, the same ones every time
    first, second = pick_outline_colours(mostly_red, 2)
    assert first != second and pick_outline_colours(mostly_red, 2) == [first, second]


def test_outline_lies_on_the_mask_boundary_and_leaves_the_inside_visible():
    tile = np.full((40, 50, 3), RED, dtype=np.uint8)
    mask = np.zeros((40, 50), dtype=bool)
    mask[8:32, 10:40] = True
    colour = OUTLINE_PALETTE["cyan"]
    drawn = outline_tile(tile, mask, colour)
    outlined = (drawn == colour).all(axis=-1)
    boundary = mask_boundary(torch.from_numpy(mask)[None])[0].numpy()
    assert outlined.any() and (outlined == boundary).all()
    # the outline is 1-2 px: its pixels are inside the mask and touch the outside within 2 px
    assert outlined[8, 10:40].all() and outlined[9, 12:38].all() and not outlined[10, 12:38].any()
    assert (drawn[~mask] == tile[~mask]).all()  # outside: untouched
    interior = mask & ~boundary
    assert np.abs(drawn[interior].astype(float) - RED).max() < 0.25 * 255  # inside: still the target's colour, lightly washed


def test_a_mask_filling_the_frame_still_shows_its_outline():
    full = torch.ones(1, 10, 12, dtype=torch.bool)
    boundary = mask_boundary(full)[0]
    assert boundary[0].all() and boundary[-1].all() and boundary[:, 0].all() and not boundary[4, 4]


def test_overlay_on_a_red_target_outlines_it_in_a_colour_far_from_red():
    frames = _uniform_frames(COLOURS["red"])
    image = np.array(overlay_strip(frames, _block(10, 10, 40, 50), "the red square -> it is [SEG]", tile_height=48))
    outline = pick_outline_colours(np.tile(RED, (10, 1)), 1)[0]
    assert _distance(outline, RED) > 250
    assert (image == outline).all(axis=-1).sum() >= FRAMES * 2 * (30 + 40)  # at least the 1-px perimeter of each tile


def test_overlay_with_ground_truth_has_two_rows_without_it_one():
    frames = _uniform_frames(FRAME)
    predicted = _block(5, 5, 15, 15)
    alone = np.array(overlay_strip(frames, predicted, "q -> a", tile_height=48))
    beside = np.array(overlay_strip(frames, predicted, "q -> a", ground_truth=_block(20, 20, 40, 40), tile_height=48))
    assert beside.shape[1] == alone.shape[1] and beside.shape[0] > alone.shape[0] + 48
    for image, rows in ((alone, 1), (beside, 2)):
        frame_pixels = (image == FRAME).all(axis=-1)
        assert len(_tile_runs(frame_pixels.any(axis=1))) == rows
        assert len(_tile_runs(frame_pixels.any(axis=0))) == FRAMES  # one tile per frame, side by side
    # the two rows' outlines are in two different colours, both far from the frame
    colours = pick_outline_colours(np.tile(np.array(FRAME, dtype=np.float32), (10, 1)), 2)
    for colour in colours:
        assert (beside == colour).all(axis=-1).any() and _distance(colour, FRAME) > 200


def test_every_tile_is_labelled_with_the_frame_it_shows():
    assert shown_frames(3, 8) == [0, 1, 2]
    assert shown_frames(20, 4) == [0, 6, 13, 19]  # evenly spaced, the first and the last included
    frames, predicted = _uniform_frames(FRAME, count=20), _block(5, 5, 15, 15, count=20)

    def draw(labels):
        return np.array(overlay_strip(frames, predicted, "q -> a", frame_labels=labels, max_frames=4, tile_height=48))

    names = draw([f"{i:05d}" for i in range(20)])
    others = draw([f"{i + 50:05d}" for i in range(20)])  # same length, other digits
    frame_pixels = (names == FRAME).all(axis=-1)
    tile_top = int(np.flatnonzero(frame_pixels.any(axis=1))[0])
    changed = (names != others).any(axis=-1)
    assert changed.any() and not changed[tile_top:].any()  # labels sit in the band above the tiles, not on them
    for start, end in _tile_runs(frame_pixels.any(axis=0)):  # every one of the 4 tiles has its own label
        assert changed[:, start:end].any()
    assert len(_tile_runs(frame_pixels.any(axis=0))) == 4


def test_overlay_labels_an_empty_prediction_and_a_missing_seg_apart():
    frames, empty = _uniform_frames(FRAME), torch.zeros(FRAMES, 48, 64, dtype=torch.bool)
    no_seg = np.array(overlay_strip(frames, empty, "q -> none", emitted_seg=False, tile_height=48))
    empty_mask = np.array(overlay_strip(frames, empty, "q -> it is [SEG]", emitted_seg=True, tile_height=48))
    tile_top = int(np.flatnonzero((no_seg == FRAME).all(axis=-1).any(axis=1))[0])
    label_column = int(np.flatnonzero((no_seg == FRAME).all(axis=-1).any(axis=0))[0])
    assert (no_seg[tile_top:, :label_column] != empty_mask[tile_top:, :label_column]).any()  # the row labels differ


def test_writer_puts_the_ground_truth_above_the_prediction_in_a_png(tmp_path):
    out = tmp_path / "predictions"
    trainer = _rank(0, 1)
    ground_truth = torch.zeros(FRAMES, HEIGHT, WIDTH, dtype=torch.bool)
    ground_truth[:, 1:5, 2:8] = True
    _write(MaskWriter(str(out)), trainer, [_sample("v0", "0", "it is [SEG]", 1)], full_masks=[ground_truth])
    _write(MaskWriter(str(out / "no_labels")), trainer, [_sample("v0", "0", "it is [SEG]", 1)], full_masks=None)
    with_gt, without = Image.open(out / "overlays" / "v0_0.png"), Image.open(out / "no_labels" / "overlays" / "v0_0.png")
    assert with_gt.format == without.format == "PNG"
    assert with_gt.width == without.width and with_gt.height > without.height
