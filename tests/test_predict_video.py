"""`sparrow predict VIDEO "expression"`: a user's own video in, masks, an overlay video and a
JSON out; every broken input is one message."""

import json

import av
import numpy as np
import pytest
from PIL import Image

from sparrow_plugin.cli import main
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.video_io import read_video, write_video

from .test_user_errors import refused, sparrow, succeeded

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(work, tmp_path_factory):
    """An mp4 made from a synthetic valid_u video, and its frame folder."""
    dataset = MeViSDataset(work["data"], "valid_u", image_size=32)
    video = dataset.expressions[0].video
    folder = dataset.frames_dir / video
    frames = np.stack([np.array(Image.open(path)) for path in sorted(folder.glob("*.jpg"))])
    mp4 = write_video(tmp_path_factory.mktemp("clip") / f"{video}.mp4", frames, fps=8)
    return {"mp4": mp4, "folder": folder, "frames": len(frames), "size": frames.shape[1:3]}


def test_a_new_user_predicts_on_an_mp4(work, clip, tmp_path):
    out = tmp_path / "out"
    done = sparrow(
        "predict", clip["mp4"], "the red circle", "--expression", "the blue star",
        "--config", work["recipe"], "--ckpt_path", work["checkpoint"], "--out", out,
    )
    succeeded(done)
    entries = json.loads((out / "predictions.json").read_text())
    assert [e["expression"] for e in entries] == ["the red circle", "the blue star"]
    height, width = clip["size"]
    for entry in entries:
        folder = out / entry["exp_id"]
        masks = sorted((folder / "mask").glob("*.png"))
        assert [p.stem for p in masks] == [f"{t:05d}" for t in range(clip["frames"])]
        assert Image.open(masks[0]).size == (width, height) and set(np.unique(np.array(Image.open(masks[0])))) <= {0, 255}
        assert len(list(folder.glob("object_*"))) == len(entry["objects"])
        for obj in entry["objects"]:
            assert len(obj["presence"]) == clip["frames"] and all(0 <= p <= 1 for p in obj["presence"])
        assert entry["frames"] == clip["frames"] and entry["prompted_frame"] in [p.stem for p in masks]
        assert isinstance(entry["answer"], str)
        with av.open(str(folder / "overlay.mp4")) as container:  # the overlay plays
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(decoded) == clip["frames"] and decoded[0].shape[1] >= width and decoded[0].shape[0] > height  # a caption band above


def test_a_folder_of_frames_and_a_chosen_rate(work, clip, tmp_path):
    out = tmp_path / "out"
    main(["predict", str(clip["folder"]), "the red circle", "--config", work["recipe"], "--ckpt_path", str(work["checkpoint"]), "--out", str(out)])
    assert len(list((out / "0" / "mask").glob("*.png"))) == clip["frames"]
    sampled = read_video(clip["mp4"], fps=4)  # 8 fps video at 4 fps: every other frame
    assert sampled.names == [f"{t:05d}" for t in range(0, clip["frames"], 2)] and sampled.fps == 4


