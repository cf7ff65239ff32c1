"""Recipe files and command-line settings, checked before LightningCLI parses them: every
key at every depth must be one the command accepts.

jsonargparse ignores or mis-reports a mistyped key in places (inside a free-form dict, or
with a wall of usage text); here each unknown key is named with the file it is in and the
closest key that would be accepted. What is accepted comes from the command's parser (its
trainer options, ``ckpt_path``, ...) and, below a ``class_path``, from that class's
``__init__`` signature, following dataclass-typed arguments (``SparrowConfig``) field by
field.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path

import yaml

from sparrow_plugin.config import closest_name
from sparrow_plugin.errors import ConfigError

__all__ = ["config_files", "read_recipe", "merged_recipe", "insert_setting", "unknown_keys", "check_settings", "import_class"]

_CLASS_NODE_KEYS = ("class_path", "init_args", "dict_kwargs")


def config_files(argv: Sequence[str]) -> list[Path]:
    """The ``--config`` / ``-c`` files named on a command line, in order."""
    files = []
    for index, arg in enumerate(argv):
        if arg in ("--config", "-c") and index + 1 < len(argv):
            files.append(Path(argv[index + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return files


def read_recipe(path: Path) -> dict:
    """A recipe file's YAML mapping; a missing or unreadable file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: recipe not found")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings, got {type(tree).__name__}")
    return tree


def merged_recipe(paths: Sequence[str | Path]) -> dict:
    """The recipes read and merged in order, as repeated ``--config`` files are (a later
    one's values replace an earlier one's, key by key)."""
    merged: dict = {}
    for path in paths:
        _merge(merged, read_recipe(Path(path)))
    return merged


def check_settings(argv: Sequence[str], accepted: Iterable[str], flags: Iterable[str] = ()) -> None:
    """Raise one ConfigError listing every unknown key of the recipe files named in
    ``argv`` and of its ``--key value`` settings.

    Args:
        argv: the command line after the subcommand.
        accepted: the command's own dotted keys (``trainer.max_steps``, ``model``, ...).
        flags: its other option strings (``--print_config``, ``--ckpt_settings``, ...).
    """
    accepted, flags = set(accepted), set(flags)
    problems, merged = [], {}
    for path in config_files(argv):
        tree = read_recipe(path)
        problems += [_problem(str(path), key, closest) for key, closest in unknown_keys(tree, accepted)]
        _merge(merged, tree)
    # an option that is also a setting (`--data CLASS`, `--model CLASS`) replaces the recipe's class
    settings = {key: value for key, value in _command_line_settings(argv).items() if f"--{key}" not in flags or key in accepted}
    tree: dict = {}
    for key, value in settings.items():
        insert_setting(tree, key.split("."), value)
    _graft_class_paths(tree, merged)  # `--data.init_args.x` is checked against the recipe's data class
    problems += [_problem("the command line", f"--{key}", closest and f"--{closest}") for key, closest in unknown_keys(tree, accepted)]
    if problems:
        raise ConfigError("\n  ".join(["unknown settings:", *problems]))


def _problem(where: str, key: str, closest: str | None) -> str:
    return f"{where}: {key} is not a setting" + (f" (did you mean {closest!r}?)" if closest else "")


def _command_line_settings(argv: Sequence[str]) -> dict:
    """``--key value`` and ``--key=value`` pairs of a command line (``--config`` files and
    bare flags left out), in order; ``--key+=value`` (append to a list) counts as ``key``."""
    settings, index = {}, 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if not arg.startswith("--"):
            continue
        key, has_value, value = arg[2:].partition("=")
        if not has_value and index < len(argv) and not argv[index].startswith("--"):
            value, index = argv[index], index + 1
        if key != "config":
            settings[key.rstrip("+")] = yaml.safe_load(value) if value else value
    return settings


