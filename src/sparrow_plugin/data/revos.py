"""ReVOS and LV-VIS, read as their releases ship them: MeViS' files, laid out otherwise.

ReVOS (one folder for every split)::

    <root>/JPEGImages/<video>/<frame>.jpg
    <root>/meta_expressions_<split>_.json     (train, valid; MeViS' schema, plus type_id)
    <root>/mask_dict.json                     (every split's annotations)
    <root>/mask_dict_foreground.json          ({<video>: {"masks_rle": [RLE per frame]}})

An expression's ``type_id`` is its kind: 0 ``referring``, 1 ``reasoning``, 2 ``no_target``
(the ReVOS evaluation's summary covers the first two).

LV-VIS, as converted to the MeViS schema for referring training (VISA's and GLUS'
``LVVIS`` folder)::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/meta_expressions.json
    <root>/mask_dict.json
"""

from __future__ import annotations

from pathlib import Path

from sparrow_plugin.data.mevis import MeViSDataset, ReferringExpression

__all__ = ["ReVOSDataset", "LVVISDataset", "REVOS_KINDS"]

REVOS_KINDS = {0: "referring", 1: "reasoning", 2: "no_target"}


class ReVOSDataset(MeViSDataset):
    """ReVOS splits (``train``, ``valid``); items as :class:`MeViSDataset`'s."""

    @classmethod
    def layout_paths(cls, root: Path, split: str) -> dict[str, Path]:
        return {"frames": root / "JPEGImages", "expressions": root / f"meta_expressions_{split}_.json", "masks": root / "mask_dict.json"}

    def _read_expression(self, video: str, exp_id: str, raw, frames: tuple[str, ...]) -> ReferringExpression:
        expression = super()._read_expression(video, exp_id, raw, frames)
        kind = REVOS_KINDS.get(raw.get("type_id"), expression.kind) if isinstance(raw, dict) else expression.kind
        return ReferringExpression(expression.video, expression.exp_id, expression.text, expression.anno_ids, expression.obj_ids, kind, frames)


class LVVISDataset(MeViSDataset):
    """LV-VIS in the MeViS schema (module docstring)."""

    @classmethod
    def layout_paths(cls, root: Path, split: str) -> dict[str, Path]:
        return {"frames": root / split / "JPEGImages", "expressions": root / "meta_expressions.json", "masks": root / "mask_dict.json"}
