"""Build SAM2 from the `sam2` package's Hydra configs (or ours) and load weights strictly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import sam2
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sparrow_plugin.decoder.promptable_sam2 import PromptableSAM2
from sparrow_plugin.errors import CheckpointError, ConfigError

__all__ = ["resolve_sam2_config", "build_sam2", "load_sam2_weights", "SAM2_CONFIGS"]

_OUR_CONFIGS = Path(__file__).parent / "configs"
_PACKAGE_CONFIGS = Path(sam2.__file__).parent / "configs"
# Short names of every config we can build: the package's (SAM 2 and 2.1) and ours.
SAM2_CONFIGS = {
    **{p.stem: p for p in sorted(_PACKAGE_CONFIGS.glob("sam2/*.yaml"))},
    **{p.stem: p for p in sorted(_PACKAGE_CONFIGS.glob("sam2.1/*.yaml"))},
    **{p.stem: p for p in sorted(_OUR_CONFIGS.glob("*.yaml"))},
}


def resolve_sam2_config(name_or_path: str) -> Path:
    """A config name (``sam2.1_hiera_b+``, ``configs/sam2.1/sam2.1_hiera_b+.yaml``) or a path."""
    path = Path(name_or_path)
    if path.suffix == ".yaml" and path.is_file():
        return path
    stem = path.stem if path.suffix == ".yaml" else path.name
    if stem in SAM2_CONFIGS:
        return SAM2_CONFIGS[stem]
    raise ConfigError(f"unknown SAM2 config {name_or_path!r}; known: {', '.join(SAM2_CONFIGS)} (or a path to a .yaml)")


def build_sam2(
    config: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    checkpoint: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> PromptableSAM2:
    """Instantiate SAM2 from a config and load its weights, if any, strictly.

    Args:
        config: config name or YAML path (see :func:`resolve_sam2_config`).
        state_dict: weights keyed as SAM2Base's own parameters (a host release's SAM2
            part), or None.
        checkpoint: an official ``.pt`` (``{"model": state_dict}``), used when
            ``state_dict`` is None.
        overrides: Hydra-style ``++model.key=value`` settings applied to the config.
    """
    config_path = resolve_sam2_config(config)
    cfg = OmegaConf.load(config_path)
    for override in overrides:
        _apply_override(cfg, override)
    cfg.model._target_ = f"{PromptableSAM2.__module__}.{PromptableSAM2.__qualname__}"
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    if state_dict is not None:
        load_sam2_weights(model, state_dict, source="SAM2 weights of the host release")
    elif checkpoint is not None:
        load_sam2_weights(model, _read_checkpoint(checkpoint), source=checkpoint)
    return model


def load_sam2_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source) -> None:
    """Load ``state_dict`` into ``model`` strictly; raise with every missing/unexpected key.

    Checkpoints saved through Hugging Face ``save_pretrained`` store SAM2's layer-scale
    parameters (``CXBlock.gamma`` in the memory encoder) as ``.weight``, because
    transformers renames ``gamma`` keys on load (transformers issue 29554). Such keys are
    mapped back here, once, and only where the model has a ``gamma`` and no ``weight``.
    """
    state_dict = _rename_layer_scale(dict(state_dict), set(model.state_dict()))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(source, "does not match the SAM2 model being built", missing, unexpected)


def _rename_layer_scale(state_dict: dict, model_keys: set[str]) -> dict:
    renamed = {}
    for key, value in state_dict.items():
        if key not in model_keys and key.endswith(".weight"):
            gamma = key[: -len("weight")] + "gamma"
            if gamma in model_keys and gamma not in state_dict:
                key = gamma
        renamed[key] = value
    return renamed


def _read_checkpoint(path: str | Path) -> Mapping[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "SAM2 checkpoint not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(path, f"cannot read the SAM2 checkpoint ({error})") from None
    if isinstance(loaded, Mapping) and "model" in loaded and isinstance(loaded["model"], Mapping):
        return loaded["model"]
    if isinstance(loaded, Mapping):
        return loaded
    raise CheckpointError(path, f"expected a state dict or {{'model': state_dict}}, found {type(loaded).__name__}")


def _apply_override(cfg, override: str) -> None:
    key, sep, value = override.lstrip("+").partition("=")
    if not sep or not key:
        raise ConfigError(f"SAM2 override must look like '++model.key=value', got {override!r}")
    OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
