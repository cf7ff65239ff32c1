"""The TSF track cache: one track per (video, expression), and a record of what made them.

Layout::

    <cache>/manifest.json          {"kind": "sparrow-tsf-tracks", "format": 1,
                                    "producer": {...}, "producer_hash": "<sha256>",
                                    "written_by": {"sparrow_plugin": "0.1.0", "torch": ...}}
    <cache>/tracks.rank<k>.jsonl   one line per track: {"key": "<video>/<exp_id>",
                                    "boxes": [[x1, y1, x2, y2], ...], "scores": [...]}

``producer`` says what the tracks were made from and how: the source (``annotation``,
detect + track with its models) and the dataset (:func:`dataset_record`: the split and a
content hash of its annotation files). A build resumes only a cache of the same producer;
a training run reads one made from the same dataset, by any source. Anything else
(another split, edited annotations, other settings, another format) is refused with the
fields that differ. Each builder rank appends to its own shard and flushes every line, so an
interrupted build resumes where it stopped: finished keys are skipped, and a last line cut
off mid-write is dropped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import torch

from sparrow_plugin.errors import DatasetError
from sparrow_plugin.tsf.tracks import Track

__all__ = ["TRACKS_FORMAT", "TrackCache", "dataset_record", "file_digest", "producer_hash"]

TRACKS_FORMAT = 1
_KIND = "sparrow-tsf-tracks"


def file_digest(*paths: str | Path) -> str:
    """sha256 over the bytes of the files, in order (the dataset's annotation files)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def dataset_record(root: str | Path, split: str, layout: str = "mevis") -> dict[str, str]:
    """What a cache's tracks were made from: the split and its annotation files' hash (the
    expressions file, and the masks when they are one file: a Ref-YouTube-VOS split's PNG
    folder is not hashed)."""
    from sparrow_plugin.data.layouts import dataset_class

    paths = dataset_class(layout).layout_paths(Path(root), split)
    files = [paths[part] for part in ("expressions", "masks") if paths[part].is_file()]
    return {"split": split, "content": file_digest(*files)}


def producer_hash(producer: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(producer, sort_keys=True).encode()).hexdigest()


class TrackCache:
    """A folder of TSF tracks made by one producer.

    Args:
        folder: the cache folder.
        producer: what this run expects the tracks to be made from (plain JSON data): a
            build gives all of it, a reader only the parts it needs to agree
            (``{"dataset": dataset_record(...)}``).
    """

    def __init__(self, folder: str | Path, producer: dict[str, Any]):
        self.folder = Path(folder)
        self.producer = json.loads(json.dumps(producer))  # plain JSON, as stored
        self.manifest_path = self.folder / "manifest.json"

    # ------------------------------------------------------------------ building

    def open_for_build(self, overwrite: bool = False) -> set[str]:
        """Make the folder this producer's cache; return the keys already built (resume).

        Raises:
            DatasetError: the folder holds another producer's cache (unless ``overwrite``,
                which deletes its shards first) or something that is not a cache.
        """
        if self.manifest_path.exists():
            try:
                self._check_manifest(exact=True)
            except DatasetError:
                if not overwrite:
                    raise
                for shard in self.shards():
                    shard.unlink()
                self.manifest_path.unlink()
        elif self.folder.is_dir() and any(self.folder.iterdir()):
            raise DatasetError(self.folder, "is not empty and holds no TSF manifest.json: write the cache into a new folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            manifest = {
                "kind": _KIND,
                "format": TRACKS_FORMAT,
                "producer": self.producer,
                "producer_hash": producer_hash(self.producer),
                "written_by": _versions(),
            }
            partial = self.manifest_path.with_suffix(".json.partial")
            partial.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            partial.replace(self.manifest_path)
        return set(self._read_shards(repair=True))

    def append(self, rank: int, tracks: Iterable[tuple[str, Track]]) -> None:
        """Append finished tracks to rank ``rank``'s shard, one flushed line each."""
        with open(self.folder / f"tracks.rank{rank}.jsonl", "a") as shard:
            for key, track in tracks:
                line = {"key": key, "boxes": [[round(float(v), 6) for v in box] for box in track.boxes.tolist()], "scores": track.scores.tolist()}
                shard.write(json.dumps(line) + "\n")
                shard.flush()

    def built(self) -> dict[str, Track]:
        """The tracks the shards hold, read as they are (a build in progress: no checks)."""
        return self._read_shards()

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("tracks.rank*.jsonl"))

    # ------------------------------------------------------------------ reading

    def read(self) -> dict[str, Track]:
        """Every track, checked to come from this run's producer.

        Raises:
            DatasetError: no cache there, a foreign or stale one (naming what differs), or
                a line that cannot be read (naming the shard and line).
        """
        self._check_manifest()
        return self._read_shards()

    def _check_manifest(self, exact: bool = False) -> None:
        if not self.manifest_path.is_file():
            raise DatasetError(self.manifest_path, "no TSF track cache here: build it with `sparrow tsf build --config RECIPE --out FOLDER`")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise DatasetError(self.manifest_path, f"is not valid JSON ({error.msg}, line {error.lineno})") from None
        if not isinstance(manifest, dict) or manifest.get("kind") != _KIND:
            raise DatasetError(self.manifest_path, f"is not a TSF track cache (kind {manifest.get('kind') if isinstance(manifest, dict) else None!r})")
        if manifest.get("format") != TRACKS_FORMAT:
            raise DatasetError(self.manifest_path, f"was written in track format {manifest.get('format')}, this version reads {TRACKS_FORMAT}: rebuild it")
        stored = manifest.get("producer", {})
        if manifest.get("producer_hash") != producer_hash(stored):
            raise DatasetError(self.manifest_path, "its producer record does not match its hash (edited by hand?): rebuild it")
        compared = stored if exact else {key: stored.get(key) for key in self.producer}
        if compared != self.producer:
            differences = _differences(compared, self.producer)
            raise DatasetError(
                self.manifest_path,
                "was built from something else than this run needs (" + "; ".join(differences) + "): rebuild it with `sparrow tsf build ... --overwrite`",
            )

    def _read_shards(self, repair: bool = False) -> dict[str, Track]:
        """``repair`` (a build resuming): drop a last line an interrupted build cut off."""
        tracks: dict[str, Track] = {}
        for shard in self.shards():
            lines = shard.read_text().split("\n")
            if lines[-1]:  # no newline at the end: the last write was cut off
                if not repair:
                    raise DatasetError(shard, "ends in a line cut off mid-write (an interrupted build): resume it with `sparrow tsf build`")
                shard.write_text("".join(line + "\n" for line in lines[:-1]))
            for number, line in enumerate(lines[:-1], start=1):
                try:
                    record = json.loads(line)
                    tracks[record["key"]] = Track(torch.tensor(record["boxes"], dtype=torch.float32), torch.tensor(record["scores"], dtype=torch.float32))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                    raise DatasetError(shard, f"line {number} is not a track record ({error}): rebuild the cache") from None
        return tracks


def _differences(stored: Any, wanted: Any, where: str = "producer") -> list[str]:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        found = []
        for key in sorted(set(stored) | set(wanted)):
            found += _differences(stored.get(key), wanted.get(key), f"{where}.{key}")
        return found
    return [] if stored == wanted else [f"{where}: {stored!r} in the cache, {wanted!r} here"]


def _versions() -> dict[str, str]:
    from sparrow_plugin import __version__

    return {"sparrow_plugin": __version__, "torch": torch.__version__}
