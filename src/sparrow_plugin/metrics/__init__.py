"""Benchmark metrics with exact parity to the reference evaluators (docs/metrics.md)."""

from sparrow_plugin.metrics.frame_scores import boundary_map, boundary_radius, f_measure, jaccard
from sparrow_plugin.metrics.boxes import TopBoxHitRate
from sparrow_plugin.metrics.mevis import MeViSMetric

__all__ = ["jaccard", "f_measure", "boundary_map", "boundary_radius", "MeViSMetric", "TopBoxHitRate"]
