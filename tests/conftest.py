from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_coco(
    root: Path,
    images: list[tuple[str, np.ndarray | Image.Image]],
    annotations: list[dict],
    categories: list[dict],
    *,
    split: str = "train",
    image_entries: list[dict] | None = None,
) -> Path:
    """Write a tiny COCO dataset in the data.root layout; returns the JSON path.

    ``images`` are (file_name, pixels); image ids are 1.. in order unless ``image_entries`` is given.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (name, px) in enumerate(images):
        im = px if isinstance(px, Image.Image) else Image.fromarray(px)
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path)
        w, h = im.size
        entries.append({"id": k + 1, "file_name": name, "height": h, "width": w})
    doc = {"images": image_entries or entries, "annotations": annotations, "categories": categories}
    p = root / "annotations" / f"instances_{split}.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.fixture
def rgb():
    def make(h=32, w=48, value=100):
        return np.full((h, w, 3), value, np.uint8)

    return make


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset shared by the tests of a session."""
    from segbench.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, num_train=24, num_val=8, image_size=96, min_radius=8, max_radius=20, seed=3)
    return root
