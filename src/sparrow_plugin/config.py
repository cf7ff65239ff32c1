"""Typed settings of the SPARROW wrapper (LightningCLI reads them from YAML)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

from sparrow_plugin.errors import ConfigError
from sparrow_plugin.tsf.select import SelectionSettings

__all__ = [
    "LoraSettings",
    "LossWeights",
    "DecoderSettings",
    "BoxSettings",
    "SparrowConfig",
    "PARAMETER_GROUPS",
    "STAGE_GROUPS",
    "check_mask_supervision",
    "flat_settings",
    "closest_name",
]

# What can train, by name; ``SparrowConfig.lr_scale`` and the optimizer groups use these.
PARAMETER_GROUPS = ("lora", "adapters", "tokens", "seg_adapter", "mask_decoder", "box_adapter", "filtration", "tsf")
# What each stage trains by default (stage 2 may add stage-1 groups: ``box.also_train``)
STAGE_GROUPS = {1: ("lora", "adapters", "tokens", "seg_adapter", "mask_decoder", "tsf"), 2: ("box_adapter", "filtration")}

# Settings that define the trained weights (their shapes, or the function they compute):
# a checkpoint trained with other values is refused. Every other setting may differ
# between the run that trained a checkpoint and the run that reads it (the recipe's apply).
_DEFINES_MODEL = {"defines_model": True}


@dataclass
class LoraSettings:
    """LoRA on the host's LLM (peft).

    Attributes:
        rank: LoRA rank r.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the LoRA path.
        targets: module-name suffixes to wrap; None uses the host's defaults.
    """

    rank: int = field(default=8, metadata=_DEFINES_MODEL)
    alpha: int = field(default=16, metadata=_DEFINES_MODEL)
    dropout: float = 0.05
    targets: list[str] | None = field(default=None, metadata=_DEFINES_MODEL)

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class LossWeights:
    """Weights of the loss ``ce * CE + bce * BCE + dice * DICE + presence * P`` (stage 1)
    and ``proposal * BCE_filtration + proposal_box * (L1 + GIoU)`` (stage 2).

    The default is the paper's plain sum. ``presence`` supervises SAM2's object-presence
    head; None takes the weight the host trained with (``DecoderSpec.presence_weight``).
    ``proposal_box`` is the authors' code's 0.01 (the paper says 2.0); it applies only with
    ``box.regression``.
    """

    ce: float = 1.0
    bce: float = 1.0
    dice: float = 1.0
    presence: float | None = None
    proposal: float = 1.0
    proposal_box: float = 0.01

    def __post_init__(self):
        for name in ("ce", "bce", "dice", "presence", "proposal", "proposal_box"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {value}")


@dataclass
class DecoderSettings:
    """How SAM2 is run and what of it trains.

    Attributes:
        mode: ``track`` (prompt one frame, SAM2 memory carries the object) or
            ``per_frame`` (prompt every frame independently).
        cond_frame: the prompted frame at inference in ``track`` mode: ``first``, a frame
            index (negative counts from the end), or ``best`` (with boxes: the proposer and
            the filtration head run on ``best_of`` evenly spaced frames and SAM2 is prompted
            on the one with the most confident kept box). In training SAM2 is prompted on a
            frame where the target is visible, drawn at random among them by the data
            pipeline (``VideoBatch.cond_frames``).
        best_of: frames ``cond_frame: best`` compares.
        re_anchor: with boxes in ``track`` mode, on a frame where SAM2's presence logit
            of a tracked object falls below this value (0: SAM2 says it is gone) or its
            mask is empty, re-run the proposer and the filtration head there and prompt the
            object again with the kept box (above the filtration threshold) that overlaps
            where it was last seen most, else the most confident one; the frame then
            conditions its memory. None: never.
        re_anchor_drift: also on frames where the object is tracked: re-prompt it with the
            most confident kept box when that overlaps the tracked mask's box by less than
            this IoU (the track drifted from what the filtration head sees). None: never.
        train_mask_decoder: also train SAM2's mask decoder (LISA, VideoGLaMM and GLUS do).
        train_frames: in training, decode only this many of the sample's frames (in
            ``track`` mode consecutive ones starting at the prompted frame, or ending at
            it near the clip's end, so the window always holds it; a random subset in
            ``per_frame`` mode). None: all frames.
        prompt_tokens: SAM2 prompt tokens per [SEG] when SPARROW builds the [SEG]
            adapter (UniPixel's head emits 2); a host's own projection decides for itself.
        gate_masks_in_training: keep SAM2's rule that a mask scored "absent" becomes a
            constant (no gradient) in training too. None takes the host's
            (``DecoderSpec.gate_masks_in_training``; no released host gates in training).
            Ungated, only the mask output is left ungated: SAM2's memory and object
            pointer still see its own presence score, as UniPixel trains, so the memory
            meets "absent" in training as it does at inference.
    """

    mode: Literal["track", "per_frame"] = "track"
    cond_frame: Literal["first", "best"] | int = "first"
    best_of: int = 3
    re_anchor: float | None = None
    re_anchor_drift: float | None = None
    train_mask_decoder: bool = False
    train_frames: int | None = None
    prompt_tokens: int = field(default=1, metadata=_DEFINES_MODEL)
    gate_masks_in_training: bool | None = None

    def __post_init__(self):
        if self.train_frames is not None and self.train_frames < 1:
            raise ConfigError(f"decoder.train_frames must be >= 1 or null, got {self.train_frames}")
        if self.prompt_tokens < 1:
            raise ConfigError(f"decoder.prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.cond_frame not in ("first", "best") and not isinstance(self.cond_frame, int):
            raise ConfigError(f"decoder.cond_frame must be 'first', 'best' or a frame index, got {self.cond_frame!r}")
        if self.best_of < 1:
            raise ConfigError(f"decoder.best_of must be >= 1, got {self.best_of}")
        if self.re_anchor_drift is not None and not 0 < self.re_anchor_drift <= 1:
            raise ConfigError(f"decoder.re_anchor_drift is an IoU in (0, 1], got {self.re_anchor_drift}")

    @property
    def re_anchoring(self) -> bool:
        return self.re_anchor is not None or self.re_anchor_drift is not None


@dataclass
class BoxSettings:
    """The [BOX] half of SPARROW's dual prompt: class-agnostic proposals, the filtration
    head that keeps those a [BOX] token refers to, and how kept boxes reach SAM2.

    Attributes:
        in_answers: training answers carry [BOX] before every [SEG] (the authors' data
            pipeline inserts it everywhere); stage 1 and stage 2 must agree.
        adapter: the [BOX] token's L→V adapter: ``shared``, the [SEG] adapter (the
            authors': one ``text_hidden_fcs`` for both, so their weights load), or
            ``separate``, its own, started as a copy of the [SEG] adapter.
        query: whose embedding the filtration head reads: ``box`` (the paper's ablation:
            1.9 J&F better) or ``seg``.
        proposer: the proposer's release folder (``sparrow-det-pretrain`` layout, or what
            ``sparrow fit --config recipes/<host>/proposer.yaml`` writes).
        proposer_settings: ProposerConfig fields the release does not fix (``top_k``,
            ``score_powers``, ``refine_reference_points``).
        features: ``decoder``: the proposer reads the decoder's own SAM2 features (computed
            once per frame); ``separate``: the release's own image encoder at ``image_size``
            (the authors' 448 px pass).
        image_size: input size of a ``separate`` feature pass.
        filtration: FiltrationConfig fields (``threshold``, ``max_kept``, ``use_roi``, ...).
        fallback: when no proposal passes the threshold: ``best`` keeps the best one (the
            authors'), ``seg`` keeps none and prompts SAM2 with [SEG] alone (with ``prompt:
            box+seg``), ``empty`` keeps none and the mask is empty (the filtration head's
            "nothing there").
        regression: also train the selector's box head (L1 + GIoU; the code: off).
        objects: ``per_box``: one SAM2 object per kept box, the expression's mask their
            union; ``max_pool``: the authors', one object per token whose masks of all its
            boxes are max-pooled, the prompted frame's boxes reused on every frame.
        also_train: stage-1 parameter groups stage 2 trains too (the authors: ``lora``,
            ``seg_adapter``); empty: stage 1 stays frozen bit for bit.
        release_gamma: the RoI logit's weight when the host's release holds a filtration
            head (the authors' sparrow-finetune): ``as_run``, 0.1, what their inference used
            (transformers 4.41 renamed the stored value away at load), or ``stored``.
    """

    in_answers: bool = False
    adapter: Literal["shared", "separate"] = field(default="shared", metadata=_DEFINES_MODEL)
    query: Literal["box", "seg"] = "box"
    proposer: str | None = None
    proposer_settings: dict = field(default_factory=dict)
    features: Literal["decoder", "separate"] = "decoder"
    image_size: int = 448
    filtration: dict = field(default_factory=dict)
    fallback: Literal["best", "seg", "empty"] = "best"
    regression: bool = False
    objects: Literal["per_box", "max_pool"] = "per_box"
    also_train: list[str] = field(default_factory=list)
    release_gamma: Literal["as_run", "stored"] = "as_run"

    def __post_init__(self):
        self.also_train = list(self.also_train)
        unknown = sorted(set(self.also_train) - set(STAGE_GROUPS[1]))
        if unknown:
            raise ConfigError(f"box.also_train names unknown stage-1 groups {unknown}; known: {list(STAGE_GROUPS[1])}")


@dataclass
class TSFSettings:
    """Target-Specific Tracking Features: in training, the target's appearance at K moments
    of its track enters the LLM as K ``<TSF>`` tokens after the video.

    Attributes:
        mode: ``off``, ``train`` (the paper's and the code's: training only; inference
            reads no tracks, so it needs no detector or tracker) or ``train+infer``
            (inference reads TSF too, from ``infer``).
        infer: where ``train+infer`` finds the target's track at inference: ``box_file``
            (one per video, the released code's format: a line per frame, xyxy or xywh
            pixels), ``dataset`` (each sample's track from the data module's
            ``tsf_eval_tracks``: a cache that ``sparrow tsf build --split`` made for the
            evaluated split, by detect + track for instance, or ``annotation``, the split's
            own masks: an oracle) or ``first_pass`` (beyond the paper: the model answers
            once without TSF, and the boxes of its masks feed TSF to a second pass; no
            detector).
        box_files: ``infer: box_file``: a path with ``{video}`` in it, or a folder of
            ``<video>.txt``.
        encoding: ``crop``: each box of the track cropped from the host's frame, stretched
            to its frame size, through the host's own image tower and projector,
            mean-pooled (the released code; ``HostAdapter.encode_regions``); ``roi``:
            RoIAlign on the dense maps the host computed for its LLM tokens, with the box's
            geometry and time, through a small MLP that trains in stage 1 (group ``tsf``).
        drop: beyond the paper: the share of training batches that get no TSF, so that the
            LLM also learns to answer as inference (``train``) meets it; 0 (the paper's and
            the code's) gives every batch TSF. Batches, not samples: a batch's prompts are
            built alike.
        select: the choice of the K moments
            (:class:`~sparrow_plugin.tsf.select.SelectionSettings`: ``k``, ``space``
            (``appearance`` the code's, ``joint`` the paper's), ``candidates`` (``all`` the
            code's and the default; ``found`` gives a no-target sample K zero vectors, which
            on the tiny host taught the LLM to read "no target" from the zeros, 0.04 J&F
            worse), ...).
    """

    mode: Literal["off", "train", "train+infer"] = "off"
    infer: Literal["box_file", "dataset", "first_pass"] = "first_pass"
    box_files: str | None = None
    encoding: Literal["crop", "roi"] = "crop"
    drop: float = 0.0
    select: SelectionSettings = field(default_factory=SelectionSettings)

    def __post_init__(self):
        if self.mode not in ("off", "train", "train+infer"):
            raise ConfigError(f"tsf.mode must be 'off', 'train' or 'train+infer', got {self.mode!r}")
        if self.infer not in ("box_file", "dataset", "first_pass"):
            raise ConfigError(f"tsf.infer must be 'box_file', 'dataset' or 'first_pass', got {self.infer!r}")
        if self.mode == "train+infer" and self.infer == "box_file" and not self.box_files:
            raise ConfigError("tsf.infer 'box_file' reads a box file per video: set tsf.box_files (a path with {video}, or a folder of <video>.txt)")
        if self.encoding not in ("crop", "roi"):
            raise ConfigError(f"tsf.encoding must be 'crop' or 'roi', got {self.encoding!r}")
        if not 0 <= self.drop < 1:
            raise ConfigError(f"tsf.drop is the share of training batches without TSF, in [0, 1), got {self.drop}")


@dataclass
class SparrowConfig:
    """Everything that decides what SPARROW trains and how it is scored.

    Attributes:
        stage: training stage. 1: LoRA, the V→L adapters, the [SEG] adapter, the new token
            rows (and SAM2's mask decoder if asked); 2: the filtration head and a separate
            [BOX] adapter on the frozen stage-1 model (``box.also_train`` adds groups).
        lora, loss, decoder, box, tsf: see their classes.
        prompt: what reaches SAM2 at inference: ``seg`` (the [SEG] token), ``box`` (the
            kept boxes), ``box+seg`` (each kept box with the [SEG] token).
        lr_scale: learning-rate multiplier per parameter group (``lora``, ``adapters``,
            ``tokens``, ``seg_adapter``, ``mask_decoder``); 1 when absent.
        max_new_tokens: generation budget at validation/test time.
        no_target: how a query with nothing to segment is trained: ``answer`` (the LLM
            answers the host's ``no_target_answer``, without [SEG]) or ``empty_mask``
            (the LLM answers as usual and the decoder learns an empty mask).
        kinds: expression kinds reported by the metric (our synthetic benchmark's kinds;
            MeViS has one kind, ``all``).
    """

    stage: int = field(default=1, metadata=_DEFINES_MODEL)
    lora: LoraSettings = field(default_factory=LoraSettings)
    loss: LossWeights = field(default_factory=LossWeights)
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    box: BoxSettings = field(default_factory=BoxSettings)
    tsf: TSFSettings = field(default_factory=TSFSettings)
    prompt: Literal["seg", "box", "box+seg"] = "seg"
    lr_scale: dict[str, float] = field(default_factory=dict)
    max_new_tokens: int = 16
    no_target: Literal["answer", "empty_mask"] = "answer"
    kinds: list[str] = field(
        default_factory=lambda: [
            "appearance", "motion", "spatial", "multi", "no_target",  # train, valid_u
            "late_entry", "occlusion", "crossing", "crossing_identity",  # valid_hard, valid_cross
            "all",
        ]
    )

    @classmethod
    def from_dict(cls, values: dict) -> "SparrowConfig":
        """Rebuild from plain data (a checkpoint's hyper-parameters, a parsed YAML); an
        unknown key at any depth is a ConfigError naming it and the closest known key."""
        return _from_dict(cls, values, "config")

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.stage not in STAGE_GROUPS:
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        if self.stage == 2 and self.box.proposer is None:
            raise ConfigError("stage 2 trains the filtration head on proposals: set box.proposer to a proposer release")
        if self.prompt != "seg" and self.box.proposer is None:
            raise ConfigError(f"prompt {self.prompt!r} needs boxes: set box.proposer to a proposer release")
        if self.decoder.cond_frame == "best" and self.prompt == "seg":
            raise ConfigError("decoder.cond_frame 'best' picks the frame by its kept boxes: it needs prompt 'box' or 'box+seg'")
        if self.decoder.re_anchoring and (self.prompt == "seg" or self.decoder.mode != "track"):
            raise ConfigError(
                "decoder.re_anchor re-prompts a tracked object with a box found on a later frame: it needs prompt 'box' or "
                f"'box+seg' and decoder.mode 'track' (got prompt {self.prompt!r}, mode {self.decoder.mode!r})"
            )
        if self.box.query == "box" and self.box.proposer is not None and not self.box.in_answers:
            raise ConfigError("box.query 'box' reads the [BOX] token, which answers hold only with box.in_answers true; or set box.query 'seg'")
        unknown = sorted(set(self.lr_scale) - set(PARAMETER_GROUPS))
        if unknown:
            raise ConfigError(f"lr_scale has unknown groups {unknown}; known: {list(PARAMETER_GROUPS)}")
        check_mask_supervision(self.decoder.gate_masks_in_training, self.loss.presence)


def check_mask_supervision(gated: bool | None, presence: float | None, source: str = "the recipe") -> None:
    """Refuse SAM2's training gate without a presence loss: a mask SAM2 scores "absent"
    becomes a constant, so BCE and DICE send it no gradient and nothing else would."""
    if gated and presence == 0:
        raise ConfigError(
            f"{source} sets decoder.gate_masks_in_training true with loss.presence 0: samples SAM2 scores "
            "absent would train on a constant; set loss.presence > 0 or gate_masks_in_training false"
        )


def _from_dict(settings_class: type, values, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of {settings_class.__name__} fields, got {values!r}")
    known = {f.name: f for f in fields(settings_class)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}.{key} is not a setting{_did_you_mean(key, known)}; known: {', '.join(known)}")
    nested = {name: f.default_factory for name, f in known.items() if is_dataclass(f.default_factory)}
    return settings_class(
        **{
            key: _from_dict(nested[key], value, f"{where}.{key}") if key in nested and not isinstance(value, nested[key]) else value
            for key, value in values.items()
        }
    )


def closest_name(name: str, candidates) -> str | None:
    """The candidate a mistyped ``name`` most likely meant (``mdoe`` -> ``mode``), or None."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _did_you_mean(name: str, candidates) -> str:
    closest = closest_name(name, candidates)
    return f" (did you mean {closest!r}?)" if closest else ""


def flat_settings(settings: Any, only_model: bool = False, prefix: str = "") -> dict[str, Any]:
    """A settings dataclass as ``{"lora.rank": 8, ...}``; ``only_model``: just the settings
    that define the trained weights (a checkpoint must agree on them)."""
    flat = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if is_dataclass(value):
            flat.update(flat_settings(value, only_model, f"{prefix}{f.name}."))
        elif not only_model or f.metadata.get("defines_model"):
            flat[f"{prefix}{f.name}"] = list(value) if isinstance(value, tuple) else value
    return flat
