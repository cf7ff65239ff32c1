"""Hosts by name: what ``BASE=<name>`` and ``SparrowWrapper(base="<name>")`` resolve.

A host package registers itself once, at the end of its ``__init__``::

    register_host("videoglamm", VideoGLaMM.from_pretrained)

The factory is any callable returning a host (a class, or its ``from_pretrained``).
Packages that are not imported yet are found through ``KNOWN_HOST_MODULES``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from sparrow_plugin.errors import ConfigError

__all__ = ["register_host", "list_hosts", "get_host_factory", "KNOWN_HOST_MODULES"]

_HOSTS: dict[str, Callable[..., Any]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Where each shipped host lives; importing the module registers it.
KNOWN_HOST_MODULES = {
    "tiny": "sparrow_plugin.hosts.tiny",
    "videoglamm": "baselines.videoglamm",
    "unipixel": "baselines.unipixel",
    "glus": "baselines.glus",
}


def register_host(name: str, factory: Callable[..., Any]) -> None:
    """Make a host available by ``name`` (lower case, ``[a-z][a-z0-9_]*``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"host name must match [a-z][a-z0-9_]*, got {name!r}")
    if not callable(factory):
        raise ConfigError(f"host factory for {name!r} must be callable, got {type(factory).__name__}")
    if name in _HOSTS and _HOSTS[name] is not factory:
        raise ConfigError(f"host {name!r} is already registered (by {_HOSTS[name]!r})")
    _HOSTS[name] = factory


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
