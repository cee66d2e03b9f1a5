"""The dataset doctor: one broken dataset with every problem kind, the fix, the command, the real sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.cli import main
from segbench.data.coco import CocoDataset
from segbench.data.doctor import KINDS, LEFT_ALONE, check_dataset, check_split, fix_dataset
from segbench.types import SegbenchError, masks_to_rles
from tests.conftest import SHARED_DATA

H, W = 32, 48
MAX_DETS = 6  # image 1 keeps 6 usable objects, image 10 has 7


def square(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def ann(i, image_id=1, cat=1, seg=None, bbox=None, **kw):
    """A polygon annotation of ``seg`` (a square by default) with its true bbox and area."""
    a = {"id": i, "image_id": image_id, "category_id": cat, "iscrowd": 0}
    if seg is None:
        seg = [square(2, 2, 10, 10)]
    a["segmentation"] = seg
    if bbox is None and isinstance(seg, list) and seg:
        xy = np.asarray(seg[0], float).reshape(-1, 2)
        bbox = [xy[:, 0].min(), xy[:, 1].min(), np.ptp(xy[:, 0]), np.ptp(xy[:, 1])]
    a["bbox"] = [float(v) for v in bbox]
    a["area"] = float(a["bbox"][2] * a["bbox"][3])
    a.update(kw)
    return a


def noise(h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def write_broken(root: Path) -> Path:
    """One COCO split holding one instance of every problem kind (except malformed_json and all_crowd)."""
    img_dir, ann_dir = root / "images", root / "annotations"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for name in ("a.png", "wrong.png", "nosize.png", "x.png", "y.png", "abs.png", "crowded.png"):
        Image.fromarray(noise()).save(img_dir / name)
    Image.fromarray(noise(seed=1)).save(img_dir / "corrupt.png")
    data = (img_dir / "corrupt.png").read_bytes()
    (img_dir / "corrupt.png").write_bytes(data[: len(data) * 2 // 3])  # truncated: header intact

    def im(i, name, h=H, w=W):
        return {"id": i, "file_name": name, "height": h, "width": w}

    images = [
        im(1, "a.png"),
        im(2, "missing.png"),  # missing_image
        im(3, "corrupt.png"),  # unreadable_image
        im(4, "wrong.png", 40, 40),  # size_mismatch
        {"id": 5, "file_name": "nosize.png"},  # missing_size
        im(6, "x.png"),
        im(6, "y.png"),  # duplicate_image_id (two files: ambiguous)
        im(7, "a.png"),  # duplicate_file_name
        im(8, "../outside.png"),  # unsafe_file_name, no such file in the folder: dropped
        im(9, "/labeller/home/abs.png"),  # unsafe_file_name, abs.png is in the folder: renamed
        im(10, "crowded.png"),  # too_many_objects
        {"file_name": "no-id.png", "height": H, "width": W},  # malformed_entry
    ]
    cats = [
        {"id": 1, "name": "a"},
        {"id": 0, "name": "background"},  # category_id_zero
        {"id": 2, "name": "b"},
        {"id": 2, "name": "b-again"},  # duplicate_category_id
    ]
    crowd = np.zeros((H, W), bool)
    crowd[2:6, 30:34] = True
    anns = [
        ann(1),
        ann(1, seg=[square(12, 2, 20, 10)]),  # duplicate_ann_id
        ann(3, image_id=99),  # unknown_image
        ann(4, cat=42),  # unknown_category
        ann(5, cat=0, seg=[square(22, 2, 28, 8)]),
        ann(6, seg=[[1, 1, 5, 1]], bbox=[1, 1, 4, 1]),  # bad_polygon: 2 points
        ann(7, seg=[square(30, 12, 38, 18), [1, 2, 3]]),  # bad_polygon: odd part (dropped by fix)
        ann(8, seg={"size": [10, 10], "counts": [100]}, bbox=[0, 0, 10, 10]),  # rle_size_mismatch
        ann(9, seg="garbage", bbox=[0, 0, 4, 4]),  # malformed_segmentation
        {**ann(10, bbox=[1, 20, 6, 6]), "segmentation": []},  # no_segmentation (box only)
        ann(11, seg=[square(40, 20, 48, 30)], bbox=[40, 20, 12, 10]),  # box_outside_image
        ann(12, seg=[square(2, 20, 8, 28)], bbox=[2, 20, 0, 8]),  # bad_box: zero width
        ann(13, seg=[square(20, 20, 28, 28)], bbox=[0, 0, 5, 5]),  # box_mask_mismatch
        ann(14, seg=[square(60, 60, 70, 70)]),  # empty_mask (and a bbox outside the image)
        ann(15, seg=masks_to_rles(crowd[None])[0], bbox=[30, 2, 4, 4], iscrowd=1),  # crowd_object
        {k: v for k, v in ann(16, seg=[square(12, 12, 18, 18)]).items() if k != "area"},  # bad_area
        *[ann(100 + j, image_id=10, seg=[square(2 + 6 * j, 2, 6 + 6 * j, 6)]) for j in range(MAX_DETS + 1)],
        ann(21, image_id=6),  # of an ambiguous image id: dropped by fix
        ann(22, image_id=2),  # of the missing image: dropped by fix
    ]
    p = ann_dir / "instances_train.json"
    p.write_text(json.dumps({"info": {"x": 1}, "images": images, "annotations": anns, "categories": cats}))
    return p


#: kind -> {(image_id, ann_id)} expected in the broken set
EXPECTED = {
    "malformed_entry": {(None, None)},
    "unsafe_file_name": {(8, None), (9, None)},
    "missing_image": {(2, None)},
    "unreadable_image": {(3, None)},
    "size_mismatch": {(4, None)},
    "missing_size": {(5, None)},
    "duplicate_image_id": {(6, None)},
    "duplicate_file_name": {(7, None)},
    "duplicate_ann_id": {(1, 1)},
    "duplicate_category_id": {(None, None)},
    "category_id_zero": {(None, None)},
    "unknown_image": {(99, 3)},
    "unknown_category": {(1, 4)},
    "bad_polygon": {(1, 6), (1, 7)},
    "rle_size_mismatch": {(1, 8)},
    "malformed_segmentation": {(1, 9)},
    "no_segmentation": {(1, 10)},
    "bad_box": {(1, 12), (1, 14)},
    "box_outside_image": {(1, 11)},
    "box_mask_mismatch": {(1, 13)},
    "empty_mask": {(1, 14)},
    "bad_area": {(1, 16)},
    "crowd_object": {(1, 15)},
    "too_many_objects": {(10, None)},
}


@pytest.fixture
def broken(tmp_path) -> Path:
    return write_broken(tmp_path / "broken")


def test_every_kind_is_reported_with_its_ids(broken):
    with pytest.raises(SegbenchError):  # the loader refuses the file at its first problem
        CocoDataset(broken)
    rep = check_dataset(broken, max_dets=MAX_DETS)
    got = {k: {(i.image_id, i.ann_id) for i in v} for k, v in rep.by_kind().items()}
    assert got == EXPECTED
    assert set(EXPECTED) | {"malformed_json", "all_crowd"} == set(KINDS)  # every kind is tested
    by_kind = rep.by_kind()
    assert by_kind["missing_image"][0].file_name == "missing.png"
    assert "40x40" in by_kind["size_mismatch"][0].message and "48x32" in by_kind["size_mismatch"][0].message
    assert all(i.severity == KINDS[i.kind].severity for i in rep.issues)
    n_err = sum(len(v) for k, v in EXPECTED.items() if KINDS[k].severity == "error")
    assert (rep.errors, rep.warnings) == (n_err, sum(len(v) for v in EXPECTED.values()) - n_err)
    # errors come first in the grouping, and the text shows kinds, hints and ids
    sev = [KINDS[k].severity for k in by_kind]
    assert sev == sorted(sev)  # "error" < "warning"
    text = rep.format(max_examples=1)
    assert "ERROR   bad_box (2)" in text and "... and 1 more" in text
    assert "- image 99 ann 3: image_id 99 is not in 'images'" in text
    assert "fix: " + KINDS["missing_image"].hint in text
    js = json.loads(rep.to_json())
    assert js["errors"] == rep.errors and js["kinds"]["bad_polygon"]["count"] == 2


def test_read_images_false_checks_existence_but_not_pixels(broken):
    rep = check_dataset(broken, max_dets=MAX_DETS, read_images=False)
    kinds = rep.by_kind()
    assert "missing_image" in kinds and "size_mismatch" in kinds  # headers are still read
    assert "unreadable_image" not in kinds  # the truncated file is only found by decoding it


def test_fix_writes_a_clean_copy_and_a_log(broken):
    before = broken.read_bytes()
    rep = check_dataset(broken, max_dets=MAX_DETS)
    out, changes = fix_dataset(broken, rep)
    assert out == broken.with_name("instances_train.fixed.json")
    assert broken.read_bytes() == before  # the original is untouched
    log_lines = broken.with_name("instances_train.fixes.log").read_text().splitlines()
    assert log_lines[1:] == changes and len(changes) > 10
    again = check_dataset(out, max_dets=MAX_DETS)
    assert again.errors == 0, again.format()
    assert set(again.by_kind()) <= LEFT_ALONE

    fixed = json.loads(out.read_text())
    assert fixed["info"] == {"x": 1}
    images = {im["id"]: im for im in fixed["images"]}
    assert sorted(images) == [1, 4, 5, 7, 9, 10]  # missing, corrupt, ambiguous, unsafe, malformed dropped
    assert (images[4]["height"], images[4]["width"]) == (H, W)
    assert (images[5]["height"], images[5]["width"]) == (H, W)
    assert images[9]["file_name"] == "abs.png"
    assert [c["name"] for c in fixed["categories"]] == ["a", "background", "b"]
    anns = {a["id"]: a for a in fixed["annotations"]}
    assert len(anns) == len(fixed["annotations"])  # ids unique again
    assert not {3, 4, 6, 8, 9, 14, 21, 22} & set(anns)
    assert len(anns[7]["segmentation"]) == 1  # the odd part is gone
    assert anns[11]["bbox"] == [40, 20, 8, 10]  # clipped
    assert anns[12]["bbox"] == [2, 20, 6, 8] and anns[13]["bbox"] == [20, 20, 8, 8]  # from the mask
    assert anns[15]["iscrowd"] == 0
    assert anns[16]["area"] == 36
    renumbered = [a for a in fixed["annotations"] if a["id"] not in (1, 5, 7, 10, 11, 12, 13, 15, 16)]
    assert any(a["segmentation"] == [square(12, 2, 20, 10)] for a in renumbered)
    log = "\n".join(log_lines)
    assert "annotation 1 (annotations[1], image 1): id 1 -> " in log
    assert "dropped annotation 14 (annotations[13], image 1): the mask is empty" in log
    assert "note: category 0 'background' left alone" in log
    CocoDataset(out)  # and the loader takes it


def test_fix_refuses_to_overwrite_or_use_a_stale_report(broken):
    rep = check_dataset(broken, max_dets=MAX_DETS)
    with pytest.raises(SegbenchError, match="overwrite"):
        fix_dataset(broken, rep, out_file=broken)
    broken.write_text(broken.read_text() + " ")
    with pytest.raises(SegbenchError, match="changed since"):
        fix_dataset(broken, rep)


def test_check_split_checks_fixes_and_checks_the_fixed_file(broken):
    result = check_split(broken, fix=True, max_dets=MAX_DETS)
    assert result.report.errors > 0 and result.fixed_report is not None
    assert result.fixed_file == broken.with_name("instances_train.fixed.json")
    assert result.log_file == broken.with_name("instances_train.fixes.log") and result.log_file.is_file()
    assert (result.errors, result.warnings) == (0, result.fixed_report.warnings)  # what is left counts
    text = result.format(title="train", max_examples=1)
    assert text.startswith("[train] ") and "\n\n[train] fix: 27 change(s) -> " in text
    assert "[train fixed] " in text
    d = result.to_dict()
    assert set(d) == {"check", "fixed", "changes"} and d["changes"] == result.changes
    only = check_split(broken, max_dets=MAX_DETS)  # no fix asked: nothing written, the original counts
    assert only.fixed_report is None and set(only.to_dict()) == {"check"}
    assert only.errors == result.report.errors and "fix:" not in only.format(title="train").split("\n")[0]


def test_check_split_with_nothing_to_fix_writes_nothing(tmp_path):
    from tests.conftest import write_coco

    p = write_coco(
        tmp_path, [("a.png", noise())], [ann(1)], [{"id": 0, "name": "bg"}, {"id": 1, "name": "a"}]
    )
    result = check_split(p, fix=True)
    assert [i.kind for i in result.report.issues] == ["category_id_zero"]  # left alone by the fix
    assert result.fixed_file is None and not p.with_name("instances_train.fixed.json").exists()
    assert result.format(title="train").endswith(f"[train] fix: nothing to change ({p} is left as it is)")


def test_byte_order_mark_is_no_problem(tmp_path):
    from tests.conftest import write_coco

    p = write_coco(tmp_path, [("a.png", noise())], [ann(1)], [{"id": 1, "name": "a"}])
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    assert check_dataset(p).issues == []


def test_all_crowd_dataset(tmp_path):
    from tests.conftest import write_coco

    m = np.zeros((2, H, W), bool)
    m[0, 2:6, 2:6] = m[0, 20:24, 30:34] = True  # two components: a real crowd region shape
    m[1, 10:14, 10:14] = True
    rles = masks_to_rles(m)
    anns = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 1,
            "segmentation": r,
            "area": 16.0,
            "bbox": b,
        }
        for i, (r, b) in enumerate(zip(rles, [[2, 2, 32, 22], [10, 10, 4, 4]], strict=True))
    ]
    p = write_coco(tmp_path, [("a.png", noise())], anns, [{"id": 1, "name": "a"}])
    rep = check_dataset(p)
    assert [(i.kind, i.image_id) for i in rep.issues] == [("all_crowd", None)]  # no per-object noise
    out, _ = fix_dataset(p, rep)
    assert [a["iscrowd"] for a in json.loads(out.read_text())["annotations"]] == [0, 0]
    assert check_dataset(out).issues == []


def test_exif_rotated_image_accepts_either_size(tmp_path):
    from tests.conftest import write_coco

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the oriented image is 32 wide, 48 high
    p = write_coco(tmp_path, [("a.png", noise())], [ann(1)], [{"id": 1, "name": "a"}])
    Image.fromarray(noise()).save(tmp_path / "images" / "a.jpg", exif=exif)
    for h, w in ((H, W), (W, H)):
        doc = json.loads(p.read_text())
        doc["images"] = [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}]
        p.write_text(json.dumps(doc))
        assert check_dataset(p).issues == []
    doc["images"][0]["height"] = 40
    p.write_text(json.dumps(doc))
    assert [i.kind for i in check_dataset(p).issues] == ["size_mismatch"]


def test_not_json_is_one_error_and_cannot_be_fixed(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    rep = check_dataset(p, tmp_path)
    assert [i.kind for i in rep.issues] == ["malformed_json"] and rep.errors == 1
    with pytest.raises(SegbenchError, match="cannot fix"):
        fix_dataset(p, rep)


def test_clean_synthetic_dataset_reports_nothing(tmp_path, capsys):
    from segbench.data.synthetic import generate

    generate(tmp_path, num_train=4, num_val=2, image_size=64)
    for split in ("train", "val"):
        rep = check_dataset(tmp_path / "annotations" / f"instances_{split}.json")
        assert rep.issues == [] and rep.num_annotations > 0, rep.format()
    assert main(["data", "check", f"data.root={tmp_path}", "fix=true"]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "0 error(s), 0 warning(s) in 2 split(s)" in out
    assert not list((tmp_path / "annotations").glob("*.fixed.json"))  # nothing to fix: nothing written


def test_command_on_the_broken_set(broken, capsys):
    root = broken.parents[1]
    args = ["data", "check", f"data.root={root}", f"max_dets={MAX_DETS}", "max_examples=3"]
    assert main(args) == 1  # val is absent: skipped; train has errors
    out = capsys.readouterr().out
    assert "[train]" in out and "ERROR   missing_image (1)" in out and "WARNING too_many_objects (1)" in out
    assert "- image 2 'missing.png': not found" in out
    assert out.index("ERROR") < out.index("WARNING")
    assert "errors remain" in out
    report_file = root / "report.json"
    assert main([*args, "fix=true", f"out={report_file}"]) == 0  # status of the fixed file
    out = capsys.readouterr().out
    assert "[train fixed]" in out and "instances_train.fixes.log" in out
    saved = json.loads(report_file.read_text())
    assert saved["train"]["check"]["errors"] > 0 and saved["train"]["fixed"]["errors"] == 0
    assert main(["data", "check", f"data.root={root / 'nowhere'}"]) == 2  # a message, no traceback


@pytest.mark.parametrize("name", ["nuts", "dsb2018"])
def test_real_sets_have_no_errors(name):
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} is absent (the shared development data is not on this machine)")
    for split in ("train", "val"):
        rep = check_dataset(root / "annotations" / f"instances_{split}.json")
        assert rep.errors == 0, rep.format()
        # dsb2018 has up to 375 nuclei per image: more than the default cap of 100 detections
        assert set(rep.by_kind()) <= {"too_many_objects"}
        assert bool(rep.warnings) == (name == "dsb2018")
