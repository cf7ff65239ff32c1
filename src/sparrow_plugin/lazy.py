"""Package attributes imported on first use (PEP 562), so that importing a light part of
the kit (the ``sparrow`` dispatcher, the synthetic benchmark) does not import Lightning
and torch through the package's ``__init__``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, table: dict[str, str], exported: list[str]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose names in ``table`` come from the
    modules it maps them to."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        namespace[name] = value  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exported))

    return __getattr__, __dir__
