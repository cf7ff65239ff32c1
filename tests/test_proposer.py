"""The class-agnostic proposer: its matching and box losses, training, and the authors'
release layout read through our loader."""

import itertools
import json

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
from transformers.loss.loss_for_object_detection import generalized_box_iou as hf_generalized_box_iou

from sparrow_plugin.decoder.build import build_sam2
from sparrow_plugin.errors import CheckpointError
from sparrow_plugin.grounding.proposer import ClassAgnosticProposer, ProposerConfig, proposer_losses
from sparrow_plugin.grounding.releases import (
    load_proposer_release,
    tiny_proposer_config,
    write_proposer_release,
    write_tiny_proposer_release,
)

TINY_SAM2 = "sam2.1_hiera_tiny128"


def _tiny(**changes) -> ProposerConfig:
    return ProposerConfig(**{**tiny_proposer_config(16).__dict__, "dropout": 0.0, **changes})


def test_the_authors_proposer_has_their_parameter_count():
    """The reference's trainable parameters, counted on its classes: about 11.18 M."""
    assert round(sum(p.numel() for p in ClassAgnosticProposer().parameters()) / 1e6, 2) == 11.18


def test_giou_matches_hand_computed_values():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 5.0, 5.0]])
    # overlap 1, union 7, hull 9: 1/7 - 2/9; disjoint unit boxes in a 5x5 hull: -(25-5)/25
    expected = {(0, 1): 1 / 7 - 2 / 9, (0, 2): 0 - (25 - 5) / 25, (0, 0): 1.0}
    for giou in (generalized_box_iou, hf_generalized_box_iou):
        values = giou(boxes, boxes)
        for (i, j), value in expected.items():
            assert float(values[i, j]) == pytest.approx(value, abs=1e-6)


def test_hungarian_matching_finds_the_cheapest_assignment():
    """transformers' matcher with the authors' costs (2 focal class, 5 L1, 2 GIoU) against
    every assignment of the targets to distinct queries."""
    generator = torch.Generator().manual_seed(0)
    matcher = DeformableDetrHungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0)
    for trial in range(5):
        queries, count = 5, 1 + trial % 3
        logits = torch.randn(1, queries, 1, generator=generator)
        boxes = torch.rand(1, queries, 2, generator=generator) * 0.5 + 0.25
        boxes = torch.cat([boxes, torch.rand(1, queries, 2, generator=generator) * 0.3 + 0.05], -1)
        targets = torch.cat([torch.rand(count, 2, generator=generator) * 0.5 + 0.25, torch.rand(count, 2, generator=generator) * 0.3 + 0.05], -1)
        cost = _reference_cost(logits[0], boxes[0], targets)
        (rows, columns), = matcher({"logits": logits, "pred_boxes": boxes}, [{"class_labels": torch.zeros(count, dtype=torch.long), "boxes": targets}])
        matched = float(cost[rows, columns].sum())
        best = min(sum(float(cost[q, t]) for t, q in enumerate(choice)) for choice in itertools.permutations(range(queries), count))
        assert matched == pytest.approx(best, abs=1e-5) and len(set(rows.tolist())) == count


def _reference_cost(logits, boxes, targets):
    """The matching cost written out: focal-style class cost, L1 on cxcywh, -GIoU."""
    probability = logits.sigmoid()[:, :1]
    positive = 0.25 * (1 - probability) ** 2 * -(probability + 1e-8).log()
    negative = 0.75 * probability**2 * -(1 - probability + 1e-8).log()
    giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(targets, "cxcywh", "xyxy"))
    return 2 * (positive - negative) + 5 * torch.cdist(boxes, targets, p=1) - 2 * giou


