"""SparrowPredictor: SPARROW on your own videos from Python, in bounded memory.

An explicit inference state per video, in the manner of SAM2's video predictor::

    predictor = SparrowPredictor.from_checkpoint("recipes/tiny/stage2.yaml", "outputs/tiny/stage2/checkpoints/last.ckpt")
    state = predictor.init_state("street.mp4")            # opens the video, decodes nothing yet
    first = predictor.add_expression(state, "the red car")  # the LLM's answer, kept boxes
    second = predictor.add_expression(state, "the cyclist")
    for found in predictor.propagate(state):              # masks, frame by frame
        ...                                               # found.expression, .object, .frame, .mask, .presence
    predictor.predict_to_folder("street.mp4", ["the red car"], "out/")  # what `sparrow predict VIDEO` writes

Memory does not grow with the video's length: frames are decoded when SAM2 reaches them
(:class:`~sparrow_plugin.video_io.VideoSource`, a few dozen kept), SAM2's image features
are computed on demand and only a few frames' kept (:class:`~sparrow_plugin.decoder.streaming.StreamedImageFeatures`,
optionally offloaded to the CPU), SAM2's memory keeps only what it can still read, and
each frame's masks are handed over as they are decoded. All the expressions of a video
are tracked in one pass, reading each frame and its features once. The masks are those
:meth:`SparrowModel.predict` gives on the whole clip held in memory (the same code decides
them; features computed in smaller batches may differ in the last float bits).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from sparrow_plugin.data.mevis import normalize_expression
from sparrow_plugin.decoder.streaming import StreamedImageFeatures
from sparrow_plugin.errors import ConfigError, SparrowError
from sparrow_plugin.frames import pixels_of, resize_frames
from sparrow_plugin.model import GROUNDING_ROLES, ObjectPlan, SparrowModel
from sparrow_plugin.recipes import import_class, insert_setting, merged_recipe
from sparrow_plugin.video_io import VideoSource
from sparrow_plugin.video_predict import write_expression

__all__ = ["SparrowPredictor", "VideoState", "ExpressionAnswer", "ObjectMask"]

@dataclass
class ExpressionAnswer:
    """What :meth:`SparrowPredictor.add_expression` found for one expression.

    Attributes:
        index: the expression's number in its video's state (0, 1, ...).
        expression: as read (normalised like the benchmarks' expressions).
        answer, truncated: the host's answer, and whether it reached ``max_new_tokens``.
        grounding_tokens: its grounding tokens in reading order (``box``, ``seg``).
        cond_frame: the frame SAM2 is prompted on.
        boxes, box_scores: per object, its kept box (xyxy pixels of the original frame)
            and the filtration head's probability, or None (no box: ``prompt: seg``, or
            the [SEG] alone when nothing was kept).
    """

    index: int
    expression: str
    answer: str
    truncated: bool
    grounding_tokens: list[str]
    cond_frame: int
    boxes: list[list[float] | None]
    box_scores: list[float | None]

    @property
    def num_objects(self) -> int:
        return len(self.boxes)


class ObjectMask(NamedTuple):
    """One object's mask on one frame, as :meth:`SparrowPredictor.propagate` yields it.

    ``mask``: (H, W) bool at the original size; ``presence``: SAM2's object score as a
    probability; ``frame``: the position among the state's frames, ``name`` its name."""

    expression: int
    object: int
    frame: int
    name: str
    mask: torch.Tensor
    presence: float


@dataclass
class VideoState:
    """The inference state of one video: its frames and SAM2 features, read on demand,
    and the expressions added so far with the objects SAM2 tracks for them."""

    source: VideoSource
    features: StreamedImageFeatures
    plan: ObjectPlan
    expressions: list[ExpressionAnswer] = field(default_factory=list)
    host_frames: tuple[torch.Tensor, torch.Tensor] | None = None
    presence: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # per (expression, object), once propagated

    @property
    def num_frames(self) -> int:
        return len(self.source)

    @property
    def size(self) -> tuple[int, int]:
        return self.source.height, self.source.width


