"""Leakage across splits (issue 13): the same file, the same pixels under another name or format, and
near-duplicates (a JPEG-recompressed or brightened copy) in train and val are found; distinct images
are not; ``segbench data check`` prints the threshold and the time it took."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from scipy import ndimage

from segbench.cli import main
from segbench.data.doctor import NEAR_DUPLICATE_DISTANCE, check_dataset, check_leakage
from segbench.data.doctor.leakage import fingerprint_file, hamming_pairs, perceptual_hash

SIZE = 96
CATS = [{"id": 1, "name": "blob"}]


def scene(seed: int) -> np.ndarray:
    """A smooth random picture (blurred noise, like a photo at low frequencies), ``(96, 96, 3) uint8``."""
    noise = np.random.default_rng(seed).normal(size=(SIZE, SIZE, 3))
    smooth = ndimage.gaussian_filter(noise, sigma=(6, 6, 0))
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    return (40 + 170 * smooth).astype(np.uint8)


def jpeg_copy(a: np.ndarray, quality: int = 70) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf)


def split_json(root: Path, split: str, names: list[str]) -> Path:
    ann = {
        "images": [{"id": k + 1, "file_name": n, "height": SIZE, "width": SIZE} for k, n in enumerate(names)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": k + 1,
                "category_id": 1,
                "segmentation": [[8, 8, 40, 8, 40, 40, 8, 40]],
                "bbox": [8, 8, 32, 32],
                "area": 1024.0,
                "iscrowd": 0,
            }
            for k in range(len(names))
        ],
        "categories": CATS,
    }
    p = root / "annotations" / f"instances_{split}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(ann))
    return p


@pytest.fixture
def leaky(tmp_path) -> Path:
    """train: t0..t4; val: an identical copy of t0, t1's pixels as BMP, t2 JPEG-recompressed, t3 brightened
    by 10 %, and two images of their own."""
    root = tmp_path / "leaky"
    img = root / "images"
    img.mkdir(parents=True)
    for k in range(5):
        Image.fromarray(scene(k)).save(img / f"t{k}.png")
    (img / "v_copy.png").write_bytes((img / "t0.png").read_bytes())
    Image.fromarray(scene(1)).save(img / "v_pixels.bmp")
    jpeg_copy(scene(2)).save(img / "v_jpeg.jpg", quality=95)
    ImageEnhance.Brightness(Image.fromarray(scene(3))).enhance(1.1).save(img / "v_bright.png")
    for k in (10, 11):
        Image.fromarray(scene(k)).save(img / f"v_own{k}.png")
    split_json(root, "train", [f"t{k}.png" for k in range(5)])
    split_json(
        root,
        "val",
        ["v_copy.png", "v_pixels.bmp", "v_jpeg.jpg", "v_bright.png", "v_own10.png", "v_own11.png"],
    )
    return root


def kinds(rep) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set] = {}
    for p in rep.pairs:
        out.setdefault(p["kind"], set()).add((p["train_file_name"], p["file_name"]))
    return out


def test_every_kind_of_leak_is_found_and_nothing_else(leaky):
    reports = {
        s: check_dataset(leaky / "annotations" / f"instances_{s}.json", fingerprint=True)
        for s in ("train", "val")
    }
    rep = check_leakage(reports)
    assert kinds(rep) == {
        "leak_same_file": {("t0.png", "v_copy.png")},
        "leak_same_pixels": {("t1.png", "v_pixels.bmp")},
        "leak_near_duplicate": {("t2.png", "v_jpeg.jpg"), ("t3.png", "v_bright.png")},
    }
    assert rep.counts() == {"leak_same_file": 1, "leak_same_pixels": 1, "leak_near_duplicate": 2}
    near = [p for p in rep.pairs if p["kind"] == "leak_near_duplicate"]
    assert all(0 <= p["distance"] <= NEAR_DUPLICATE_DISTANCE for p in near)
    assert all(i.severity == "warning" for i in rep.issues)
    msg = next(i.message for i in rep.issues if i.kind == "leak_same_pixels")
    assert msg == (
        "val image 2 'v_pixels.bmp' and train image 2 't1.png': the same pixels in another file; "
        "val scores are inflated"
    )
    assert rep.threshold == NEAR_DUPLICATE_DISTANCE and rep.seconds >= rep.compare_seconds >= 0
    # from the files alone (no check report): the same answer
    again = check_leakage(
        {s: (leaky / "annotations" / f"instances_{s}.json", leaky / "images") for s in ("train", "val")}
    )
    assert kinds(again) == kinds(rep)


def test_distinct_images_are_not_flagged(tmp_path):
    hashes = np.array([perceptual_hash(scene(k)) for k in range(40)], np.uint64)
    pairs = [(i, j, d) for i, j, d in hamming_pairs(hashes, hashes, NEAR_DUPLICATE_DISTANCE) if i != j]
    assert pairs == []  # 40 distinct scenes: no pair within the threshold
    assert min(d for i, j, d in hamming_pairs(hashes, hashes, 64) if i != j) > NEAR_DUPLICATE_DISTANCE


def test_a_threshold_of_zero_keeps_only_exact_hashes(leaky):
    splits = {s: (leaky / "annotations" / f"instances_{s}.json", leaky / "images") for s in ("train", "val")}
    rep = check_leakage(splits, max_distance=0)
    assert "leak_near_duplicate" not in kinds(rep) or all(p["distance"] == 0 for p in rep.pairs)
    with pytest.raises(ValueError, match="max_distance must be an integer in 0..63"):
        check_leakage(splits, max_distance=64)


def test_bytes_only_without_pixels(leaky):
    splits = {s: (leaky / "annotations" / f"instances_{s}.json", leaky / "images") for s in ("train", "val")}
    rep = check_leakage(splits, pixels=False)
    assert kinds(rep) == {"leak_same_file": {("t0.png", "v_copy.png")}}
    assert fingerprint_file(leaky / "images" / "t0.png", pixels=False).phash is None


def test_hamming_pairs_known_answer():
    a = np.array([0, 0xFFFF_FFFF_FFFF_FFFF, 0b1111], np.uint64)
    b = np.array([0b1, 0b11_0000], np.uint64)
    assert hamming_pairs(a, b, 2) == [(0, 0, 1), (0, 1, 2)]
    assert hamming_pairs(a, b, 3) == [(0, 0, 1), (0, 1, 2), (2, 0, 3)]
    assert hamming_pairs(a, b, 3, block=1) == hamming_pairs(a, b, 3)  # blocks change nothing


def test_data_check_prints_the_pairs_threshold_and_time(leaky, capsys):
    out_file = leaky / "report.json"
    assert main(["data", "check", f"data.root={leaky}", f"out={out_file}"]) == 0  # warnings only
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("[leakage]"))
    assert head.startswith(
        "[leakage] train vs val: 11 images, near-duplicate threshold: phash Hamming distance <= 6 of 64 bits; "
    )
    assert " s (hashing " in head
    assert "WARNING leak_same_file (1)" in out and "WARNING leak_same_pixels (1)" in out
    assert "WARNING leak_near_duplicate (2)" in out
    assert (
        "- val image 1 'v_copy.png' and train image 1 't0.png': the same file (identical bytes); val scores are inflated"
        in out
    )
    assert "data check: 0 error(s), 4 warning(s) in 2 split(s)" in out
    saved = json.loads(out_file.read_text())["leakage"]
    assert saved["threshold"] == 6 and saved["seconds"] >= 0 and "hash_seconds" in saved
    assert saved["counts"] == {"leak_same_file": 1, "leak_same_pixels": 1, "leak_near_duplicate": 2}


def test_one_split_has_nothing_to_compare(leaky, capsys):
    assert main(["data", "check", f"data.root={leaky}", "splits=[train]"]) == 0
    assert "only the train split: nothing to compare" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["nuts", "dsb2018"])
def test_real_sets(name):
    """Measured (issue 13): dsb2018 holds one near-duplicate train/val pair (an embryo imaged twice),
    nuts none."""
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} is absent (the shared development data is not on this machine)")
    rep = check_leakage(
        {s: (root / "annotations" / f"instances_{s}.json", root / "images") for s in ("train", "val")}
    )
    expected = {"leak_same_file": 0, "leak_same_pixels": 0, "leak_near_duplicate": int(name == "dsb2018")}
    assert rep.counts() == expected
    if name == "dsb2018":
        assert {rep.pairs[0]["train_file_name"][:12], rep.pairs[0]["file_name"][:12]} == {
            "20b20ab04937",
            "cb4df20a83b2",
        }
