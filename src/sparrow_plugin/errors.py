"""Errors raised for bad input. Each names what was wrong and where; the CLI prints them
without a traceback (a traceback is for bugs, not for a wrong path or a broken file).

They survive DataLoader workers: a worker hands its exception back as text, and torch
rebuilds it in the main process as ``type(error)(text)``, the text being "Caught <Type> in
DataLoader worker process <k>. Original Traceback ...: <module>.<Type>: <message>". Every
class here accepts that single argument and keeps the original message, so a corrupt frame
reads the same with ``num_workers > 0`` as without.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SparrowError", "DatasetError", "CheckpointError", "ConfigError", "SparrowWarning"]


class SparrowError(Exception):
    """Base class of the errors a user can fix."""

    def __init__(self, message: str):
        super().__init__(_original_message(type(self), message))


class DatasetError(SparrowError, ValueError):
    """Input data that cannot be used as it is; the message starts with the file.

    ``path`` is None for an error rebuilt from a DataLoader worker (its message names the file).
    """

    def __init__(self, path: str | Path, problem: str | None = None):
        if problem is None:  # rebuilt from a worker's text
            self.path, self.problem = None, None
            super().__init__(str(path))
            return
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


class CheckpointError(SparrowError, RuntimeError):
    """A checkpoint that does not fit the model it is loaded into, or cannot be read."""

    def __init__(self, path: str | Path | None, problem: str | None = None, missing=(), unexpected=()):
        if problem is None:  # rebuilt from a worker's text
            self.path, self.missing, self.unexpected = None, [], []
            super().__init__(str(path))
            return
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


class SparrowWarning(UserWarning):
    """Input or settings that work but are probably not what was meant (a word the host's
    tokenizer does not know, a checkpoint trained with other run settings, a schedule that
    ends before the trainer does); the CLI prints these as ``sparrow: warning: ...``."""


def _original_message(error_type: type, message: str) -> str:
    """``message`` itself, or, when it is a DataLoader worker's report of an ``error_type``,
    the message that error was raised with (the text after the traceback's last
    ``<module>.<Type>: ``, which is the raised error's own line)."""
    marker = f"{error_type.__module__}.{error_type.__qualname__}: "
    if message.startswith(f"Caught {error_type.__name__} ") and marker in message:
        return message[message.rindex(marker) + len(marker) :].rstrip("\n")
    return message
