"""The real development sets in ../shared/data load and give statistics (skipped where absent)."""

from __future__ import annotations

import pytest

from segbench.data.coco import open_split
from segbench.data.stats import dataset_stats
from tests.conftest import SHARED_DATA


@pytest.mark.parametrize(
    ("name", "split", "images", "instances", "max_per_image"),
    [
        ("dsb2018", "train", 531, 23182, 375),
        ("dsb2018", "val", 133, 5804, 250),
        ("nuts", "train", 14, 121, 13),
        ("nuts", "val", 4, 44, 12),
    ],
)
def test_real_sets_load_and_give_stats(name, split, images, instances, max_per_image):
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} is absent (the shared development data is not on this machine)")
    ds = open_split(root, split)
    s = dataset_stats(ds)
    assert s["images"] == images and s["instances"] == instances
    assert s["per_image"]["max"] == max_per_image
    assert sum(s["sizes"].values()) == instances
    sample = ds[len(ds) - 1]
    assert sample.image.ndim == 3 and sample.image.shape[2] == 3
    masks = sample.instances.get_masks()
    assert masks.shape[1:] == sample.image.shape[:2] and len(masks) >= 1
