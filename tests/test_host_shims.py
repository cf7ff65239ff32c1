"""The three host shims on tiny releases written in the real releases' layouts and key names."""

import importlib
import shutil
import subprocess
import sys

import pytest
import torch

from sparrow_plugin import SparrowWrapper
from sparrow_plugin.cli import main, run
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.errors import CheckpointError
from sparrow_plugin.hosts.release import read_release_weights
from sparrow_plugin.interfaces import HostAdapter

from .test_cli import RECIPES, assert_one_step_trained

# host -> (class, a release key whose removal must be reported as this module key, seg token)
HOSTS = {
    "videoglamm": ("VideoGLaMM", "model.text_hidden_fcs.0.2.bias", "text_hidden_fcs.0.2.bias", "[SEG]"),
    "unipixel": ("UniPixel", "seg_head.3.bias", "seg_head.3.bias", "<|seg|>"),
    "glus": ("GLUS", "model.mm_projector.bias", "mm_projector.bias", "[SEG]"),
}


@pytest.fixture(scope="module")
def vocabulary(synthetic_root):
    return [e.text for e in MeViSDataset(synthetic_root, "train", image_size=32).expressions]


@pytest.fixture(scope="module", params=sorted(HOSTS))
def shim(request, tmp_path_factory, vocabulary):
    name = request.param
    package = importlib.import_module(f"baselines.{name}")
    release = importlib.import_module(f"baselines.{name}.tiny").write_tiny_release(tmp_path_factory.mktemp(name) / "release", vocabulary)
    return name, getattr(package, HOSTS[name][0]), release


def _frames():
    return torch.rand(2, 8, 3, 128, 128, generator=torch.Generator().manual_seed(0))


def _batch(host, answer_token):
    frames = _frames()
    visual = host.encode_video(frames)
    answer = host.answer_template.format(grounding=answer_token)
    return host.build_inputs(visual, ["the red circle", "the two blue squares"], [answer, answer])


def _rewrite(release, tmp_path, edit):
    """A copy of the release whose weights went through ``edit`` (saved as one file)."""
    copy = tmp_path / "edited"
    shutil.copytree(release, copy)
    state = read_release_weights(copy)
    for file in [*copy.glob("pytorch_model*"), *copy.glob("model*.safetensors*")]:  # the release's weights, not the towers'
        file.unlink()
    edit(state)
    torch.save(state, copy / "pytorch_model.bin")
    return copy


def test_release_loads_strictly(shim):
    name, host_class, release = shim
    host = host_class.from_pretrained(release)
    assert isinstance(host, HostAdapter)
    spec = host.decoder_spec()
    assert spec.state_dict and "sam_mask_decoder.iou_token.weight" in spec.state_dict
    inputs = _batch(host, HOSTS[name][3])
    assert inputs.labels is not None and (inputs.labels != -100).any()


def test_tsf_regions_are_one_vector_each_and_train_the_projector(shim):
    """encode_regions: crops at the host's frame size -> (N, hidden), one per crop, a
    gradient into the host's V→L adapters (they train in stage 1 with TSF)."""
    _, host_class, release = shim
    host = host_class.from_pretrained(release)
    height, width = host.frame_request().size(120, 160)
    crops = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(2))
    features = host.encode_regions(crops)
    assert features.shape == (3, host.hidden_size)
    assert not torch.allclose(features[0], features[1])
    features.sum().backward()
    grads = [p.grad for module in host.adapter_modules() for p in module.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)


def test_removed_key_is_named(shim, tmp_path):
    name, host_class, release = shim
    _, release_key, module_key, _ = HOSTS[name]
    broken = _rewrite(release, tmp_path, lambda state: state.pop(release_key))
    with pytest.raises(CheckpointError, match=rf"missing keys \(1\): {module_key.replace('.', '[.]')}"):
        host_class.from_pretrained(broken)


