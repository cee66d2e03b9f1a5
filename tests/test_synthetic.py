from __future__ import annotations

import hashlib
import json

import numpy as np

from segbench.data.coco import open_split
from segbench.data.synthetic import CLASSES, SynthConfig, generate, make_image


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    generate(tmp_path / "a", num_train=6, num_val=2, image_size=64, seed=7)
    generate(tmp_path / "b", num_train=6, num_val=2, image_size=64, seed=7)
    generate(tmp_path / "c", num_train=6, num_val=2, image_size=64, seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_content_is_varied():
    cfg = SynthConfig(seed=0)
    counts, labels, touching, empty, bg_means = [], set(), 0, 0, []
    for i in range(150):
        img, masks, lbl = make_image(i, cfg)
        assert img.dtype == np.uint8 and img.shape == (192, 192, 3)
        assert masks.shape[0] == len(lbl)
        counts.append(len(lbl))
        labels |= set(lbl.tolist())
        empty += len(lbl) == 0
        union = masks.any(axis=0) if len(masks) else np.zeros((192, 192), bool)
        bg_means.append(img[~union].mean())
        # touching: a dilated mask meets another instance
        from scipy.ndimage import binary_dilation

        for k in range(len(masks)):
            others = np.delete(masks, k, axis=0).any(axis=0) if len(masks) > 1 else None
            if others is not None and (binary_dilation(masks[k]) & others).any():
                touching += 1
                break
        # masks do not overlap (visible parts) and are not empty
        if len(masks):
            assert masks.sum(axis=0).max() <= 1 and masks.reshape(len(masks), -1).sum(1).min() >= 25
    assert labels == set(range(1, len(CLASSES) + 1))
    assert empty >= 1 and touching >= 20
    assert max(counts) >= 6
    assert min(bg_means) < 90 and max(bg_means) > 160  # dark and light backgrounds


def test_written_dataset_loads(tmp_path):
    s = generate(tmp_path, num_train=5, num_val=3, image_size=64)
    ds = open_split(tmp_path, "val")
    assert len(ds) == 3 and ds.class_names == list(CLASSES)
    doc = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert s["train"]["instances"] == len(doc["annotations"])
    sample = ds[0]
    assert sample.image.shape == (64, 64, 3)
    if len(sample.instances):
        a = sample.instances.areas()
        assert (a > 0).all()


def test_class_probs_make_a_rare_class_and_leave_the_default_unchanged():
    import pytest

    uniform = [make_image(i, SynthConfig()) for i in range(4)]
    same = [make_image(i, SynthConfig(class_probs=None)) for i in range(4)]
    assert all((a[0] == b[0]).all() and (a[2] == b[2]).all() for a, b in zip(uniform, same, strict=True))
    rare = SynthConfig(class_probs=(0.5, 0.5, 0.0))
    seen = np.concatenate([make_image(i, rare)[2] for i in range(60)])
    assert set(seen.tolist()) == {1, 2}  # a class of probability 0 never appears
    skewed = SynthConfig(class_probs=(0.8, 0.15, 0.05))
    labels = np.concatenate([make_image(i, skewed)[2] for i in range(150)])
    share = np.bincount(labels, minlength=4)[1:] / len(labels)
    assert share[0] > 0.6 and 0 < share[2] < 0.12
    with pytest.raises(ValueError, match="class_probs must be 3 non-negative"):
        generate("unused", class_probs=[0.5, 0.5])
