"""Typed settings of the SPARROW wrapper (LightningCLI reads them from YAML)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

from sparrow_plugin.errors import ConfigError

__all__ = [
    "LoraSettings",
    "LossWeights",
    "DecoderSettings",
    "SparrowConfig",
    "PARAMETER_GROUPS",
    "check_mask_supervision",
    "flat_settings",
    "closest_name",
]

# What can train, by name; ``SparrowConfig.lr_scale`` and the optimizer groups use these.
PARAMETER_GROUPS = ("lora", "adapters", "tokens", "seg_adapter", "mask_decoder")

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
    """Weights of the stage-1 loss ``ce * CE + bce * BCE + dice * DICE + presence * P``.

    The default is the paper's plain sum. ``presence`` supervises SAM2's object-presence
    head; None takes the weight the host trained with (``DecoderSpec.presence_weight``).
    """

    ce: float = 1.0
    bce: float = 1.0
    dice: float = 1.0
    presence: float | None = None

    def __post_init__(self):
        for name in ("ce", "bce", "dice", "presence"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {value}")


@dataclass
class DecoderSettings:
    """How SAM2 is run and what of it trains.

    Attributes:
        mode: ``track`` (prompt one frame, SAM2 memory carries the object) or
            ``per_frame`` (prompt every frame independently).
        cond_frame: the prompted frame at inference in ``track`` mode: ``first``, or a
            frame index (negative counts from the end). In training SAM2 is prompted on a
            frame where the target is visible, drawn at random among them by the data
            pipeline (``VideoBatch.cond_frames``).
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
    cond_frame: Literal["first"] | int = "first"
    train_mask_decoder: bool = False
    train_frames: int | None = None
    prompt_tokens: int = field(default=1, metadata=_DEFINES_MODEL)
    gate_masks_in_training: bool | None = None

    def __post_init__(self):
        if self.train_frames is not None and self.train_frames < 1:
            raise ConfigError(f"decoder.train_frames must be >= 1 or null, got {self.train_frames}")
        if self.prompt_tokens < 1:
            raise ConfigError(f"decoder.prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.cond_frame != "first" and not isinstance(self.cond_frame, int):
            raise ConfigError(f"decoder.cond_frame must be 'first' or a frame index, got {self.cond_frame!r}")


@dataclass
class SparrowConfig:
    """Everything that decides what SPARROW trains and how it is scored.

    Attributes:
        stage: training stage (1: LoRA, V→L adapters, [SEG] adapter, new token rows).
        lora, loss, decoder: see their classes.
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
    lr_scale: dict[str, float] = field(default_factory=dict)
    max_new_tokens: int = 16
    no_target: Literal["answer", "empty_mask"] = "answer"
    kinds: list[str] = field(default_factory=lambda: ["appearance", "motion", "spatial", "multi", "no_target", "all"])

    @classmethod
    def from_dict(cls, values: dict) -> "SparrowConfig":
        """Rebuild from plain data (a checkpoint's hyper-parameters, a parsed YAML); an
        unknown key at any depth is a ConfigError naming it and the closest known key."""
        return _from_dict(cls, values, "config")

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.stage != 1:
            raise ConfigError(f"stage {self.stage} is not available yet; this release trains stage 1")
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
