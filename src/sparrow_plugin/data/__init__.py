"""Datasets in the public benchmark formats, and the synthetic benchmark."""

from sparrow_plugin.data.collate import collate_referring
from sparrow_plugin.data.datamodule import ReferringVideoDataModule
from sparrow_plugin.data.mevis import MeViSDataset, ReferringExpression, normalize_expression

__all__ = ["MeViSDataset", "ReferringExpression", "normalize_expression", "ReferringVideoDataModule", "collate_referring"]
