"""The COCO data layer: every awkward case of real exports, with the expected mask or box."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import segbench.data.coco as coco_mod
from segbench.data.coco import CocoDataset, open_split, read_image
from segbench.types import SegbenchError, masks_to_rles
from tests.conftest import write_coco

CATS = [{"id": 1, "name": "a"}]


def square(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def ann(i, image_id=1, cat=1, **kw):
    return {"id": i, "image_id": image_id, "category_id": cat, "iscrowd": 0, **kw}


def test_polygon_with_several_parts(tmp_path, rgb):
    p = write_coco(
        tmp_path, [("a.png", rgb())], [ann(1, segmentation=[square(2, 2, 6, 6), square(10, 4, 14, 8)])], CATS
    )
    inst = CocoDataset(p)[0].instances
    m = inst.get_masks()[0]
    expected = np.zeros((32, 48), bool)
    expected[2:6, 2:6] = True
    expected[4:8, 10:14] = True
    assert len(inst) == 1
    assert (m == expected).all()
    assert inst.boxes[0].tolist() == [2, 2, 14, 8]


def test_compressed_and_uncompressed_rle(tmp_path, rgb):
    m = np.zeros((32, 48), bool)
    m[5:9, 20:30] = True
    compressed = masks_to_rles(m[None])[0]
    # uncompressed: counts as a list of run lengths, column-major
    flat = m.T.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])) != 0)
    counts = np.diff(np.concatenate([[0], change])).tolist()
    uncompressed = {"size": [32, 48], "counts": counts[: len(counts)]}
    assert sum(counts) == 32 * 48
    p = write_coco(
        tmp_path,
        [("a.png", rgb())],
        [ann(1, segmentation=compressed), ann(2, segmentation=uncompressed)],
        CATS,
    )
    inst = CocoDataset(p)[0].instances
    masks = inst.get_masks()
    assert len(inst) == 2
    assert (masks[0] == m).all() and (masks[1] == m).all()
    assert inst.boxes.tolist() == [[20, 5, 30, 9]] * 2


def test_crowd_kept_as_crowd_region(tmp_path, rgb):
    crowd = masks_to_rles(np.pad(np.ones((4, 4), bool), ((0, 28), (0, 44)))[None])[0]
    p = write_coco(
        tmp_path,
        [("a.png", rgb())],
        [ann(1, segmentation=[square(10, 10, 20, 20)]), ann(2, segmentation=crowd, iscrowd=1)],
        CATS,
    )
    inst = CocoDataset(p)[0].instances
    assert inst.iscrowd.tolist() == [False, True]
    assert inst.get_masks()[1][:4, :4].all()


def test_noncontiguous_and_zero_based_category_ids(tmp_path, rgb):
    cats = [{"id": 0, "name": "zero"}, {"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    p = write_coco(
        tmp_path,
        [("a.png", rgb())],
        [
            ann(1, cat=7, segmentation=[square(1, 1, 5, 5)]),
            ann(2, cat=0, segmentation=[square(10, 1, 15, 5)]),
        ],
        cats,
    )
    kept = CocoDataset(p, keep_empty_classes=True)  # 'three' has no annotation: a class only on request
    assert kept.class_names == ["zero", "three", "seven"]
    assert kept.cat_id_to_label == {0: 1, 3: 2, 7: 3}
    assert kept[0].instances.labels.tolist() == [3, 1]
    ds = CocoDataset(p)
    assert ds.class_names == ["zero", "seven"] and [c["name"] for c in ds.empty_categories] == ["three"]
    assert ds.cat_id_to_label == {0: 1, 7: 2}
    assert [c["id"] for c in ds.all_categories] == [0, 3, 7]  # kept for the id mapping
    inst = ds[0].instances
    assert inst.labels.tolist() == [2, 1]
    # mapped back when results are written
    from segbench.eval.metrics import instances_to_results

    res = instances_to_results(
        type(inst)(
            image_size=inst.image_size, boxes=inst.boxes, labels=inst.labels, rles=inst.rles, scores=[1, 1]
        ),
        1,
        ds.label_to_cat_id,
    )
    assert [r["category_id"] for r in res] == [7, 0]


def test_images_without_annotations_are_kept(tmp_path, rgb):
    p = write_coco(
        tmp_path, [("a.png", rgb()), ("b.png", rgb())], [ann(1, segmentation=[square(1, 1, 5, 5)])], CATS
    )
    ds = CocoDataset(p)
    assert len(ds) == 2
    neg = ds[1]
    assert len(neg.instances) == 0 and neg.instances.get_masks().shape == (0, 32, 48)
    assert neg.image.shape == (32, 48, 3)


@pytest.mark.parametrize(
    ("mode", "make", "expected"),
    [
        ("L", lambda: Image.fromarray(np.full((4, 5), 77, np.uint8), "L"), (77, 77, 77)),
        (
            "RGBA",
            lambda: Image.fromarray(np.tile(np.array([10, 20, 30, 0], np.uint8), (4, 5, 1)), "RGBA"),
            (10, 20, 30),
        ),
        ("P", None, (200, 100, 50)),
        ("I;16", lambda: Image.fromarray(np.full((4, 5), 4000, np.uint16)), (255, 255, 255)),
    ],
)
def test_image_modes_become_rgb_uint8(tmp_path, mode, make, expected):
    if mode == "P":
        im = Image.new("P", (5, 4))
        im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
        im.paste(1, (0, 0, 5, 4))
    else:
        im = make()
    path = tmp_path / "x.png"
    im.save(path)
    a = read_image(path)
    assert a.dtype == np.uint8 and a.shape == (4, 5, 3)
    assert tuple(a[0, 0]) == expected


def test_16_bit_image_scaled_not_clipped(tmp_path):
    a = np.zeros((4, 4), np.uint16)
    a[0, 0] = 1000
    a[0, 1] = 500
    Image.fromarray(a).save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    assert out[0, 0, 0] == 255 and out[0, 1, 0] == 128 and out[1, 1, 0] == 0


def test_exif_orientation_applied(tmp_path):
    # stored 6 wide x 2 high, EXIF 6 = rotate 90° clockwise to display: displayed 2 wide x 6 high
    a = np.zeros((2, 6, 3), np.uint8)
    a[:, 0] = 255  # left column stored white -> top row when displayed
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (6, 2, 3)
    assert out[0].mean() > 200 and out[-1].mean() < 50
    # a JSON that gives the stored size means annotations were drawn on stored pixels
    assert read_image(tmp_path / "r.jpg", expected_size=(2, 6)).shape == (2, 6, 3)
    p = write_coco(
        tmp_path / "ds",
        [],
        [ann(1, segmentation=[square(0, 0, 2, 2)])],
        CATS,
        image_entries=[{"id": 1, "file_name": "r.jpg", "height": 6, "width": 2}],
    )
    (tmp_path / "ds" / "images" / "r.jpg").write_bytes((tmp_path / "r.jpg").read_bytes())
    s = CocoDataset(p)[0]
    assert s.image.shape == (6, 2, 3) and s.instances.get_masks().shape == (1, 6, 2)


def test_parts_outside_image_are_clipped(tmp_path, rgb):
    p = write_coco(
        tmp_path,
        [("a.png", rgb())],
        [
            ann(1, segmentation=[square(-10, -5, 10, 8)]),  # polygon partly outside (top-left)
            ann(2, bbox=[40, 20, 30, 30]),  # box-only annotation partly outside (bottom-right)
        ],
        CATS,
    )
    inst = CocoDataset(p)[0].instances
    assert inst.boxes.tolist() == [[0, 0, 10, 8], [40, 20, 48, 32]]
    m = inst.get_masks()
    assert m[0].sum() == 10 * 8 and m[1].sum() == 8 * 12


def test_degenerate_annotations_dropped_counted_logged_once(tmp_path, rgb, caplog):
    anns = [
        ann(1, segmentation=[square(1, 1, 5, 5)]),
        ann(2, segmentation=[[1, 1, 5, 5]]),  # 2 points
        ann(3, segmentation=[[1, 1, 5, 5, 9]]),  # odd coordinates
        ann(4, segmentation=[[1, 1, 5, 5, 9, 9]]),  # collinear: zero area
        ann(5, segmentation=[square(100, 100, 120, 120)]),  # outside the image
        ann(6, bbox=[3, 3, 0, 5]),  # zero-width box, no mask
        ann(7, segmentation={"size": [10, 10], "counts": "abc"}),  # RLE of another size
        ann(8, image_id=99, segmentation=[square(1, 1, 5, 5)]),  # unknown image
        ann(9, cat=42, segmentation=[square(1, 1, 5, 5)]),  # unknown category
    ]
    p = write_coco(tmp_path, [("a.png", rgb())], anns, CATS)
    with caplog.at_level(logging.WARNING, logger="segbench.data.coco"):
        ds = CocoDataset(p)
        ds[0]
        ds[0]
    assert ds.num_annotations == 1
    assert ds.dropped.total == 8
    assert sorted(i for ids in ds.dropped.by_reason.values() for i in ids) == [2, 3, 4, 5, 6, 7, 8, 9]
    # dropped under the doctor's problem kinds (segbench.data.annotations.KINDS)
    assert dict(ds.dropped.by_reason) == {
        "bad_polygon": [2, 3],
        "empty_mask": [4, 5],
        "bad_box": [6],
        "rle_size_mismatch": [7],
        "unknown_image": [8],
        "unknown_category": [9],
    }
    records = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(records) == 1
    assert "ids 2" in records[0].getMessage() and "ids 9" in records[0].getMessage()
    assert "2 bad_polygon (ids 2, 3)" in records[0].getMessage()
    assert len(ds[0].instances) == 1


def test_json_with_a_utf8_byte_order_mark_is_read(tmp_path, rgb):
    p = write_coco(tmp_path, [("a.png", rgb())], [ann(1, segmentation=[square(1, 1, 5, 5)])], CATS)
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())  # as some Windows tools write it
    assert CocoDataset(p).num_annotations == 1


def test_annotation_with_an_unreadable_segmentation_is_dropped_not_boxed(tmp_path, rgb):
    # a string is no mask: dropped (as the doctor's fix drops it), not replaced by its box
    bad = ann(2, segmentation="garbage", bbox=[0, 0, 4, 4])
    p = write_coco(tmp_path, [("a.png", rgb())], [ann(1, segmentation=[square(1, 1, 5, 5)]), bad], CATS)
    ds = CocoDataset(p)
    assert dict(ds.dropped.by_reason) == {"malformed_segmentation": [2]}
    assert len(ds[0].instances) == 1


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.png", "sub/../../x.png"])
def test_file_name_escaping_root_refused(tmp_path, rgb, name):
    entries = [{"id": 1, "file_name": name, "height": 4, "width": 4}]
    p = write_coco(tmp_path, [], [], CATS, image_entries=entries)
    with pytest.raises(SegbenchError, match="file_name"):
        CocoDataset(p)


def test_subfolder_file_names_are_fine(tmp_path, rgb):
    p = write_coco(tmp_path, [("sub/a.png", rgb())], [], CATS)
    assert CocoDataset(p)[0].image.shape == (32, 48, 3)


def test_indexing_100k_annotations_decodes_no_mask(tmp_path, monkeypatch):
    n_img, per = 1000, 100
    images = [{"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64} for i in range(n_img)]
    anns = [
        ann(
            i * per + j + 1,
            image_id=i + 1,
            segmentation=[square(j % 50, 2, j % 50 + 6, 9)],
            area=42.0,
            bbox=[0, 0, 6, 7],
        )
        for i in range(n_img)
        for j in range(per)
    ]
    (tmp_path / "annotations").mkdir()
    p = tmp_path / "annotations" / "instances_train.json"
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    calls = {"n": 0}
    real = mask_utils.frPyObjects

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(coco_mod.mask_utils, "frPyObjects", counting)
    monkeypatch.setattr(coco_mod.mask_utils, "decode", lambda *a, **k: pytest.fail("decoded while indexing"))
    ds = CocoDataset(p)
    assert ds.num_annotations == 100_000 and calls["n"] == 0
    inst = ds.load_instances(5)  # one item: only its own annotations are rasterised
    assert len(inst) == per and calls["n"] == per


def test_open_split_errors_name_the_problem(tmp_path):
    with pytest.raises(SegbenchError, match="not a folder"):
        open_split(tmp_path / "nope", "train")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text("{}")
    with pytest.raises(SegbenchError, match="instances_val.json does not exist.*instances_train.json"):
        open_split(tmp_path, "val")
    with pytest.raises(SegbenchError, match="missing the 'images' list"):
        open_split(tmp_path, "train")
    (tmp_path / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(SegbenchError, match="not valid JSON"):
        open_split(tmp_path, "train")


def test_corrupt_and_missing_images_give_clear_errors(tmp_path, rgb):
    p = write_coco(tmp_path, [("a.png", rgb()), ("b.png", rgb())], [], CATS)
    data = (tmp_path / "images" / "a.png").read_bytes()
    (tmp_path / "images" / "a.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "images" / "b.png").unlink()
    ds = CocoDataset(p)
    with pytest.raises(SegbenchError, match=r"a\.png.*corrupt"):
        ds[0]
    with pytest.raises(SegbenchError, match=r"not found.*b\.png"):
        ds[1]


def test_image_size_mismatch_names_file_and_fix(tmp_path, rgb):
    entries = [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}]
    p = write_coco(tmp_path, [("a.png", rgb())], [], CATS, image_entries=entries)
    with pytest.raises(SegbenchError, match=r"a\.png is 48x32.*says 10x10.*data check"):
        CocoDataset(p)[0]
