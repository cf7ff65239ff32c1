"""The tiny host's pre-training: its three recipes end to end, and its helpers."""

import json
import math
import shutil

import pytest
import torch

from sparrow_plugin.cli import main
from sparrow_plugin.data.synthetic_scenes import SceneFrameDataset, patch_labels
from sparrow_plugin.errors import DatasetError
from sparrow_plugin.hosts.tiny import TinyVideoLLM
from sparrow_plugin.interfaces import HostAdapter
from sparrow_plugin.pretraining import named_attributes
from sparrow_plugin.schedules import WarmupCosine

from .test_cli import _recipe

SMALL = ["--model.init_args.config.num_layers", "2", "--model.init_args.config.hidden_size", "64"]


def test_release_from_the_three_recipes(tmp_path, synthetic_root):
    release = tmp_path / "host"
    args = {"tiny/pretrain_sam2.yaml": [], "tiny/pretrain_host.yaml": SMALL, "tiny/pretrain_grounding.yaml": []}
    for name, extra in args.items():
        recipe = _recipe(name, tmp_path, synthetic_root, release)
        main(["fit", "--config", recipe, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", *extra])
    assert {p.name for p in release.iterdir()} >= {"config.json", "model.safetensors", "sam2.safetensors", "tokenizer.json"}
    host = TinyVideoLLM.from_pretrained(release)
    assert isinstance(host, HostAdapter)
    assert host.seg_projection() is not None and json.loads((release / "config.json").read_text())["grounding_head_tokens"] == 2
    assert host.decoder_spec().state_dict is not None


def test_named_attributes():
    from sparrow_plugin.pretraining.common import _ANY_COLOUR, _ANY_SHAPE

    assert named_attributes("the red circle") == (0, 5)  # red, then shapes after the 5 colours
    assert named_attributes("the two circles") == (_ANY_COLOUR, 5)
    assert named_attributes("the two green shapes") == (1, _ANY_SHAPE)
    assert named_attributes("the blue star below the green star") == (2, 8)


def test_patch_labels_pick_the_best_covering_object():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # top-left patch fully covered by object 0
    masks[1, 4:, 4:] = True
    masks[1, 0, 4] = True  # a sliver of object 1 in the top-right patch: under min_cover
    labels = patch_labels(masks, torch.tensor([3, 1]), grid=2)
    assert labels.tolist() == [[4, 0], [0, 2]]


def test_scenes_need_the_synthetic_objects(tmp_path, synthetic_root):
    root = tmp_path / "mevis_like"
    shutil.copytree(synthetic_root, root)
    meta_path = root / "train" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    for video in meta["videos"].values():
        video.pop("objects")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="no 'objects' field"):
        SceneFrameDataset(root, "train", 32)


def test_warmup_cosine_keeps_group_ratios():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 0.1}])
    schedule = WarmupCosine(optimizer, total_steps=10, warmup_steps=2)
    rates = []
    for _ in range(12):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx([0.5, 0.05])  # warm-up from zero, ratio kept
    assert rates[2] == pytest.approx([1.0, 0.1])  # the peak
    assert rates[11] == pytest.approx([0.0, 0.0], abs=1e-12)  # decayed, then held


def test_warmup_cosine_resumed_with_a_longer_recipe_decays_over_it():
    """A checkpoint of a 10-step schedule, resumed by a 20-step recipe: the count carries
    on, the shape is the recipe's (the old one would hold the rate at zero)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    old = WarmupCosine(optimizer, total_steps=10)
    for _ in range(10):
        optimizer.step()
        old.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    longer = WarmupCosine(torch.optim.SGD([parameter], lr=1.0), total_steps=20)
    with pytest.warns(UserWarning, match="total_steps 10 -> 20"):
        longer.load_state_dict(old.state_dict())
    longer.optimizer.step()
    longer.step()
    assert longer.last_epoch == 11 and longer.total_steps == 20
    assert longer.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 11 / 20)))

