"""Pictures while training: overlays of each validation (PNGs and TensorBoard) and curves."""

import csv

import numpy as np
import pytest
from PIL import Image

from sparrow_plugin.cli import main

from .test_cli import _recipe

pytestmark = pytest.mark.slow


def _fit(tmp_path, synthetic_root, host, *extra):
    recipe = _recipe(
        "tiny/stage1.yaml", tmp_path, synthetic_root, host,
        substitute={r"every_n_train_steps: \d+": "every_n_train_steps: 2", r"val_check_interval: \d+": "val_check_interval: 2"},
    )
    main([
        "fit", "--config", recipe, "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1",
        "--data.init_args.val_limit", "3", "--data.init_args.tsf_tracks", "annotation", *extra,
    ])
    return tmp_path / "outputs" / "stage1"


def test_each_validation_draws_overlays_in_the_csv_loggers_folder(tmp_path, synthetic_root, work):
    run = _fit(tmp_path, synthetic_root, work["folder"] / "host", "--val_overlays", "2")
    version = next((run / "logs").glob("version_*"))
    steps = sorted(p.name for p in (version / "overlays").iterdir())
    assert steps == ["step2", "step4"]  # one folder per validation
    for step in steps:
        pictures = sorted((version / "overlays" / step).glob("*.png"))
        assert len(pictures) == 2
        picture = np.asarray(Image.open(pictures[0]))
        assert picture.ndim == 3 and picture.shape[0] > 100 and picture.std() > 10  # frames, not a blank
    # the learning curves of the same run
    out = tmp_path / "curves.png"
    main(["report", "--curves", str(version / "metrics.csv"), str(out)])
    assert Image.open(out).size == (1100, 340)  # two panels: the training loss, the validation J&F
    with open(version / "metrics.csv") as handle:
        assert any(row.get("val/J&F") for row in csv.DictReader(handle))


def test_overlays_reach_tensorboard(tmp_path, synthetic_root, work):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _fit(
        tmp_path, synthetic_root, work["folder"] / "host", "--val_overlays", "1",
        "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.init_args.save_dir", str(tmp_path / "tb"),
    )
    events = next((tmp_path / "tb").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    assert len(tags) == 1 and tags[0].startswith("val/overlay/")
    assert [event.step for event in accumulator.Images(tags[0])] == [2, 4]
    assert run.exists()


def test_curves_of_a_file_without_curves_is_one_message(tmp_path, capsys):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step\n0,1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--curves", str(metrics), str(tmp_path / "out.png")])
    assert exit_info.value.code == 2 and "no train/loss or val/...J&F column" in capsys.readouterr().err