def test_the_loss_falls_on_a_tiny_overfit():
    torch.manual_seed(0)
    proposer = ClassAgnosticProposer(_tiny())
    maps = torch.randn(2, 16, 8, 8)
    targets = [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]), torch.tensor([[0.5, 0.5, 0.4, 0.4]])]
    optimizer = torch.optim.AdamW(proposer.parameters(), lr=2e-3)
    first = None
    for _ in range(60):
        losses = proposer_losses(proposer(maps), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        first = first if first is not None else float(losses["loss"].detach())
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_giou_enc"} <= set(losses)
    assert float(losses["loss"].detach()) < first / 4
    best = proposer.propose(maps, top_k=5).boxes[1]
    target = box_convert(targets[1], "cxcywh", "xyxy")
    assert float(generalized_box_iou(best, target).max()) > 0.7


def test_an_image_without_boxes_trains_objectness_down():
    proposer = ClassAgnosticProposer(_tiny())
    losses = proposer_losses(proposer(torch.randn(1, 16, 8, 8)), [torch.zeros(0, 4)])
    assert torch.isfinite(losses["loss"]) and float(losses["loss_bbox"]) == 0.0
    losses["loss"].backward()
    assert proposer.transformer.class_embed_coco[-1].bias.grad.abs().sum() > 0


def test_reference_points_stay_or_follow_the_boxes():
    """Layer 0 samples around the encoder's boxes either way; later layers differ."""
    torch.manual_seed(0)
    authors = ClassAgnosticProposer(_tiny()).eval()
    with torch.no_grad():  # boxes that move: a trained-looking box head
        for head in authors.transformer.bbox_embed:
            head.layers[-1].weight.normal_(0, 0.3)
    refined = ClassAgnosticProposer(_tiny(refine_reference_points=True)).eval()
    refined.load_state_dict(authors.state_dict())
    maps = torch.randn(1, 16, 8, 8)
    a, b = authors(maps), refined(maps)
    torch.testing.assert_close(a.boxes[:, 0], b.boxes[:, 0])
    assert not torch.allclose(a.boxes[:, 1], b.boxes[:, 1])


def test_the_authors_layout_saves_and_loads_with_the_same_outputs(tmp_path):
    torch.manual_seed(1)
    image_encoder = build_sam2(TINY_SAM2).image_encoder
    proposer = ClassAgnosticProposer(tiny_proposer_config(image_encoder.neck.d_model)).eval()
    write_proposer_release(tmp_path / "release", proposer, image_encoder, TINY_SAM2)
    state = torch.load(tmp_path / "release" / "pytorch_model.bin", weights_only=True)
    assert "ddetr_transformer.encoder.layers.0.fc1.weight" in state and "ddetr_transformer.decoder.bbox_embed.0.layers.0.weight" in state
    assert "vis_encoder.trunk.patch_embed.proj.weight" in state
    release = load_proposer_release(tmp_path / "release", image_size=128)
    frames = torch.rand(2, 3, 120, 160)
    expected = proposer.propose(release.features(frames))
    loaded = release.proposer.eval().propose(release.features(frames))
    torch.testing.assert_close(loaded.boxes, expected.boxes)
    torch.testing.assert_close(loaded.embeddings, expected.embeddings)
    assert not release.shares_encoder
    shared = load_proposer_release(tmp_path / "release", host_image_encoder=image_encoder, image_size=128)
    assert shared.shares_encoder and shared.features.image_encoder is image_encoder


def test_a_removed_key_and_a_differing_alias_are_named(tmp_path):
    release = write_tiny_proposer_release(tmp_path / "release")
    weights = release / "pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    del state["ddetr_transformer.decoder.layers.1.fc2.bias"]
    torch.save(state, weights)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): transformer\.decoder\.layers\.1\.mlp\.fc2\.bias"):
        load_proposer_release(release)
    state = torch.load(weights, weights_only=True)
    state["ddetr_transformer.decoder.layers.1.fc2.bias"] = torch.zeros(32)
    state["ddetr_transformer.decoder.class_embed_coco.0.bias"] = state["ddetr_transformer.class_embed_coco.0.bias"] + 1
    torch.save(state, weights)
    with pytest.raises(CheckpointError, match=r"decoder\.class_embed_coco\.0\.bias should be the same tensor as ddetr_transformer\.class_embed_coco\.0\.bias"):
        load_proposer_release(release)


