"""SPARROW checkpoints: reading them with clear errors, and what a checkpoint must share
with the model it is loaded into.

A checkpoint of :class:`~sparrow_plugin.wrapper.SparrowWrapper` holds only what trains
(the frozen host is reloaded from its own release) and a record of what it was trained
as (``checkpoint["sparrow"]``):

- ``trained``: the settings that define the trained weights, flat (``base``, the host's
  class and config, ``config.stage``, ``config.lora.rank``, ...). A model that differs in
  any of them is refused: its weights would not mean what they meant in training.
- ``host_weights``: a short digest per tensor of the host's release (a strided sample of
  its values at bf16 precision): the same architecture with other weights (GLUS-S and
  GLUS-A, say) is another host.
- ``settings``: every SPARROW setting of the run, flat; these may differ (the reading
  run's recipe applies), and the differences are reported.

The records are made by the Lightning-free core (``SparrowModel.trained_record``) and
written and checked by the wrapper's checkpoint hooks; the command line also reads them
before it builds anything.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparrow_plugin.errors import CheckpointError

__all__ = ["read_checkpoint", "host_record", "host_weight_digests", "weight_digests", "setting_differences", "trained_as_another_model", "weight_differences"]

_ZIP_MAGIC, _PICKLE_MAGIC = b"PK", b"\x80\x02"  # torch.save's zip archive; its legacy pickle format
_DIGEST_SAMPLES = 256  # values sampled per tensor: enough to tell two releases apart, cheap for 8B hosts


def read_checkpoint(path: str | Path, map_location: Any = "cpu", weights_only: bool | None = None) -> dict:
    """A checkpoint file as Lightning wrote it; anything else is a CheckpointError naming
    the file and what is wrong with it (missing, a folder, empty, truncated, not a
    checkpoint, not a Lightning checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a checkpoint file (sparrow fit writes single .ckpt files)")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "empty file (0 bytes): the run writing it was interrupted; use an earlier checkpoint")
    with path.open("rb") as file:
        magic = file.read(2)
    if magic not in (_ZIP_MAGIC, _PICKLE_MAGIC):
        raise CheckpointError(path, "not a PyTorch checkpoint (its first bytes are not a torch.save file's)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: (GLOBAL )?([\w.]+)", str(error))
        if refused is None:
            raise CheckpointError(path, f"damaged: its contents do not unpickle ({str(error).splitlines()[0][:160]})") from None
        raise CheckpointError(
            path, f"holds Python objects a safe load refuses ({refused.group(2)}); if you trust the file, pass --weights_only false"
        ) from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as error:
        raise CheckpointError(path, f"truncated or damaged: it does not read as a torch.save file ({type(error).__name__}: {str(error)[:120]})") from None
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(path, "not a Lightning checkpoint (it has no 'state_dict')")
    return dict(checkpoint)


def host_record(host: nn.Module) -> dict[str, Any]:
    """What identifies a host beyond its weights, flat: its class and its config fields."""
    record: dict[str, Any] = {"host.class": f"{type(host).__module__}.{type(host).__qualname__}"}
    config = getattr(host, "config", None)
    if is_dataclass(config):
        record.update({f"host.config.{key}": _plain(value) for key, value in asdict(config).items()})
    return record


def host_weight_digests(host: nn.Module, sam2_state: Mapping[str, torch.Tensor] | None = None) -> dict[str, str]:
    """:func:`weight_digests` of a host and its SAM2 release weights (``sam2.`` keys). Take
    it before anything is added to the host."""
    tensors = dict(host.state_dict())
    tensors.update({f"sam2.{key}": value for key, value in (sam2_state or {}).items()})
    return weight_digests(tensors)


def weight_digests(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Per floating-point tensor, a digest of its shape and of a strided sample of its
    values rounded to bf16, so that weights loaded in bf16 or fp32 give the same digests."""
    digests = {}
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _DIGEST_SAMPLES)][:_DIGEST_SAMPLES]
        hasher = hashlib.blake2b(str(tuple(tensor.shape)).encode(), digest_size=8)
        hasher.update(sample.to(device="cpu", dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
        digests[name] = hasher.hexdigest()
    return digests


def setting_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: X in the checkpoint, Y here`` for every key both sides have and disagree on."""
    return [
        f"{key}: {stored[key]!r} in the checkpoint, {current[key]!r} here"
        for key in sorted(set(stored) & set(current))
        if _plain(stored[key]) != _plain(current[key])
    ]


def trained_as_another_model(problems: list[str]) -> str:
    """The refusal of a checkpoint trained as another model, with what differs and the two
    ways out."""
    return (
        "was trained as another model, so it is refused:\n  " + "\n  ".join(problems)
        + "\nUse the recipe it was trained with (LightningCLI saves it as config.yaml in the run's log folder), "
        "or pass --ckpt_settings checkpoint to build the model as it was trained."
    )


def weight_differences(stored: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Names of the host tensors whose digests differ, or that only one side has."""
    return sorted(name for name in set(stored) | set(current) if stored.get(name) != current.get(name))


def _plain(value: Any) -> Any:
    """Tuples as lists, so a value read back from a checkpoint compares equal to itself."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
