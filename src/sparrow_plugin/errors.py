"""Errors raised for bad input. Each names what was wrong and where; the CLI prints them
without a traceback (a traceback is for bugs, not for a wrong path or a broken file)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["SparrowError", "DatasetError", "CheckpointError", "ConfigError"]


class SparrowError(Exception):
    """Base class of the errors a user can fix."""


class DatasetError(SparrowError, ValueError):
    """Input data that cannot be used as it is; the message starts with the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class CheckpointError(SparrowError, RuntimeError):
    """A checkpoint that does not fit the model it is loaded into."""

    def __init__(self, path: str | Path | None, problem: str, missing=(), unexpected=()):
        self.path = Path(path) if path is not None else None
        self.missing, self.unexpected = list(missing), list(unexpected)
        lines = [f"{path}: {problem}" if path is not None else problem]
        for title, keys in (("missing keys", self.missing), ("unexpected keys", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        super().__init__("\n".join(lines))


class ConfigError(SparrowError, ValueError):
    """A setting that cannot work; the message gives the value and what would be accepted."""
