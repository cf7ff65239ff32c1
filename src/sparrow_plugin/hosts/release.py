"""Reading a host's released checkpoint folder, strictly.

Releases of pixel-grounded LLMs are Hugging Face folders whose weights come in any of the
standard layouts (``model.safetensors``, sharded safetensors with an index,
``pytorch_model.bin`` or its shards). Their key names are the research code's, not ours:
each shim declares a :class:`KeyMap`, a table of prefix renames plus the keys the
reference itself ignores, and :func:`load_release` applies it and loads strictly. Every
key must land somewhere: unmatched keys, missing keys and keys of the wrong shape are
listed in one :class:`~sparrow_plugin.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer, PretrainedConfig

from sparrow_plugin.errors import CheckpointError

__all__ = ["KeyMap", "read_release_weights", "load_release", "read_release_config", "read_release_tokenizer", "require_downloads", "absent_paths"]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class KeyMap:
    """How a release's key names become a shim's module names.

    Attributes:
        renames: ``(release prefix, our prefix)`` pairs, the first match wins; a key that
            matches none is unexpected.
        split: ``(release prefix, part name)`` or ``(release prefix, part name, part
            prefix)``: keys under the prefix are taken out, the release prefix replaced by
            the part prefix (default: removed), and returned by part, e.g. the SAM2 weights
            for the decoder; several entries may fill one part.
        ignore: regular expressions of keys the reference does not load either (each use
            says why in the shim).
        substitutions: ``(regular expression, replacement)`` pairs applied, in order, to
            every renamed key: module names the release's library version spelled
            otherwise (transformers 4.41's ``layers.0.fc1`` is 5.x's ``layers.0.mlp.fc1``).
    """

    renames: tuple[tuple[str, str], ...]
    split: tuple[tuple[str, ...], ...] = ()
    ignore: tuple[str, ...] = field(default_factory=tuple)
    substitutions: tuple[tuple[str, str], ...] = ()

    def apply(self, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict[str, dict], list[str]]:
        """Returns (renamed state for the module, split parts, unmatched release keys)."""
        renamed, parts, unmatched = {}, {entry[1]: {} for entry in self.split}, []
        for key, value in state.items():
            if any(re.search(pattern, key) for pattern in self.ignore):
                continue
            part = next((entry for entry in self.split if key.startswith(entry[0])), None)
            if part is not None:
                release_prefix, name, part_prefix = (*part, "")[:3]
                parts[name][part_prefix + key[len(release_prefix) :]] = value
                continue
            rule = next(((old, new) for old, new in self.renames if key.startswith(old)), None)
            if rule is None:
                unmatched.append(key)
                continue
            name = rule[1] + key[len(rule[0]) :]
            for pattern, replacement in self.substitutions:
                name = re.sub(pattern, replacement, name)
            renamed[name] = value
        return renamed, parts, unmatched


def absent_paths(needed: Sequence[tuple[str | Path | None, str]]) -> list[str]:
    """``"<path>: <what to put there>"`` for each needed path that does not exist (None
    paths are skipped): what a host's ``missing_downloads`` returns."""
    return [f"{path}: {what}" for path, what in needed if path is not None and not Path(path).exists()]


def require_downloads(host: str, missing: Sequence[str]) -> None:
    """Stop before loading anything when files a host needs are absent, naming them all.

    Args:
        missing: the host's ``missing_downloads(...)`` (see :func:`absent_paths`).
    """
    if missing:
        raise CheckpointError(None, f"{host}: missing downloads (put them at these paths, or point host_args at yours):\n" + "\n".join(f"  {m}" for m in missing))


def read_release_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(folder, "not a release folder: config.json is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"not valid JSON: {error}") from None


def read_release_tokenizer(folder: str | Path):
    """The release's tokenizer, by the class its tokenizer_config.json names.

    A release's config.json describes the research code's model type, which transformers
    does not know; an empty config keeps AutoTokenizer from reading it.
    """
    try:
        return AutoTokenizer.from_pretrained(folder, config=PretrainedConfig())
    except (OSError, ValueError) as error:
        raise CheckpointError(folder, f"cannot load the release's tokenizer ({error})") from None


def read_release_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a release folder, whichever Hugging Face layout it uses."""
    folder = Path(folder)
    present = [name for name in _WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        raise CheckpointError(folder, f"no weights found (expected one of {', '.join(_WEIGHT_FILES)})")
    name = present[0]
    if name.endswith(".index.json"):
        index = json.loads((folder / name).read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(folder / name, "the index lists no shards")
        state = {}
        for shard in shards:
            state.update(_read_file(folder / shard))
        return state
    return _read_file(folder / name)


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(path, "weight shard listed in the index is missing")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise several types for broken files
        raise CheckpointError(path, f"cannot read weights ({error})") from None


def load_release(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    key_map: KeyMap,
    source: str | Path,
    optional: tuple[str, ...] = (),
) -> dict[str, dict]:
    """Load ``state`` into ``module`` through ``key_map``; return the split parts.

    Args:
        optional: regular expressions of module keys that may be absent from a release
            (e.g. ``lm_head.weight`` when the embeddings are tied).
    Raises:
        CheckpointError: listing unmatched release keys, missing module keys and shape
            mismatches together.
    """
    renamed, parts, unmatched = key_map.apply(state)
    expected = module.state_dict()
    missing = [k for k in expected if k not in renamed and not any(re.search(p, k) for p in optional)]
    unexpected = unmatched + [k for k in renamed if k not in expected]
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in renamed.items() if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problem = "does not match the host it is loaded into"
        if wrong_shape:
            problem += "; shapes differ: " + ", ".join(wrong_shape[:10])
        raise CheckpointError(source, problem, missing, unexpected)
    module.load_state_dict(renamed, strict=False)
    return parts
