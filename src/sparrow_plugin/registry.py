"""Hosts by name: what ``BASE=<name>`` and ``SparrowWrapper(base="<name>")`` resolve.

A host package registers itself once, at the end of its ``__init__``::

    register_host("videoglamm", VideoGLaMM.from_pretrained, check=VideoGLaMM.missing_downloads)

The factory is any callable returning a host (a class, or its ``from_pretrained``). The
optional ``check`` takes the same arguments and returns, without loading anything, what
is missing for them (``"<path>: <what to put there>"``), so that a recipe names every
missing download at once before a multi-GB host starts to load. Packages that are not
imported yet are found through ``KNOWN_HOST_MODULES``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from sparrow_plugin.config import closest_name
from sparrow_plugin.errors import ConfigError

__all__ = ["register_host", "list_hosts", "get_host_factory", "check_host_arguments", "missing_host_inputs", "KNOWN_HOST_MODULES"]

_HOSTS: dict[str, Callable[..., Any]] = {}
_CHECKS: dict[str, Callable[..., list[str]]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Where each shipped host lives; importing the module registers it.
KNOWN_HOST_MODULES = {
    "tiny": "sparrow_plugin.hosts.tiny",
    "videoglamm": "baselines.videoglamm",
    "unipixel": "baselines.unipixel",
    "glus": "baselines.glus",
}


def register_host(name: str, factory: Callable[..., Any], check: Callable[..., list[str]] | None = None) -> None:
    """Make a host available by ``name`` (lower case, ``[a-z][a-z0-9_]*``); ``check`` (see
    the module docstring) is optional."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"host name must match [a-z][a-z0-9_]*, got {name!r}")
    if not callable(factory):
        raise ConfigError(f"host factory for {name!r} must be callable, got {type(factory).__name__}")
    if name in _HOSTS and _HOSTS[name] is not factory:
        raise ConfigError(f"host {name!r} is already registered (by {_HOSTS[name]!r})")
    if check is not None and not callable(check):
        raise ConfigError(f"host check for {name!r} must be callable, got {type(check).__name__}")
    _HOSTS[name] = factory
    if check is not None:
        _CHECKS[name] = check


def list_hosts() -> list[str]:
    """Names of every host that is registered or shipped with the package, sorted."""
    for name in KNOWN_HOST_MODULES:
        _import_known(name, required=False)
    return sorted(_HOSTS)


def get_host_factory(name: str) -> Callable[..., Any]:
    """The factory registered under ``name``; shipped hosts are imported on demand."""
    if name not in _HOSTS:
        _import_known(name, required=True)
    if name not in _HOSTS:
        raise ConfigError(f"unknown host {name!r}; registered hosts: {', '.join(list_hosts()) or 'none'}")
    return _HOSTS[name]


def missing_host_inputs(name: str, host_args: dict) -> list[str]:
    """What the host ``name`` would miss with ``host_args`` (its registered check), or []
    when it has no check. Arguments the factory does not take are a ConfigError."""
    check_host_arguments(name, host_args)
    check = _CHECKS.get(name)
    return list(check(**host_args)) if check is not None else []


def check_host_arguments(name: str, host_args: dict) -> None:
    """Refuse ``host_args`` the factory of ``name`` does not take, naming the closest one."""
    factory = get_host_factory(name)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for key in host_args:
        if key not in parameters:
            closest = closest_name(key, parameters)
            hint = f" (did you mean {closest!r}?)" if closest else ""
            raise ConfigError(f"host_args.{key} is not an argument of the {name!r} host{hint}; it takes: {', '.join(parameters)}")


def _import_known(name: str, required: bool) -> None:
    module = KNOWN_HOST_MODULES.get(name)
    if module is None or name in _HOSTS:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        # Only a missing host package itself is tolerated while listing; a broken import
        # inside it is a bug and must surface.
        if required or not module.startswith(error.name or "\0"):
            raise