class SparrowPredictor:
    """SPARROW inference on videos of any length, from Python (see the module docstring).

    Args:
        model: a trained :class:`~sparrow_plugin.model.SparrowModel` (``from_checkpoint``
            builds one from a recipe and a checkpoint).
        device: where the model runs (default: where its parameters are).
        precision: ``32``, or ``bf16-mixed`` / ``16-mixed`` (autocast on the device), as a
            recipe's ``trainer.precision``.
        cache_frames: SAM2 features kept per video; ``offload_features``: kept on the CPU.
        chunk_frames: frames decoded from the video at a time.
    """

    def __init__(
        self, model: SparrowModel, device: str | torch.device | None = None, precision: str = "32",
        cache_frames: int = 16, offload_features: bool = False, chunk_frames: int = 32,
    ):
        if model.config.tsf.mode == "train+infer" and model.config.tsf.infer != "box_file":
            raise ConfigError(
                f"SparrowPredictor reads TSF at inference only from box files (tsf.infer: box_file), not {model.config.tsf.infer!r}: "
                "use tsf.mode 'train' (inference without TSF) or give box files"
            )
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.precision = str(precision)
        if self.precision not in ("32", "32-true", "bf16-mixed", "16-mixed"):
            raise ConfigError(f"precision must be 32, bf16-mixed or 16-mixed, got {precision!r}")
        self.cache_frames, self.offload_features, self.chunk_frames = cache_frames, offload_features, chunk_frames

    @classmethod
    def from_checkpoint(
        cls, config: str | Path | Sequence[str | Path], ckpt_path: str | Path, settings: dict[str, Any] | None = None,
        weights_only: bool | None = None, **kwargs,
    ) -> "SparrowPredictor":
        """The model of a recipe (one file, or several merged in order as repeated
        ``--config``), with a checkpoint's trained weights, refused as ``sparrow predict``
        refuses it when it was trained as another model.

        Args:
            settings: dotted changes to the model's ``init_args``, as on the command line
                without ``--model.init_args.``: ``{"config.decoder.mode": "track"}``.
            kwargs: :class:`SparrowPredictor`'s (``device``, ``precision``, ...).
        """
        from sparrow_plugin.checkpoints import read_checkpoint
        from sparrow_plugin.wrapper import SparrowWrapper, check_recipe_fits_checkpoint

        files = [config] if isinstance(config, (str, Path)) else list(config)
        node = merged_recipe(files).get("model")
        where = ", ".join(map(str, files))
        if not isinstance(node, dict) or "class_path" not in node:
            raise ConfigError(f"{where}: no model (class_path) in the recipe")
        model_class = import_class(node["class_path"])
        if model_class is None or not issubclass(model_class, SparrowWrapper):
            raise ConfigError(f"{where}: the model {node['class_path']!r} is not a SparrowWrapper")
        init_args = {k: v for k, v in (node.get("init_args") or {}).items() if k not in ("optimizer", "lr_scheduler")}
        for key, value in (settings or {}).items():
            insert_setting(init_args, key.split("."), value)
        try:
            inspect.signature(model_class).bind(**init_args)
        except TypeError as error:
            raise ConfigError(f"{where}: the model's init_args do not fit {model_class.__name__}: {error}") from None
        missing = model_class.missing_inputs("predict", init_args)
        if not Path(ckpt_path).is_file():
            missing.insert(0, f"{ckpt_path}: checkpoint file not found")
        if missing:
            raise SparrowError("the model cannot be built:\n  " + "\n  ".join(missing))
        checkpoint = read_checkpoint(ckpt_path, weights_only=weights_only)
        check_recipe_fits_checkpoint(ckpt_path, checkpoint, init_args)  # before the host loads
        wrapper = model_class(**init_args)
        wrapper.check_checkpoint(checkpoint, ckpt_path)
        wrapper.load_state_dict(checkpoint["state_dict"], strict=False)
        return cls(wrapper.model, **kwargs)

    # ------------------------------------------------------------------ the state

    def init_state(self, video: str | Path, fps: float | None = None) -> VideoState:
        """Open a video (a file PyAV decodes, or a folder of frames) for prediction: every
        frame for SAM2, or those at ``fps``. Nothing is decoded yet but the first frame."""
        source = VideoSource(video, fps=fps, chunk=self.chunk_frames)
        size = self.model.decoder.image_size

        def read(positions: list[int]) -> torch.Tensor:
            return resize_frames(pixels_of(source.read(positions)), (size, size)).to(self.device)

        features = StreamedImageFeatures(
            self.model.decoder, read, len(source), cache_frames=self.cache_frames,
            storage="cpu" if self.offload_features else None,
        )
        return VideoState(source, features, ObjectPlan.empty(0, 0))

    @torch.no_grad()
    def add_expression(self, state: VideoState, expression: str) -> ExpressionAnswer:
        """Ask the host about ``expression`` on the video (one prefill on its own frames),
        and choose the objects SAM2 will track: with boxes, the filtration head keeps
        proposals on the prompted frame. Masks come with :meth:`propagate`."""
        text = normalize_expression(expression)
        if not text:
            raise ConfigError(f"give a non-empty expression for {state.source.path}, got {expression!r}")
        frames, indices = self._host_frames(state)
        self.model.warn_unknown_words([text])
        with self._autocast():
            tracks = [self.model.box_file_track(state.source.path.stem, state.num_frames, state.size)] if self.model.config.tsf.mode == "train+infer" else None
            answers = self.model.answer([text], frames, indices, tracks)
            plan = ObjectPlan.empty(1, self.model.inference_cond_frame(state.num_frames))
            if answers.seg_rows.numel():
                plan = self.model.plan_objects(answers, state.features)
        state.plan.extend(plan, group_offset=max(state.plan.groups, default=-1) + 1)
        height, width = state.size
        scale = torch.tensor([width, height, width, height])
        slots = plan.slots[0]
        entry = ExpressionAnswer(
            index=len(state.expressions),
            expression=text,
            answer=answers.generation.texts[0],
            truncated=bool(answers.generation.truncated[0]),
            grounding_tokens=[GROUNDING_ROLES[r] for r in answers.roles[answers.rows == 0].tolist()],
            cond_frame=plan.cond_frames[0],
            boxes=[[round(float(v), 2) for v in slot.box.float().cpu() * scale] if slot.box is not None else None for slot in slots],
            box_scores=[float(slot.box_score) if slot.box_score is not None else None for slot in slots],
        )
        state.expressions.append(entry)
        return entry

    def propagate(self, state: VideoState) -> Iterator[ObjectMask]:
        """Track every object of every expression added through the video, yielding each
        object's mask on each frame as it is decoded: from the prompted frame forward, then
        backward from it (objects prompted on other frames come in their own passes)."""
        if not state.expressions:
            raise ConfigError(f"add an expression to {state.source.path} before propagating (add_expression)")
        height, width = state.size
        names = state.source.names
        presence = {(row, slot): torch.full((state.num_frames,), float("nan")) for row, slots in enumerate(state.plan.slots) for slot in range(len(slots))}
        state.presence = presence
        decoded = self.model.decoded_objects(state.features, state.plan)
        while True:
            with torch.no_grad(), self._autocast():
                try:
                    row, slot, t, logits, score = next(decoded)
                except StopIteration:
                    return
                # as SparrowModel.predict: bilinear to the original size, positive logits
                mask = F.interpolate(logits[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0] > 0
                probability = float(torch.sigmoid(score.float()))
            presence[(row, slot)][t] = probability
            yield ObjectMask(row, slot, t, names[t], mask.cpu(), probability)

    # ------------------------------------------------------------------ files

    def predict_to_folder(self, video: str | Path, expressions: Sequence[str], out: str | Path, fps: float | None = None) -> list[dict]:
        """What ``sparrow predict VIDEO`` writes (see :mod:`sparrow_plugin.video_predict`),
        in bounded memory: per expression its masks, an overlay video and a JSON, and
        ``out/predictions.json``; returns the JSON entries."""
        if not expressions:
            raise ConfigError(f"give at least one expression for {video}")
        out = Path(out)
        state = self.init_state(video, fps=fps)
        for expression in tqdm(expressions, desc="answering", disable=len(expressions) < 2):
            self.add_expression(state, expression)
        for entry in state.expressions:
            for j in range(entry.num_objects):
                (out / str(entry.index) / f"object_{j}").mkdir(parents=True, exist_ok=True)
        total = sum(entry.num_objects for entry in state.expressions) * state.num_frames
        for found in tqdm(self.propagate(state), desc="tracking", total=total, disable=total < 50):
            Image.fromarray(found.mask.numpy().astype(np.uint8) * 255).save(out / str(found.expression) / f"object_{found.object}" / f"{found.name}.png")
        entries = [
            write_expression(
                state.source, out / str(entry.index), str(entry.index), entry.expression, entry.answer, entry.truncated, entry.cond_frame,
                entry.boxes, entry.box_scores, [state.plan.prompted_frames(entry.index, j) for j in range(entry.num_objects)],
                [state.presence[(entry.index, j)].tolist() for j in range(entry.num_objects)],
            )
            for entry in state.expressions
        ]
        (out / "predictions.json").write_text(json.dumps(entries, indent=1))
        return entries

    # ------------------------------------------------------------------ helpers

    def _host_frames(self, state: VideoState) -> tuple[torch.Tensor, torch.Tensor]:
        """The host's own frames, sampled from the whole video as its FrameRequest asks
        (decoded once per state)."""
        if state.host_frames is None:
            request = self.model.host.frame_request()
            positions = request.sample(state.num_frames)
            pixels = pixels_of(state.source.read_scattered(list(positions)))  # seeks to each: a long video is not decoded
            frames = resize_frames(pixels, request.size(*state.size), request.interpolation)
            state.host_frames = frames[None].to(self.device), torch.as_tensor(positions, dtype=torch.long)[None].to(self.device)
        return state.host_frames

    def _autocast(self):
        if self.precision.endswith("-mixed"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision.startswith("bf16") else torch.float16)
        return nullcontext()

