"""Datasets in the public benchmark formats, and the synthetic benchmark.

The names below are imported on first use: ``sparrow data synth`` and ``sparrow report``
need the synthetic benchmark's module alone, not Lightning and torch.
"""

from sparrow_plugin.lazy import lazy_attributes

__all__ = [
    "MeViSDataset",
    "RefYouTubeVOSDataset",
    "ReferringExpression",
    "normalize_expression",
    "ReferringVideoDataModule",
    "TrainSource",
    "collate_referring",
]

_LAZY = {
    "collate_referring": "sparrow_plugin.data.collate",
    "ReferringVideoDataModule": "sparrow_plugin.data.datamodule",
    "MeViSDataset": "sparrow_plugin.data.mevis",
    "RefYouTubeVOSDataset": "sparrow_plugin.data.refytvos",
    "TrainSource": "sparrow_plugin.data.mixing",
    "ReferringExpression": "sparrow_plugin.data.mevis",
    "normalize_expression": "sparrow_plugin.data.mevis",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