def test_a_release_of_another_architecture_is_refused(tmp_path):
    release = write_tiny_proposer_release(tmp_path / "release")
    config = json.loads((release / "config.json").read_text())
    config["ddetr_cfg"]["num_feature_levels"] = 4
    (release / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="expected the authors' proposer"):
        load_proposer_release(release)


# ----------------------------------------------------------------------------- box data and pre-training


def _coco(tmp_path, boxes_per_image, size=(40, 60), crowd=()):
    """A COCO-format file of blank images with the given [x, y, w, h] boxes."""
    from PIL import Image

    images, annotations = [], []
    for image_id, boxes in enumerate(boxes_per_image, start=1):
        name = f"{image_id:03d}.jpg"
        Image.new("RGB", (size[1], size[0])).save(tmp_path / name)
        images.append({"id": image_id, "file_name": name, "width": size[1], "height": size[0]})
        for box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": box, "area": box[2] * box[3],
                                "iscrowd": int(len(annotations) in crowd)})
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    return path


def test_box_data_reads_coco_boxes_class_agnostic_and_skips_crowd_and_slivers(tmp_path):
    from sparrow_plugin.data.boxes import BoxSource, CocoBoxes

    path = _coco(tmp_path, [[[6, 4, 30, 20], [0, 0, 1, 30], [10, 10, 5, 5]]], crowd=(2,))
    item = CocoBoxes(BoxSource(str(path)), image_size=32, train=False)[0]
    assert item["image"].shape == (3, 32, 32) and item["head"] == "coco"
    torch.testing.assert_close(item["boxes"], torch.tensor([[21 / 60, 14 / 40, 30 / 60, 20 / 40]]))  # the sliver and the crowd box left out


def test_batches_hold_one_source_and_follow_the_weights(tmp_path):
    from sparrow_plugin.data.boxes import SourceBatchSampler

    sampler = SourceBatchSampler([10, 7], [1.0, 2.0], batch_size=4, seed=0)
    batches = list(sampler)
    assert all(max(b) < 10 or min(b) >= 10 for b in batches)  # one source each
    assert sum(min(b) >= 10 for b in batches) == 3 and sum(max(b) < 10 for b in batches) == 2  # 14 -> 12 of the second, 10 -> 8 of the first
    sampler.set_epoch(1)
    assert list(sampler) != batches
    evaluation = SourceBatchSampler([10, 7], [1.0, 1.0], batch_size=4, shuffle=False)
    assert sorted(i for b in evaluation for i in b) == list(range(17))  # every image once


def test_the_proposer_pretrains_through_the_cli_and_writes_a_release(tmp_path, synthetic_root):
    from sparrow_plugin.cli import run

    from .test_cli import _recipe

    recipe = _recipe("tiny/proposer.yaml", tmp_path, synthetic_root, tmp_path / "unused", substitute={
        r"sam2_weights: \S+": "sam2_weights: null",
        r"d_model: 64, encoder_layers: 2, decoder_layers: 3": "d_model: 32, encoder_layers: 1, decoder_layers: 2",
        r"num_queries: 50": "num_queries: 20",
    })
    cli = run(["fit", "--config", recipe, "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--data.init_args.batch_size", "4",
               "--model.init_args.lr_scheduler.init_args.warmup_steps", "1"])
    metrics = cli.trainer.callback_metrics
    assert {"val/AR@10", "val/AR@100", "val/AR@300"} <= set(metrics) and 0 <= float(metrics["val/AR@10"]) <= 1
    release = load_proposer_release(tmp_path / "outputs" / "proposer" / "release", image_size=128)
    torch.testing.assert_close(release.proposer.state_dict()["transformer.level_embed"], cli.model.proposer.transformer.level_embed.detach())
