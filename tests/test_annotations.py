"""The annotation rulebook: known answers for decoding, and one name per problem for the loader and the doctor."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segbench.data.annotations import (
    KINDS,
    LEFT_ALONE,
    Problem,
    annotation_mask,
    box_to_rle,
    check_annotation,
    decode_annotation,
    decode_segmentation,
    document_problem,
    polygon_parts,
    reference_problem,
    rle_string_counts,
)
from segbench.data.coco import CocoDataset, DropReport
from segbench.data.doctor import check_dataset
from segbench.types import masks_to_rles
from tests.conftest import write_coco

H, W = 32, 48


def square(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def uncompressed(m: np.ndarray) -> dict:
    """A mask as COCO uncompressed RLE: column-major run lengths, background first."""
    flat = m.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": list(m.shape), "counts": runs}


# --------------------------------------------------------------------------------------------------
# Decoding: known answers
# --------------------------------------------------------------------------------------------------
def test_a_4x4_square_polygon_decodes_to_area_16_where_it_is():
    rle = decode_segmentation([square(2, 3, 6, 7)], 8, 8)
    assert rle["size"] == [8, 8] and isinstance(rle["counts"], str)
    assert int(mask_utils.area(rle)) == 16
    expected = np.zeros((8, 8), bool)
    expected[3:7, 2:6] = True
    assert (mask_utils.decode(rle).astype(bool) == expected).all()


def test_uncompressed_and_compressed_rle_decode_equal():
    m = np.zeros((H, W), bool)
    m[5:9, 20:30] = True
    m[0, 0] = True  # the first run is of foreground: counts start with 0
    compressed = masks_to_rles(m[None])[0]
    unc = uncompressed(m)
    assert unc["counts"][0] == 0 and sum(unc["counts"]) == H * W
    a, b = decode_segmentation(compressed, H, W), decode_segmentation(unc, H, W)
    assert a == b
    assert (mask_utils.decode(a).astype(bool) == m).all()
    # the doctor's reading of a compressed string gives the same runs
    assert rle_string_counts(compressed["counts"]) == unc["counts"]


def test_rle_string_counts_agrees_with_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.random((13, 17)) < rng.uniform(0.05, 0.95)
        rle = masks_to_rles(m[None])[0]
        assert rle_string_counts(rle["counts"]) == uncompressed(m)["counts"]
    assert rle_string_counts("") == []
    assert rle_string_counts("0\x7f") is None  # a character outside the alphabet


def test_several_parts_flat_polygons_and_bad_parts():
    two = decode_segmentation([square(0, 0, 4, 4), square(6, 0, 8, 2)], 8, 8)
    assert int(mask_utils.area(two)) == 16 + 4
    # a flat polygon is one part; a part of 2 points and one of 7 numbers are left out
    flat = decode_segmentation(square(0, 0, 4, 4), 8, 8)
    with_bad = decode_segmentation([square(0, 0, 4, 4), [1, 1, 5, 5], [1, 1, 2, 2, 3, 3, 4]], 8, 8)
    assert flat == with_bad == decode_segmentation([square(0, 0, 4, 4)], 8, 8)
    pp = polygon_parts([square(0, 0, 4, 4), [1, 1, 5, 5], [1, 1, 2, 2, 3, 3, 4]])
    assert pp.parts == [square(0, 0, 4, 4)] and not pp.flat
    assert [p.kind for p in pp.problems] == ["bad_polygon"]
    assert "part 1 has 2 point(s)" in pp.problems[0].message
    assert "part 2 has an odd number of coordinates (7)" in pp.problems[0].message
    # nothing usable: an empty mask of the image's size
    assert int(mask_utils.area(decode_segmentation([[1, 1, 5, 5]], 8, 8))) == 0


def test_polygons_and_boxes_are_clipped_to_the_image():
    rle = decode_segmentation([square(-10, -5, 10, 8)], H, W)
    assert int(mask_utils.area(rle)) == 10 * 8
    assert mask_utils.toBbox(rle).tolist() == [0, 0, 10, 8]
    assert int(mask_utils.area(box_to_rle([40, 20, 30, 30], H, W))) == 8 * 12
    assert int(mask_utils.area(box_to_rle([60, 60, 5, 5], H, W))) == 0
    box_only = {"segmentation": [], "bbox": [1, 2, 3, 4]}
    m = annotation_mask(box_only, H, W)
    assert m.shape == (H, W) and m.sum() == 12 and m[2:6, 1:4].all()
    assert decode_annotation({"bbox": [1, 2, 3, 4]}, H, W) == decode_annotation(box_only, H, W)


@pytest.mark.parametrize(
    ("seg", "match"),
    [
        ({"size": [10, 10], "counts": [100]}, "RLE size 10x10"),
        ({"counts": "abc"}, "without a valid size"),
        ({"size": [H, W]}, "without counts"),
        ("garbage", "list of polygons or an RLE dict, got str"),
    ],
)
def test_what_cannot_be_decoded_is_a_value_error_with_the_fix(seg, match):
    with pytest.raises(ValueError, match=match):
        decode_segmentation(seg, H, W)
    with pytest.raises(ValueError, match="fix=true"):  # the kind's hint
        decode_annotation({"segmentation": seg}, H, W)


def test_no_segmentation_and_no_box_cannot_be_decoded():
    with pytest.raises(ValueError, match="no segmentation and no valid bbox"):
        decode_annotation({"segmentation": None, "bbox": [1, 2, 3]}, H, W)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def good(i=1, seg=None, **kw):
    """A clean polygon annotation of image 1, category 1 (its bbox and area are the true ones)."""
    a = {
        "id": i,
        "image_id": 1,
        "category_id": 1,
        "iscrowd": 0,
        "segmentation": seg if seg is not None else [square(2, 2, 10, 10)],
        "bbox": [2.0, 2.0, 8.0, 8.0],
        "area": 64.0,
    }
    a.update(kw)
    return a


def test_a_clean_annotation_has_no_problem_and_its_mask():
    c = check_annotation(good(), H, W)
    assert c.problems == [] and c.unusable is None and not c.has_error
    assert c.area == 64 and c.rle == decode_annotation(good(), H, W)
    lazy = check_annotation(good(), H, W, decode=False)
    assert lazy.problems == [] and lazy.rle is None  # nothing decoded


def test_problems_the_loader_reads_around_are_reported_but_leave_it_usable():
    # a bad part next to a good one, a flat polygon, a wrong box: the mask is still there
    for ann, kinds in [
        (good(seg=[square(2, 2, 10, 10), [1, 2, 3]]), ["bad_polygon"]),
        (good(seg=square(2, 2, 10, 10)), ["malformed_segmentation"]),
        (good(bbox=[30, 20, 5, 5]), ["box_mask_mismatch"]),
        (good(bbox=[2, 2, 0, 8]), ["bad_box"]),
        (good(area=None), ["bad_area"]),
    ]:
        c = check_annotation(ann, H, W)
        assert [p.kind for p in c.problems] == kinds
        assert c.unusable is None and c.rle is not None and c.area == 64


def test_rle_runs_are_read_only_when_decoding():
    bad_runs = {"size": [H, W], "counts": [5, 5]}  # 10 pixels for a 32x48 mask
    assert check_annotation(good(seg=bad_runs), H, W).unusable.kind == "malformed_segmentation"
    assert check_annotation(good(seg=bad_runs), H, W, decode=False).unusable is None


def test_crowd_object_is_one_connected_component():
    m = np.zeros((H, W), bool)
    m[2:6, 30:34] = True
    ann = good(seg=masks_to_rles(m[None])[0], bbox=[30, 2, 4, 4], area=16, iscrowd=1)
    c = check_annotation(ann, H, W)
    assert [p.kind for p in c.problems] == ["crowd_object"] and c.single_crowd
    m[20:24, 2:6] = True  # two components: a real crowd region
    ann = good(seg=masks_to_rles(m[None])[0], bbox=[2, 2, 32, 22], area=32, iscrowd=1)
    assert check_annotation(ann, H, W).problems == []


def test_document_and_reference_problems():
    assert document_problem({"images": [], "categories": []}) is None
    assert document_problem({"images": [], "categories": [], "annotations": {}}).message == (
        "'annotations' must be a list"
    )
    assert document_problem("x").kind == "malformed_json"
    assert reference_problem({"image_id": 1, "category_id": 1}, {1}, {1}) is None
    assert reference_problem({"image_id": [1], "category_id": 1}, {1}, {1}).kind == "malformed_entry"
    assert reference_problem({"image_id": "a", "category_id": [1]}, {"a"}, {1}).kind == "unknown_category"


def test_kinds_are_one_closed_set():
    assert LEFT_ALONE.issubset(KINDS)
    assert {k.severity for k in KINDS.values()} == {"error", "warning"}
    with pytest.raises(ValueError, match="unknown problem kind"):
        Problem("polygon with fewer than 3 points", "the loader's old name")
    with pytest.raises(ValueError, match="unknown problem kind"):
        DropReport().add("polygon with fewer than 3 points", 1)


# --------------------------------------------------------------------------------------------------
# One name per problem: the loader drops under the kind the doctor reports
# --------------------------------------------------------------------------------------------------
def _bad(**kw):
    """Annotation 2 of image 1, clean but for ``kw``."""
    return {**good(2, seg=[square(20, 12, 28, 20)], bbox=[20.0, 12.0, 8.0, 8.0]), **kw}


SHARED = {
    "polygon of 2 points": ("bad_polygon", _bad(segmentation=[[1, 1, 5, 5]], bbox=[1, 1, 4, 4])),
    "polygon of 7 numbers": ("bad_polygon", _bad(segmentation=[[1, 1, 5, 1, 5, 5, 9]])),
    "polygon part not numbers": (
        "malformed_segmentation",
        _bad(segmentation=[["a", "b", "c", "d", "e", "f"]]),
    ),
    "segmentation a string": ("malformed_segmentation", _bad(segmentation="garbage")),
    "RLE without size": ("malformed_segmentation", _bad(segmentation={"counts": "abc"})),
    "RLE without counts": ("malformed_segmentation", _bad(segmentation={"size": [H, W]})),
    "RLE of another size": ("rle_size_mismatch", _bad(segmentation={"size": [10, 10], "counts": [100]})),
    "polygon outside the image": ("empty_mask", _bad(segmentation=[square(60, 60, 70, 70)])),
    "polygon of collinear points": ("empty_mask", _bad(segmentation=[[1, 1, 5, 5, 9, 9]])),
    "box only, zero width": ("bad_box", _bad(segmentation=[], bbox=[3, 3, 0, 5])),
    "box only, outside the image": ("bad_box", _bad(segmentation=[], bbox=[60, 60, 5, 5])),
    "no segmentation, no box": ("bad_box", {k: v for k, v in _bad(segmentation=None).items() if k != "bbox"}),
    "unknown image": ("unknown_image", _bad(image_id=99)),
    "unknown category": ("unknown_category", _bad(category_id=42)),
    "no image_id": ("malformed_entry", {k: v for k, v in _bad().items() if k != "image_id"}),
}


@pytest.mark.parametrize("case", list(SHARED))
def test_loader_drop_reason_is_the_doctors_issue_kind(case, tmp_path, rgb):
    kind, bad = SHARED[case]
    p = write_coco(tmp_path, [("a.png", rgb())], [good(1), bad], [{"id": 1, "name": "a"}])
    ds = CocoDataset(p)
    assert dict(ds.dropped.by_reason) == {kind: [2]}
    assert len(ds[0].instances) == 1  # the good one is kept
    rep = check_dataset(p)
    errors = {(i.kind, i.ann_id) for i in rep.issues if i.severity == "error"}
    assert errors == {(kind, 2)}, rep.format()  # the one error the doctor finds has the loader's name
    # and the rule itself, when it is about the annotation alone, says the same
    if kind not in ("unknown_image", "unknown_category", "malformed_entry"):
        assert check_annotation(bad, H, W, decode=False).unusable.kind == kind
        assert check_annotation(bad, H, W).unusable.kind == kind


def test_a_flat_polygon_of_2_points_is_dropped_for_its_points(tmp_path, rgb):
    bad = _bad(segmentation=[1, 1, 5, 5])
    p = write_coco(tmp_path, [("a.png", rgb())], [good(1), bad], [{"id": 1, "name": "a"}])
    assert dict(CocoDataset(p).dropped.by_reason) == {"bad_polygon": [2]}
    # the doctor also says that the list is flat: two errors, the loader's among them
    errors = [i.kind for i in check_dataset(p).issues if i.severity == "error"]
    assert sorted(errors) == ["bad_polygon", "malformed_segmentation"]


def test_duplicate_and_malformed_records_have_one_name_too(tmp_path, rgb):
    anns = [good(1), good(1, seg=[square(20, 12, 28, 20)], bbox=[20, 12, 8, 8]), "not an annotation"]
    p = write_coco(tmp_path, [("a.png", rgb())], anns, [{"id": 1, "name": "a"}])
    ds = CocoDataset(p)
    assert dict(ds.dropped.by_reason) == {"duplicate_ann_id": [1], "malformed_entry": [None]}
    errors = {i.kind for i in check_dataset(p).issues if i.severity == "error"}
    assert errors == {"duplicate_ann_id", "malformed_entry"}
