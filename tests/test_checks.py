"""The dataset doctor: one broken dataset with every problem kind, the fix, the command, the real sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.cli import main
from segbench.data.coco import CocoDataset
from segbench.data.doctor import CROSS_SPLIT, KINDS, LEFT_ALONE, check_dataset, check_split, fix_dataset
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
    if isinstance(seg, list) and seg and isinstance(seg[0], list) and len(seg[0]) >= 6:  # the polygon's area
        x, y = np.asarray(seg[0][0::2], float), np.asarray(seg[0][1::2], float)
        a["area"] = float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    else:
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
    for sub in ("sub", "elsewhere", "d1", "d2"):
        (img_dir / sub).mkdir()
    Image.fromarray(noise(seed=2)).save(img_dir / "sub" / "win.png")
    Image.fromarray(noise(seed=3)).save(img_dir / "elsewhere" / "moved.png")
    Image.fromarray(noise(seed=4)).save(img_dir / "d1" / "twin.png")
    Image.fromarray(noise(seed=5)).save(img_dir / "d2" / "twin.png")
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
        im(11, "sub\\win.png"),  # indirect_file_name: Windows backslashes (fix rewrites it)
        im(12, "moved.png"),  # missing_image, one file of that base name elsewhere: recovered by fix
        im(13, "twin.png"),  # missing_image, two files of that base name: listed, dropped by fix
        {"file_name": "no-id.png", "height": H, "width": W},  # malformed_entry
    ]
    cats = [
        {"id": 1, "name": "a"},
        {"id": 0, "name": "background"},  # category_id_zero
        {"id": 2, "name": "b"},
        {"id": 2, "name": "b-again"},  # duplicate_category_id
        {"id": 3, "name": "a"},  # duplicate_category_name (merged into 1 by fix); 'b' is unused_category
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
        ann(17, image_id=7, seg=[square(30, 20, 38, 28)], area=0.03),  # area_mismatch (a normalised area)
        ann(18, image_id=7, cat=3, seg=[square(12, 20, 18, 26)]),  # of the second 'a' category
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
    "missing_image": {(2, None), (12, None), (13, None)},
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
    "indirect_file_name": {(11, None)},
    "unused_category": {(None, None)},
    "duplicate_category_name": {(None, None)},
    "area_mismatch": {(7, 17)},
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
    # every kind is tested: here, or (malformed_json, all_crowd) below, the cross-split kinds in
    # tests/test_leakage.py and the loader's untrained_category in tests/test_datamodule.py
    assert set(EXPECTED) | {"malformed_json", "all_crowd", "untrained_category"} | CROSS_SPLIT == set(KINDS)
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
    # missing, corrupt, ambiguous, unsafe, malformed dropped; 12 (moved) recovered, 11 renamed
    assert sorted(images) == [1, 4, 5, 7, 9, 10, 11, 12]
    assert images[11]["file_name"] == "sub/win.png" and images[12]["file_name"] == "elsewhere/moved.png"
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
    # 27 changes + 5 of this session's checks: 2 file names rewritten (11 renamed, 12 recovered), the
    # ambiguous 13 dropped, ann 17's area, category 3 merged into 1
    assert text.startswith("[train] ") and "\n\n[train] fix: 32 change(s) -> " in text
    assert (
        "[train] fix: images: 2 recovered (file found, file_name rewritten), 1 file_name(s) rewritten" in text
    )
    assert "7 dropped; annotations: 8 dropped" in text
    assert result.to_dict()["fix_summary"] == {
        "recovered_images": 2,
        "renamed_images": 1,
        "dropped_images": 7,
        "dropped_annotations": 8,
    }
    assert "[train fixed] " in text
    d = result.to_dict()
    assert set(d) == {"check", "fixed", "changes", "fix_summary"} and d["changes"] == result.changes
    only = check_split(broken, max_dets=MAX_DETS)  # no fix asked: nothing written, the original counts
    assert only.fixed_report is None and set(only.to_dict()) == {"check"}
    assert only.errors == result.report.errors and "fix:" not in only.format(title="train").split("\n")[0]


def test_check_split_with_nothing_to_fix_writes_nothing(tmp_path):
    from tests.conftest import write_coco

    p = write_coco(
        tmp_path, [("a.png", noise())], [ann(1)], [{"id": 0, "name": "bg"}, {"id": 1, "name": "a"}]
    )
    result = check_split(p, fix=True)
    # left alone by the fix: category 0 'bg' has no annotation
    assert [i.kind for i in result.report.issues] == ["category_id_zero", "unused_category"]
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
    assert "[train]" in out and "ERROR   missing_image (3)" in out and "WARNING too_many_objects (1)" in out
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


# --------------------------------------------------------------------------------------------------
# The doctor repairs instead of dropping (issue 13)
# --------------------------------------------------------------------------------------------------
def _one_image(tmp_path, file_name, stored: list[str], **kw):
    """A split whose one image is named ``file_name`` in the JSON and stored at ``images/<stored[k]>``."""
    from tests.conftest import write_coco

    entries = [{"id": 1, "file_name": file_name, "height": H, "width": W}]
    p = write_coco(
        tmp_path,
        [(s, noise(seed=k)) for k, s in enumerate(stored)],
        [ann(1)],
        kw.get("cats", [{"id": 1, "name": "a"}]),
        image_entries=entries,
    )
    return p


def test_missing_image_found_by_base_name_is_recovered(tmp_path, capsys):
    p = _one_image(tmp_path, "a.png", ["2024/batch1/a.png"])
    rep = check_dataset(p)
    (issue,) = rep.issues
    assert issue.kind == "missing_image"
    assert issue.message.endswith("found by its base name: '2024/batch1/a.png' (fix=true rewrites file_name)")
    assert main(["data", "check", f"data.root={tmp_path}", "fix=true"]) == 0  # the fixed file has no error
    out = capsys.readouterr().out
    assert "[train] fix: images: 1 recovered (file found, file_name rewritten)" in out and "0 dropped" in out
    fixed = p.with_name("instances_train.fixed.json")
    assert json.loads(fixed.read_text())["images"][0]["file_name"] == "2024/batch1/a.png"
    log = p.with_name("instances_train.fixes.log").read_text()
    assert "images: 1 recovered" in log.splitlines()[0]
    assert (
        "image 1 'a.png': file_name -> '2024/batch1/a.png' (file not found; the one file of its base name"
        in log
    )
    assert CocoDataset(fixed)[0].image.shape == (H, W, 3)


def test_base_name_matched_without_case(tmp_path):
    p = _one_image(tmp_path, "IMG_0001.JPG", ["export/img_0001.jpg"])
    out, changes = fix_dataset(p, check_dataset(p))
    assert json.loads(out.read_text())["images"][0]["file_name"] == "export/img_0001.jpg"
    assert changes.recovered == 1 and changes.dropped_images == 0


def test_several_candidates_are_listed_not_guessed(tmp_path):
    p = _one_image(tmp_path, "a.png", ["d1/a.png", "d2/a.png"])
    rep = check_dataset(p)
    (issue,) = rep.issues
    assert issue.kind == "missing_image"
    assert "2 files of its base name are in the image folder: 'd1/a.png', 'd2/a.png'" in issue.message
    assert "does not guess" in issue.message
    out, changes = fix_dataset(p, rep)
    assert json.loads(out.read_text())["images"] == []
    assert (changes.recovered, changes.dropped_images, changes.dropped_annotations) == (0, 1, 1)
    assert "dropped image 1 'a.png' and its annotations: file not found" in changes


def test_unsafe_name_with_several_candidates_is_dropped(tmp_path):
    p = _one_image(tmp_path, "/home/labeller/a.png", ["d1/a.png", "d2/a.png"])
    (issue,) = check_dataset(p).issues
    assert issue.kind == "unsafe_file_name" and "2 files of its base name" in issue.message


def test_duplicate_category_names_are_merged(tmp_path):
    from tests.conftest import write_coco

    cats = [{"id": 1, "name": "cell"}, {"id": 5, "name": "cell"}]
    p = write_coco(tmp_path, [("a.png", noise())], [ann(1), ann(2, cat=5, seg=[square(20, 2, 28, 10)])], cats)
    rep = check_dataset(p)
    assert [(i.kind, i.message) for i in rep.issues] == [
        (
            "duplicate_category_name",
            "category name 'cell' has the ids [1, 5]: two classes for one thing "
            "(fix=true merges them into 1)",
        )
    ]
    out, changes = fix_dataset(p, rep)
    fixed = json.loads(out.read_text())
    assert fixed["categories"] == [{"id": 1, "name": "cell"}]
    assert [a["category_id"] for a in fixed["annotations"]] == [1, 1]
    assert "merged category 5 'cell' into 1 (the same name): 1 annotation(s) now of category 1" in changes
    assert check_dataset(out).issues == []


def test_area_far_from_the_mask_is_repaired(tmp_path):
    from tests.conftest import write_coco

    anns = [ann(1, area=0.02), ann(2, seg=[square(20, 2, 28, 10)], area=70.0)]  # 0.02: normalised; 70 ~ 64
    p = write_coco(tmp_path, [("a.png", noise())], anns, [{"id": 1, "name": "a"}])
    rep = check_dataset(p)
    assert [(i.kind, i.ann_id, i.message) for i in rep.issues] == [
        ("area_mismatch", 1, "area is 0.02 but the mask has 64 pixels")
    ]
    out, _ = fix_dataset(p, rep)
    assert [a["area"] for a in json.loads(out.read_text())["annotations"]] == [64.0, 70.0]
