"""The on-disk layouts the kit reads referring video segmentation data in, by name."""

from __future__ import annotations

from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.data.refytvos import RefYouTubeVOSDataset
from sparrow_plugin.data.revos import LVVISDataset, ReVOSDataset
from sparrow_plugin.errors import ConfigError

__all__ = ["LAYOUTS", "dataset_class"]

LAYOUTS: dict[str, type[MeViSDataset]] = {
    "mevis": MeViSDataset,  # MeViS, the synthetic benchmark
    "ref-youtube-vos": RefYouTubeVOSDataset,  # Ref-YouTube-VOS, Ref-DAVIS17 as converted
    "revos": ReVOSDataset,
    "lv-vis": LVVISDataset,
}


def dataset_class(layout: str) -> type[MeViSDataset]:
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]