def _refused_in_process(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *map(str, args)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


def test_broken_videos_are_one_message_each(work, clip, tmp_path, capsys):
    common = ["--config", work["recipe"], "--ckpt_path", work["checkpoint"], "--out", tmp_path / "out"]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00" * 2048)
    assert f"{corrupt}: not a video PyAV can decode" in _refused_in_process(capsys, corrupt, "the red circle", *common)
    truncated = tmp_path / "truncated.mp4"
    data = clip["mp4"].read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    assert f"{truncated}:" in _refused_in_process(capsys, truncated, "the red circle", *common)
    empty = tmp_path / "frames"
    empty.mkdir()
    assert f"{empty}: no frames in the folder" in _refused_in_process(capsys, empty, "the red circle", *common)
    (empty / "00000.jpg").write_bytes(b"not a jpeg")
    assert f"{empty / '00000.jpg'}: not a readable image" in _refused_in_process(capsys, empty, "the red circle", *common)


def test_an_expression_longer_than_the_hosts_context_is_named(work, clip, tmp_path, capsys):
    long = " ".join(["red"] * 1100)  # the tiny host's context is 1024 positions
    err = _refused_in_process(capsys, clip["mp4"], long, "--config", work["recipe"], "--ckpt_path", work["checkpoint"], "--out", tmp_path)
    assert "makes a prompt of" in err and "past the host's context of 1024 tokens" in err


def test_a_checkpoint_for_another_host_is_refused(work, clip, unipixel_checkpoint, tmp_path):
    done = sparrow("predict", clip["mp4"], "the red circle", "--config", work["recipe"], "--ckpt_path", unipixel_checkpoint, "--out", tmp_path)
    refused(done, str(unipixel_checkpoint), "was trained as another model", "base: 'unipixel' in the checkpoint, 'tiny' here")


def test_the_writer_puts_each_object_its_box_and_presence_on_disk(clip, tmp_path):
    """The writer on an mp4, with a prediction of two objects: the first prompted with a
    kept box on frame 2, the second without one."""
    from sparrow_plugin.video_io import VideoSource
    from sparrow_plugin.video_predict import write_expression

    source = VideoSource(clip["mp4"])
    frames, (height, width) = clip["frames"], clip["size"]
    objects = np.zeros((2, frames, height, width), bool)
    objects[0, :, 10:30, 20:50] = True
    objects[1, 3:, 60:70, 100:120] = True
    folder = tmp_path / "out" / "0"
    for j, masks in enumerate(objects):  # as the predictor writes them while tracking
        (folder / f"object_{j}").mkdir(parents=True)
        for name, mask in zip(source.names, masks):
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"object_{j}" / f"{name}.png")
    low, high = float(1 / (1 + np.exp(5.0))), float(1 / (1 + np.exp(-5.0)))
    write_expression(
        source, folder, "0", "the red circle", "It is [BOX] [SEG].", False, 2,
        boxes=[[15.0, 5.0, 55.0, 35.0], None], box_scores=[0.875, None], prompted=[[2], [2]],
        presence=[[high] * frames, [low] * 3 + [high] * (frames - 3)],
    )
    entry = json.loads((folder / "prediction.json").read_text())
    first, second = entry["objects"]
    assert first["box"] == [15.0, 5.0, 55.0, 35.0] and first["box_score"] == 0.875 and first["prompted_frames"] == ["00002"]
    assert second["box"] is None and second["box_score"] is None
    assert second["presence"][:3] == [round(low, 4)] * 3 and second["presence"][3] > 0.99
    assert entry["prompted_frame"] == "00002" and entry["frames"] == frames
    union = np.array(Image.open(folder / "mask" / "00004.png"))
    alone = np.array(Image.open(folder / "object_1" / "00004.png"))
    assert (union == 255).sum() == 20 * 30 + 10 * 20 and (alone == 255).sum() == 10 * 20
    with av.open(str(folder / "overlay.mp4")) as container:
        decoded = [frame.to_ndarray(format="rgb24").astype(int) for frame in container.decode(video=0)]
    assert len(decoded) == frames
    band = decoded[0].shape[0] - height
    # the box is drawn on the prompted frame only: its top edge differs from frame 1's
    edge = (slice(band + 5, band + 7), slice(17, 53))
    assert np.abs(decoded[2][edge] - decoded[1][edge]).mean() > 40


def test_a_real_hosts_tiny_release_predicts_on_a_video(clip, unipixel_checkpoint, tmp_path):
    from .test_cli import RECIPES

    release = unipixel_checkpoint.parents[2] / "release"
    out = tmp_path / "out"
    main([
        "predict", str(clip["mp4"]), "the red circle", "--config", str(RECIPES / "unipixel" / "stage1.yaml"),
        "--config", str(RECIPES / "overlays" / "tiny_cpu.yaml"), "--model.init_args.host_args", json.dumps({"path": str(release)}),
        "--ckpt_path", str(unipixel_checkpoint), "--out", str(out),
    ])
    entry = json.loads((out / "predictions.json").read_text())[0]
    assert entry["frames"] == clip["frames"] and len(list((out / "0" / "mask").glob("*.png"))) == clip["frames"]
    with av.open(str(out / "0" / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == clip["frames"]


def test_sampled_decoding_seeks_and_gives_the_frames_a_full_decode_gives(tmp_path):
    from sparrow_plugin.video_io import read_frames

    frames = np.zeros((120, 48, 64, 3), np.uint8)
    for t in range(len(frames)):
        frames[t, :, : t % 64] = 200  # a bar as long as the frame's position
    path = write_video(tmp_path / "long.mp4", frames, fps=30, keyframe_interval=15)
    full = read_video(path).frames
    wanted = [0, 3, 44, 45, 90, 119, 7]  # unsorted, near and far apart
    assert np.array_equal(read_frames(path, wanted), full[wanted])
    sampled = read_video(path, fps=4)  # 30 -> 4 fps: the first frame at or after each 1/4 s
    assert sampled.source_indices == [0, 8, 15, 23, 30, 38, 45, 53, 60, 68, 75, 83, 90, 98, 105, 113]
    assert np.array_equal(sampled.frames, full[sampled.source_indices])