def test_unknown_key_is_named(shim, tmp_path):
    _, host_class, release = shim
    broken = _rewrite(release, tmp_path, lambda state: state.update({"extra_head.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="unexpected keys.*extra_head.weight"):
        host_class.from_pretrained(broken)


def test_wrapper_with_zero_initialised_plugins_keeps_host_logits(shim):
    name, host_class, release = shim
    host = host_class.from_pretrained(release).eval()
    seg = HOSTS[name][3]
    with torch.no_grad():
        before = host(_batch(host, seg)).logits
    known = len(host.tokenizer)  # a padded vocabulary's spare rows may become the new tokens
    wrapper = SparrowWrapper(base=host).eval()
    with torch.no_grad():
        after = wrapper.host(_batch(wrapper.host, seg)).logits
    torch.testing.assert_close(after[..., :known], before[..., :known])
    targets = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n, p in wrapper.named_parameters() if p.requires_grad and ".lora_A." in n}
    assert targets == set(host.default_lora_targets)


def test_generation_agrees_with_a_forward_pass_over_its_output(shim):
    """Cached greedy decoding (with its continued positions) and one pass over prompt plus
    answer pick the same tokens: the positions of generated text are the host's."""
    _, host_class, release = shim
    host = host_class.from_pretrained(release).double().eval()  # float64: tiny random LLMs have near ties
    prompt = host.build_inputs(host.encode_video(_frames().double()), ["the red circle", "the two blue squares"])
    with torch.no_grad():
        generation = host.generate(prompt, max_new_tokens=6)
        logits = host(generation.inputs).logits
    start = prompt.input_ids.shape[1]
    new_ids = generation.inputs.input_ids[:, start:]
    assert new_ids.shape[1] > 0
    answer_logits = logits[:, start - 1 : -1]
    real = generation.inputs.attention_mask[:, start:].bool()
    gap = answer_logits.max(-1).values - answer_logits.gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)
    assert gap[real].max() < 1e-9, gap


def test_stage1_recipe_fast_dev_run(shim, tmp_path, synthetic_root):
    name, _, release = shim
    cli = run([
        "fit", "--config", str(RECIPES / name / "stage1.yaml"), "--config", str(RECIPES / "overlays" / "tiny_cpu.yaml"),
        "--model.init_args.host_args", f"{{path: {release}}}", "--data.init_args.root", str(synthetic_root),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.callbacks.init_args.dirpath", str(tmp_path / "ckpt"), "--trainer.fast_dev_run", "true",
    ])
    assert_one_step_trained(cli)


def test_stage2_recipe_trains_the_filtration_head_on_a_one_step_stage1(shim, tmp_path, synthetic_root):
    """recipes/<host>/stage2.yaml on the tiny release: from a stage-1 checkpoint and a tiny
    proposer on the release's own SAM2 (what `make train BASE=<host> TINY=1 STAGE=2` runs)."""
    from sparrow_plugin.decoder import build_sam2
    from sparrow_plugin.grounding.proposer import ClassAgnosticProposer
    from sparrow_plugin.grounding.releases import tiny_proposer_config, write_proposer_release

    name, host_class, release = shim
    spec = host_class.from_pretrained(release).decoder_spec()
    encoder = build_sam2(spec.config, state_dict=spec.state_dict, overrides=spec.overrides).image_encoder
    write_proposer_release(tmp_path / "proposer", ClassAgnosticProposer(tiny_proposer_config(encoder.neck.d_model)), encoder, spec.config)

    def fit(stage: int, *extra: str):
        folder = tmp_path / f"stage{stage}"
        return run([
            "fit", "--config", str(RECIPES / name / f"stage{stage}.yaml"), "--config", str(RECIPES / "overlays" / "tiny_cpu.yaml"),
            "--model.init_args.host_args", f"{{path: {release}}}", "--data.init_args.root", str(synthetic_root),
            "--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder),
            "--trainer.callbacks.init_args.dirpath", str(folder / "ckpt"), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", *extra,
        ])

    fit(1)
    cli = fit(2, "--model.init_args.init_from", str(tmp_path / "stage1" / "ckpt" / "last.ckpt"),
              "--model.init_args.config.box.proposer", str(tmp_path / "proposer"), "--model.init_args.config.box.image_size", "128")
    trained = {group for group, params in cli.model.trainable_groups.items() if params}
    assert trained == {"filtration", "lora", "seg_adapter"}  # as the authors' stage 2
    assert cli.trainer.global_step == 1 and torch.isfinite(cli.trainer.callback_metrics["train/proposal"])


def test_missing_release_names_what_to_download(shim, tmp_path):
    _, host_class, _ = shim
    with pytest.raises(CheckpointError, match=rf"missing downloads.*\n  {tmp_path / 'absent'}: the .*release folder"):
        host_class.from_pretrained(tmp_path / "absent")


@pytest.mark.parametrize("name", ["videoglamm", "glus"])
def test_missing_clip_tower_is_named_with_the_release(name, tmp_path, capsys):
    """Every absent download is listed at once, and `sparrow fit` prints it without a traceback."""
    recipe = RECIPES / name / "stage1.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--model.init_args.host_args", f"{{path: {tmp_path / 'r'}, clip_path: {tmp_path / 'c'}}}"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("sparrow: error:") and "Traceback" not in message
    assert f"{tmp_path / 'r'}: the" in message and f"{tmp_path / 'c'}: openai/clip-vit-large-patch14" in message


def test_videoglamm_temporal_tower_must_be_named(tmp_path, vocabulary):
    from baselines.videoglamm import VideoGLaMM
    from baselines.videoglamm.tiny import write_tiny_release

    release = write_tiny_release(tmp_path / "release", vocabulary)
    config = (release / "config.json").read_text().replace('"baselines.videoglamm.towers.FrameViTTower"', "null")
    (release / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=r"host_args.temporal_tower: the temporal tower's module class, not bundled"):
        VideoGLaMM.from_pretrained(release)


def test_glus_takes_cross_entropy_at_seg_only(tmp_path, vocabulary):
    from baselines.glus import GLUS
    from baselines.glus.tiny import write_tiny_release

    host = GLUS.from_pretrained(write_tiny_release(tmp_path / "release", vocabulary))
    inputs = _batch(host, "[SEG]")
    labelled = inputs.labels[inputs.labels != -100]
    assert labelled.numel() == 2 and (labelled == host.tokenizer.convert_tokens_to_ids("[SEG]")).all()


def test_unipixel_patch_layout():
    from baselines.unipixel.model import video_patches

    frames = torch.rand(4, 3, 56, 84)
    ours, grid = video_patches(frames, patch=14, temporal_patch=2, merge=2)
    assert grid.tolist() == [2, 4, 6] and ours.shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
    # the first merged group: rows 0-1, columns 0-1 of frames 0-1; first patch = frame pair (0, 1), pixels [0:14, 0:14]
    first = torch.stack([frames[0, :, :14, :14], frames[1, :, :14, :14]], dim=1).flatten()
    assert torch.equal(ours[0], first)
    second = torch.stack([frames[0, :, :14, 14:28], frames[1, :, :14, 14:28]], dim=1).flatten()
    assert torch.equal(ours[1], second)  # the next patch in the 2x2 group is its right neighbour
    third = torch.stack([frames[0, :, 14:28, :14], frames[1, :, 14:28, :14]], dim=1).flatten()
    assert torch.equal(ours[2], third)


def test_unipixel_positions_follow_the_trained_rule():
    from baselines.unipixel.model import mrope_positions

    ids = torch.tensor([[1, 2, 9, 9, 9, 9, 9, 9, 9, 9, 3, 4]])  # 2 text, 8 video (t 2 x 2 x 2 merged), 2 text
    positions = mrope_positions(ids, torch.ones_like(ids), video_token_id=9, grid_thw=torch.tensor([[2, 4, 4]]), time_interval=5.0)
    assert positions[:, 0, :2].tolist() == [[0, 1]] * 3
    assert positions[0, 0, 2:10].tolist() == [2, 2, 2, 2, 7, 7, 7, 7]  # time: 0 and 1 x interval 5, offset 2
    assert positions[1, 0, 2:10].tolist() == [2, 2, 3, 3, 2, 2, 3, 3]
    assert positions[:, 0, 10:].tolist() == [[8, 9]] * 3  # after the largest video position (7), not after 2 + max(h, w)


def test_list_hosts_prints_the_four_hosts():
    code = "from sparrow_plugin import SparrowWrapper, list_hosts; from baselines.videoglamm import VideoGLaMM; print(list_hosts())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['glus', 'tiny', 'unipixel', 'videoglamm']"


def test_unipixel_forward_matches_transformers_qwen2_5_vl(tmp_path, vocabulary):
    """Our splicing of the video tokens and our vision path give transformers' own
    Qwen2.5-VL forward (fed the processor's patches and our positions) exactly."""
    from baselines.unipixel import UniPixel
    from baselines.unipixel.tiny import write_tiny_release

    host = UniPixel.from_pretrained(write_tiny_release(tmp_path / "release", vocabulary)).eval()
    inputs = _batch(host, "<|seg|>")
    patches, grid_thw, _ = host.video_inputs(_frames())
    with torch.no_grad():
        ours = host(inputs).logits
        theirs = host.qwen(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, position_ids=inputs.extras["position_ids"],
            pixel_values_videos=patches, video_grid_thw=grid_thw,
        ).logits
    torch.testing.assert_close(ours, theirs)


def _recipe_config(name: str) -> dict:
    import yaml

    return yaml.safe_load((RECIPES / name / "stage1.yaml").read_text())["model"]["init_args"]["config"]


@pytest.mark.parametrize("mode", ["track", "per_frame"])
def test_a_sample_sam2_scores_absent_still_trains_the_seg_adapter(shim, synthetic_root, mode):
    """Under the host's recipe settings, BCE and DICE send a gradient to the [SEG] adapter
    even when SAM2's presence head says "absent" everywhere; SAM2's training gate would cut it."""
    name, _, release = shim
    _check_absent_sample_trains(name, release, synthetic_root, mode)


def test_the_tiny_host_too(tmp_path, synthetic_root, vocabulary):
    from sparrow_plugin.hosts.tiny import TinyVideoLLM

    from .test_cli import SMALL_HOST

    TinyVideoLLM.create(vocabulary, SMALL_HOST).save_pretrained(tmp_path / "host")
    _check_absent_sample_trains("tiny", tmp_path / "host", synthetic_root, "track")


def _check_absent_sample_trains(name, release, synthetic_root, mode):
    from sparrow_plugin.data import ReferringVideoDataModule, collate_referring

    config = {**_recipe_config(name), "kinds": ["appearance", "motion", "spatial", "multi", "no_target", "all"]}
    config["decoder"] = {**config["decoder"], "mode": mode}
    wrapper = SparrowWrapper(base=name, host_args={"path": release}, config=config).train()
    model = wrapper.model
    head = model.decoder.sam.sam_mask_decoder.pred_obj_score_head
    last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-50.0)  # "absent" on every frame
    dm = ReferringVideoDataModule(synthetic_root, image_size=model.decoder.image_size, train_frames=2, batch_size=2)
    dm.set_frame_request(model.host.frame_request())
    dm.require_tsf_tracks()  # the real hosts' recipes train with TSF (what SparrowWrapper.setup asks for)
    dataset = dm.dataset("train", "train")
    batch = collate_referring([dataset[i] for i, e in enumerate(dataset.expressions) if e.anno_ids][:2])
    assert bool(batch.has_target.all())

    scores = []
    model.decoder.sam.sam_mask_decoder.register_forward_hook(lambda module, args, out: scores.append(out[3].detach()))

    def mask_gradient() -> float:
        model.zero_grad()
        losses = model.training_losses(batch)
        (losses["bce"] + losses["dice"]).backward()
        return sum(float(p.grad.abs().sum()) for p in model.seg_adapter.parameters() if p.grad is not None)

    assert not model.gate_masks_in_training
    assert mask_gradient() > 0
    assert scores and all(bool((s < 0).all()) for s in scores)  # SAM2 did score the objects absent
    model.decoder.sam.gate_masks_in_training = True  # what the training gate would do
    assert mask_gradient() == 0