def insert_setting(tree: dict, path: list[str], value) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, making the nodes on the way."""
    for part in path[:-1]:
        node = tree.get(part)
        if not isinstance(node, dict):  # `--model.init_args.optimizer SGD` then `...optimizer.init_args.lr`
            node = tree[part] = {"class_path": node} if isinstance(node, str) else {}
        tree = node
    tree[path[-1]] = value


def _graft_class_paths(tree: dict, recipe: dict) -> None:
    if isinstance(recipe, dict) and "class_path" in recipe and "class_path" not in tree:
        tree["class_path"] = recipe["class_path"]
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(recipe, dict) and key in recipe:
            _graft_class_paths(value, recipe[key])


def _merge(into: dict, tree: dict) -> None:
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def unknown_keys(tree: Mapping, accepted: set[str]) -> list[tuple[str, str | None]]:
    """Every key of ``tree`` that is not accepted, dotted, with the closest accepted name."""
    return _walk_group(tree, "", accepted)


def _walk_group(node: Mapping, prefix: str, accepted: set[str]) -> list:
    unknown = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if dotted in accepted:
            unknown += _walk_value(value, dotted)
        elif isinstance(value, Mapping) and any(name.startswith(f"{dotted}.") for name in accepted):
            unknown += _walk_group(value, f"{dotted}.", accepted)
        else:
            level = {name[len(prefix) :].split(".")[0] for name in accepted if name.startswith(prefix)}
            unknown.append((dotted, _qualified(prefix, closest_name(str(key), level))))
    return unknown


def _walk_value(value, dotted: str, annotation=None) -> list:
    """A value whose key is accepted: look inside it when it names a class or is a dataclass."""
    if isinstance(value, Mapping) and "class_path" in value:
        return _walk_class(value, dotted)
    if isinstance(value, list):
        return [problem for index, item in enumerate(value) for problem in _walk_value(item, f"{dotted}[{index}]")]
    settings = _dataclass_in(annotation)
    if isinstance(value, Mapping) and settings is not None:
        return _walk_dataclass(value, settings, dotted)
    return []


def _walk_class(node: Mapping, dotted: str) -> list:
    init_args = dict(node.get("init_args") or {})
    for key, value in node.items():  # jsonargparse also takes init args next to class_path
        if key not in _CLASS_NODE_KEYS:
            init_args[key] = value
    cls = import_class(node["class_path"])
    if cls is None:
        return []  # jsonargparse names a class_path that does not import
    parameters = _init_parameters(cls)
    if parameters is None:
        return []  # takes **kwargs: anything may be meant
    return _walk_fields(init_args, parameters, _type_hints(cls.__init__), f"{dotted}.init_args.")


def _walk_dataclass(node: Mapping, settings: type, dotted: str) -> list:
    return _walk_fields(node, [f.name for f in fields(settings)], _type_hints(settings), f"{dotted}.")


def _walk_fields(values: Mapping, names: list[str], hints: dict, prefix: str) -> list:
    """The keys of ``values`` that are not among ``names``, and what is unknown inside the others."""
    unknown = []
    for key, value in values.items():
        if key not in names:
            unknown.append((f"{prefix}{key}", _qualified(prefix, closest_name(str(key), names))))
        else:
            unknown += _walk_value(value, f"{prefix}{key}", hints.get(key))
    return unknown


def _qualified(prefix: str, name: str | None) -> str | None:
    return f"{prefix}{name}" if name else None


def import_class(class_path) -> type | None:
    """The class a dotted ``class_path`` names, or None when it does not import."""
    module, _, name = str(class_path).rpartition(".")
    if not module:
        return None
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _init_parameters(cls: type) -> list[str] | None:
    """Names ``cls(...)`` takes, or None when it takes ``**kwargs``."""
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())[1:]  # without self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _type_hints(obj) -> dict:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # unresolvable forward references: no nested checks for this class
        return {}


def _dataclass_in(annotation) -> type | None:
    """The dataclass an annotation names, alone or in a union (``SparrowConfig | dict | None``)."""
    if isinstance(annotation, type) and is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((arg for arg in typing.get_args(annotation) if isinstance(arg, type) and is_dataclass(arg)), None)
    return None
