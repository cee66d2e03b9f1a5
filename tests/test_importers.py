"""``segbench data import`` / ``data export``: each format built the way its tool writes it, known answers,
lossless round trips (import -> COCO -> export -> import, compared pixel for pixel), the log."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from segbench.cli import main
from segbench.data.annotations import annotation_mask
from segbench.data.coco import CocoDataset
from segbench.data.doctor import check_split
from segbench.data.exporters import export_dataset, mask_outlines
from segbench.data.importers import IMPORTERS, import_dataset
from segbench.data.importers._common import join_loops, polygon_rle, split_loops
from segbench.data.importers.cvat_xml import decode_cvat_rle
from segbench.types import SegbenchError

SHARED_NUTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuts"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def save_image(path: Path, h: int = 40, w: int = 50, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8) // 2 + value // 2).save(path)
    return path


def splits_of(root: Path) -> list[str]:
    return sorted(p.stem.removeprefix("instances_") for p in (root / "annotations").glob("instances_*.json"))


def objects(root: Path, split: str = "train") -> dict[str, list[tuple[str, bytes]]]:
    """``{image file stem: sorted [(class, mask bytes)]}`` of one split."""
    ds = CocoDataset(root / "annotations" / f"instances_{split}.json")
    names = {c["id"]: c["name"] for c in ds.categories}
    out = {}
    for i, im in enumerate(ds.images):
        h, w = ds.image_size(i)
        anns = ds.annotations(i)
        out[Path(im["file_name"]).stem] = sorted(
            (names[a["category_id"]], np.packbits(annotation_mask(a, h, w)).tobytes()) for a in anns
        )
    return out


def raw_annotations(root: Path, split: str = "train") -> list[dict]:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())["annotations"]


def assert_clean(root: Path) -> None:
    """``segbench data check`` finds no error, areas are true pixel counts, nothing is a crowd."""
    for split in splits_of(root):
        ann = root / "annotations" / f"instances_{split}.json"
        result = check_split(ann, root / "images")
        assert result.errors == 0, result.format(title=split)
        doc = json.loads(ann.read_text())
        sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
        for a in doc["annotations"]:
            assert a["iscrowd"] == 0
            m = annotation_mask(a, *sizes[a["image_id"]])
            assert a["area"] == m.sum() > 0
            assert a["bbox"] == [
                float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8))))
            ]


def log_text(root: Path, stem: str = "import_log") -> str:
    return (root / f"{stem}.txt").read_text()


def round_trip(src_root: Path, tmp: Path, fmt: str = "yolo") -> tuple[Path, Path]:
    """export ``src_root`` (a segbench dataset) to ``fmt`` and import it back; returns (export, re-import)."""
    splits = {
        s: (src_root / "annotations" / f"instances_{s}.json", src_root / "images")
        for s in splits_of(src_root)
    }
    exp = tmp / f"exported_{fmt}"
    export_dataset(fmt, splits, exp)
    back = tmp / f"back_{fmt}"
    import_dataset(fmt, exp, back)
    assert_clean(back)
    return exp, back


def b64_png(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def square(x: float, y: float, s: float) -> list[list[float]]:
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s]]


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------
def test_mask_outlines_draw_back_the_same_pixels():
    rng = np.random.default_rng(0)
    for _ in range(60):
        m = ndimage.binary_opening(rng.random((30, 37)) < 0.55)
        if not m.any():
            continue
        loops, holes = mask_outlines(m)
        filled = mask_utils.decode(polygon_rle(loops, 30, 37)).astype(bool)
        assert (filled == ndimage.binary_fill_holes(m, structure=np.ones((3, 3)))).all()
        assert holes == filled.sum() - m.sum()
        again = split_loops(join_loops(loops))  # one YOLO line and back
        assert (mask_utils.decode(polygon_rle(again, 30, 37)).astype(bool) == filled).all()


def ultralytics_merge(segments: list[list[float]]) -> list[float]:
    """Ultralytics' ``merge_multi_segment`` for two segments (the nearest points, each ring closed there)."""
    a, b = (np.asarray(s, float).reshape(-1, 2) for s in segments)
    d = ((a[:, None] - b[None]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    ra, rb = np.roll(a, -i, axis=0), np.roll(b, -j, axis=0)
    return np.concatenate([ra, ra[:1], rb, rb[:1]]).ravel().tolist()


def test_split_loops_undoes_ultralytics_joining():
    a, b = [0, 0, 4, 0, 4, 4, 0, 4], [10, 10, 14, 10, 14, 14]
    loops = split_loops(ultralytics_merge([a, b]))
    assert sorted(map(len, loops)) == [6, 8]
    assert split_loops([1, 1, 5, 1, 5, 5]) == [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]]


# --------------------------------------------------------------------------------------------------
# VIA
# --------------------------------------------------------------------------------------------------
def via_region(shape: dict, cls: str | None = "balloon") -> dict:
    return {"shape_attributes": shape, "region_attributes": {"name": cls} if cls else {}}


def via_entry(name: str, size: int, regions) -> tuple[str, dict]:
    return f"{name}{size}", {"filename": name, "size": size, "regions": regions, "file_attributes": {}}


def make_via(root: Path) -> Path:
    """The balloon layout: train/ and val/, each with images and via_region_data.json (VIA 2 lists)."""
    poly = {"name": "polygon", "all_points_x": [2, 12, 12, 2], "all_points_y": [2, 2, 12, 12]}
    circle = {"name": "circle", "cx": 30, "cy": 20, "r": 5}
    rect = {"name": "rect", "x": 20, "y": 30, "width": 8, "height": 6}
    ellipse = {"name": "ellipse", "cx": 40, "cy": 8, "rx": 6, "ry": 3, "theta": 0.5}
    train = dict(
        [
            via_entry("a.png", 100, [via_region(poly), via_region(circle, "kite"), via_region(rect, None)]),
            via_entry(
                "b.png", 200, [via_region(ellipse, "kite"), via_region({"name": "point", "cx": 3, "cy": 3})]
            ),
        ]
    )
    val = dict([via_entry("c.png", 300, [via_region(poly)])])
    for split, doc, names in (("train", train, ["a.png", "b.png"]), ("val", val, ["c.png"])):
        for n in names:
            save_image(root / split / n)
        (root / split / "via_region_data.json").write_text(json.dumps(doc))
    return root


def test_via_known_answers_and_splits(tmp_path):
    s = import_dataset("via", make_via(tmp_path / "balloon"), tmp_path / "out")
    assert s.splits == {
        "train": {"images": 2, "objects": 4, "empty_images": 0},
        "val": {"images": 1, "objects": 1, "empty_images": 0},
    }
    assert s.categories == ["balloon", "kite", "object"]  # sorted names; the region without a class: object
    anns = raw_annotations(tmp_path / "out")
    square_, circle, rect, ellipse = anns
    assert square_["area"] == 100 and square_["segmentation"] == [[2, 2, 12, 2, 12, 12, 2, 12]]
    assert abs(circle["area"] - math.pi * 25) / (math.pi * 25) < 0.05
    assert rect["area"] == 48 and rect["bbox"] == [20, 30, 8, 6]
    assert abs(ellipse["area"] - math.pi * 18) / (math.pi * 18) < 0.1
    text = log_text(tmp_path / "out")
    assert "train/via_region_data.json entry 'b.png200' region 1: no_area" in text
    assert "default_class" in text and "the source's own splits" in text
    assert_clean(tmp_path / "out")


def test_via1_dict_regions_and_via2_project_read_alike(tmp_path):
    save_image(tmp_path / "v1" / "a.png")
    save_image(tmp_path / "v2" / "a.png")
    poly = {"name": "polygon", "all_points_x": [2, 12, 12, 2], "all_points_y": [2, 2, 12, 12]}
    rect = {"name": "rect", "x": 20, "y": 20, "width": 5, "height": 5}
    v1 = dict([via_entry("a.png", 1, {"1": via_region(rect, "b"), "0": via_region(poly, "a")})])
    (tmp_path / "v1" / "via_region_data.json").write_text(json.dumps(v1))
    v2 = {
        "_via_settings": {"core": {"default_filepath": ""}},
        "_via_img_metadata": dict([via_entry("a.png", 1, [via_region(poly, "a"), via_region(rect, "b")])]),
        "_via_attributes": {"region": {"name": {"type": "text"}}},
    }
    (tmp_path / "v2" / "project.json").write_text(json.dumps(v2))
    import_dataset("via", tmp_path / "v1" / "via_region_data.json", tmp_path / "o1")
    import_dataset("via", tmp_path / "v2", tmp_path / "o2")
    assert objects(tmp_path / "o1") == objects(tmp_path / "o2")
    assert [a["area"] for a in raw_annotations(tmp_path / "o1")] == [100, 25]  # VIA 1 regions in key order


def test_via3_project(tmp_path):
    save_image(tmp_path / "a.png")
    doc = {
        "project": {"pname": "p", "vid_list": ["1"]},
        "config": {"file": {"loc_prefix": {"1": "", "2": "", "3": "", "4": ""}}},
        "attribute": {
            "1": {
                "aname": "class",
                "anchor_id": "FILE1_Z0_XY1",
                "type": 3,
                "options": {"0": "cat", "1": "dog"},
            }
        },
        "file": {"1": {"fid": "1", "fname": "a.png", "type": 2, "loc": 1, "src": ""}},
        "view": {"1": {"fid_list": ["1"]}},
        "metadata": {
            "1_a": {"vid": "1", "flg": 0, "z": [], "xy": [7, 2, 2, 12, 2, 12, 12, 2, 12], "av": {"1": "0"}},
            "1_b": {"vid": "1", "flg": 0, "z": [], "xy": [2, 20, 20, 5, 4], "av": {"1": "1"}},
            "1_c": {"vid": "1", "flg": 0, "z": [], "xy": [1, 3, 3], "av": {}},
        },
    }
    (tmp_path / "via3.json").write_text(json.dumps(doc))
    s = import_dataset("via", tmp_path / "via3.json", tmp_path / "out")
    assert s.categories == ["cat", "dog"] and s.objects == 2 and s.skipped == {"no_area": 1}
    assert [a["area"] for a in raw_annotations(tmp_path / "out")] == [100, 20]


def test_via_round_trip_through_yolo(tmp_path):
    """VIA has no multi-part objects or holes: every object comes back pixel for pixel."""
    import_dataset("via", make_via(tmp_path / "balloon"), tmp_path / "coco")
    _, back = round_trip(tmp_path / "coco", tmp_path)
    for split in ("train", "val"):
        assert objects(back, split) == objects(tmp_path / "coco", split)


# --------------------------------------------------------------------------------------------------
# LabelMe
# --------------------------------------------------------------------------------------------------
def labelme_doc(
    image_path: str, shapes: list[dict], h: int = 40, w: int = 50, data: str | None = None
) -> dict:
    """As labelme 5 saves it."""
    return {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": data,
        "imageHeight": h,
        "imageWidth": w,
    }


def shape(label: str, points, kind: str = "polygon", group_id=None, **extra) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": group_id,
        "description": "",
        "shape_type": kind,
        "flags": {},
        "mask": None,
        **extra,
    }


def make_labelme(root: Path) -> Path:
    save_image(root / "imgs" / "a.png")
    save_image(root / "b.png")
    box_mask = np.zeros((6, 8), bool)
    box_mask[1:5, 2:7] = True  # 20 pixels, at x 32..38, y 21..25 of the image
    a = [
        shape("cat", square(2, 2, 10)),
        shape("dog", [[20, 2], [30, 10]], "rectangle"),
        shape("dog", [[40, 10], [40, 15]], "circle"),
        shape("cat", square(2, 30, 4), group_id=1),  # one object of two parts
        shape("cat", square(10, 30, 5), group_id=1),
        shape("bird", [[30, 20], [37, 25]], "mask", mask=b64_png(box_mask)),
        shape("cat", [[1, 1], [3, 3]], "line"),
    ]
    (root / "a.json").write_text(
        json.dumps(labelme_doc("imgs\\a.png", a))
    )  # Windows path, as labelme writes it
    b = [shape("cat", square(5, 5, 4))]
    (root / "b.json").write_text(json.dumps(labelme_doc("b.png", b)))
    return root


def test_labelme_known_answers(tmp_path):
    s = import_dataset("labelme", make_labelme(tmp_path / "lm"), tmp_path / "out")
    assert s.categories == ["bird", "cat", "dog"] and s.objects == 6
    anns = raw_annotations(tmp_path / "out")
    sq, rect, circle, parts, mask, sq2 = anns
    assert sq["area"] == 100 and rect["area"] == 80
    assert abs(circle["area"] - math.pi * 25) / (math.pi * 25) < 0.05
    assert len(parts["segmentation"]) == 2 and parts["area"] == 16 + 25
    assert isinstance(mask["segmentation"], dict) and mask["area"] == 20 and mask["bbox"] == [32, 21, 5, 4]
    assert sq2["area"] == 16
    assert "a.json shape 6 ('cat'): no_area" in log_text(tmp_path / "out")
    assert (tmp_path / "out" / "images" / "imgs" / "a.png").is_file()
    assert_clean(tmp_path / "out")


def test_labelme_image_data_and_size_mismatch(tmp_path):
    src = tmp_path / "lm"
    src.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    (src / "a.json").write_text(
        json.dumps(labelme_doc("gone/a.png", [shape("x", square(1, 1, 5))], data=data))
    )
    save_image(src / "b.png", 30, 30)
    (src / "b.json").write_text(json.dumps(labelme_doc("b.png", [shape("x", square(1, 1, 5))])))  # says 50x40
    s = import_dataset("labelme", src, tmp_path / "out")
    assert s.images == 1 and s.skipped == {"size_mismatch": 1}
    assert (tmp_path / "out" / "images" / "gone" / "a.png").is_file()
    assert (
        "b.json: size_mismatch: the annotations are for a 50x40 (WxH) image but b.png is 30x30"
        in log_text(tmp_path / "out")
    )


def test_labelme_round_trip_through_yolo_keeps_parts(tmp_path):
    import_dataset("labelme", make_labelme(tmp_path / "lm"), tmp_path / "coco")
    exp, back = round_trip(tmp_path / "coco", tmp_path)
    assert objects(back) == objects(tmp_path / "coco")
    multi = [
        a
        for a in raw_annotations(back)
        if isinstance(a["segmentation"], list) and len(a["segmentation"]) == 2
    ]
    assert len(multi) == 1  # the group came back as one object of two parts
    assert "parts_joined" in log_text(exp, "export_log")


# --------------------------------------------------------------------------------------------------
# YOLO
# --------------------------------------------------------------------------------------------------
def make_yolo(root: Path, names="dict") -> Path:
    """images/<split>/ + labels/<split>/ + data.yaml, normalised coordinates as Ultralytics writes them."""
    w, h = 50, 40
    norm = lambda pts: " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in pts)  # noqa: E731
    save_image(root / "images" / "train" / "a.png")
    save_image(root / "images" / "train" / "b.png")
    save_image(root / "images" / "val" / "c.png")
    merged = ultralytics_merge([sum(square(2, 25, 5), []), sum(square(20, 25, 6), [])])
    lines_a = [
        f"0 {norm(square(2, 2, 10))}",
        f"1 {norm([(30, 5), (45, 5), (40, 15)])}",
        "0 " + " ".join(f"{v / (w if k % 2 == 0 else h):.6f}" for k, v in enumerate(merged)),
        "1 0.5 0.5 0.2 0.2",  # a detection box
    ]
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("\n".join(lines_a) + "\n")
    (root / "labels" / "train" / "b.txt").write_text("")  # a background image
    (root / "labels" / "val" / "c.txt").write_text(f"1 {norm(square(10, 10, 8))}\n")
    names_yaml = "names:\n  0: person\n  1: car\n" if names == "dict" else "names: [person, car]\n"
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\n{names_yaml}")
    return root


@pytest.mark.parametrize("names", ["dict", "list"])
def test_yolo_known_answers(tmp_path, names):
    s = import_dataset("yolo", make_yolo(tmp_path / "y", names), tmp_path / "out")
    assert s.categories == ["person", "car"]
    assert s.splits["train"] == {"images": 2, "objects": 3, "empty_images": 1}
    assert s.skipped == {"box_only": 1}
    sq, tri, parts = raw_annotations(tmp_path / "out")
    assert sq["area"] == 100 and sq["category_id"] == 1 and tri["category_id"] == 2
    assert (
        len(parts["segmentation"]) == 2 and parts["area"] == 25 + 36
    )  # Ultralytics' merged line, split again
    assert "a.txt line 4 (class 1): box_only" in log_text(tmp_path / "out")
    assert_clean(tmp_path / "out")


def test_yolo_boxes_mask_imports_rectangles(tmp_path):
    s = import_dataset("yolo", make_yolo(tmp_path / "y"), tmp_path / "out", boxes="mask")
    assert s.skipped == {} and s.splits["train"]["objects"] == 4
    assert raw_annotations(tmp_path / "out")[3]["area"] == 10 * 8


def test_yolo_round_trip(tmp_path):
    import_dataset("yolo", make_yolo(tmp_path / "y"), tmp_path / "coco")
    exp, back = round_trip(tmp_path / "coco", tmp_path)
    for split in ("train", "val"):
        assert objects(back, split) == objects(tmp_path / "coco", split)
    assert (exp / "labels" / "train" / "b.txt").read_text() == ""  # the background image stays one


# --------------------------------------------------------------------------------------------------
# CVAT for images 1.1
# --------------------------------------------------------------------------------------------------
def cvat_rle(mask: np.ndarray) -> str:
    """CVAT's mask RLE (as its exporter writes it): runs of 0s and 1s, 0s first, row-major."""
    flat = mask.astype(np.uint8).ravel()
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    return ", ".join(map(str, runs))


RING = np.pad(np.ones((8, 8), bool), 0)
RING[3:5, 3:5] = False  # an 8x8 square with a 2x2 hole: 60 pixels


def make_cvat(root: Path, *, labels=("car", "person", "tree")) -> Path:
    save_image(root / "images" / "a.png")
    save_image(root / "images" / "sub" / "b.png")
    label_xml = "".join(
        f"<label><name>{n}</name><color>#ff0000</color><type>any</type><attributes/></label>" for n in labels
    )
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><id>1</id><name>t</name><size>2</size><labels>{label_xml}</labels></task></meta>
  <image id="0" name="a.png" width="50" height="40">
    <polygon label="car" source="manual" occluded="0" points="2.00,2.00;12.00,2.00;12.00,12.00;2.00,12.00" z_order="0"/>
    <box label="person" source="manual" occluded="0" xtl="20.00" ytl="2.00" xbr="30.00" ybr="10.00" z_order="0"/>
    <mask label="tree" source="manual" occluded="0" rle="{cvat_rle(RING)}" left="30" top="20" width="8" height="8" z_order="0"/>
    <polygon label="car" source="manual" occluded="0" points="2,30;6,30;6,34;2,34" z_order="0" group_id="3"/>
    <polygon label="car" source="manual" occluded="0" points="10,30;13,30;13,34;10,34" z_order="0" group_id="3"/>
    <polyline label="car" source="manual" occluded="0" points="1,1;5,5" z_order="0"/>
    <polygon label="boat" source="manual" occluded="0" points="1,1;5,1;5,5" z_order="0"/>
    <tag label="car" source="manual"/>
  </image>
  <image id="1" name="sub/b.png" width="50" height="40">
    <box label="car" source="manual" occluded="0" xtl="5" ytl="5" xbr="15" ybr="9" rotation="90" z_order="0"/>
  </image>
</annotations>
"""
    (root / "annotations.xml").write_text(xml)
    return root


def test_decode_cvat_rle_exact_pixels():
    assert (decode_cvat_rle([int(v) for v in cvat_rle(RING).split(", ")], 8, 8) == RING).all()


def test_cvat_known_answers(tmp_path):
    s = import_dataset("cvat_xml", make_cvat(tmp_path / "cvat"), tmp_path / "out")
    assert s.categories == ["car", "person", "tree"]  # the order of <labels>
    assert s.skipped == {"no_area": 1, "unknown_label": 1}
    poly, box, ring, parts, rotated = raw_annotations(tmp_path / "out")
    assert poly["area"] == 100 and box["area"] == 80
    expected = np.zeros((40, 50), bool)
    expected[20:28, 30:38] = RING
    assert (annotation_mask(ring, 40, 50) == expected).all() and ring["area"] == 60
    assert isinstance(ring["segmentation"], dict)
    assert len(parts["segmentation"]) == 2 and parts["area"] == 16 + 12
    assert rotated["bbox"] == [8, 2, 4, 10]  # the 10x4 box turned by 90 degrees about its centre
    text = log_text(tmp_path / "out")
    assert (
        "<polygon> 6 ('boat'): unknown_label: class 'boat' is not one of the classes (car, person, tree)"
        in text
    )
    assert_clean(tmp_path / "out")


def test_cvat_round_trip_hole_is_lost_and_logged(tmp_path):
    import_dataset("cvat_xml", make_cvat(tmp_path / "cvat"), tmp_path / "coco")
    exp, back = round_trip(tmp_path / "coco", tmp_path)
    before, after = objects(tmp_path / "coco"), objects(back)
    assert after["b"] == before["b"]
    filled = np.zeros((40, 50), bool)
    filled[20:28, 30:38] = True  # YOLO has no holes: the ring comes back filled
    expected = [o for o in before["a"] if o[0] != "tree"] + [("tree", np.packbits(filled).tobytes())]
    assert after["a"] == sorted(expected)  # every shape without a hole: pixel for pixel
    assert "hole_lost: 4 px of holes filled" in log_text(exp, "export_log")


# --------------------------------------------------------------------------------------------------
# instance masks
# --------------------------------------------------------------------------------------------------
def make_masks(root: Path, *, classes: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """images/ + masks/ instance-id PNGs (8- and 16-bit) and a TIFF; an object with a hole and one of two
    parts."""
    ids = {}
    a = np.zeros((40, 50), np.uint16)
    a[5:15, 5:15] = 1
    a[8:12, 8:12] = 0  # object 1 has a hole: 100 - 16 = 84 px
    a[20:25, 2:6] = 2
    a[20:25, 30:36] = 2  # object 2: two parts, 20 + 30 px
    a[30:38, 40:48] = 300  # a 16-bit id
    ids["a"] = a
    b = np.zeros((40, 50), np.uint8)
    b[2:6, 2:9] = 1
    ids["b"] = b
    save_image(root / "images" / "a.png")
    save_image(root / "images" / "b.jpg")
    (root / "masks").mkdir(parents=True)
    Image.fromarray(a).save(root / "masks" / "a.png")
    import tifffile

    tifffile.imwrite(root / "masks" / "b_mask.tif", b)
    if classes:
        (root / "classes.json").write_text(json.dumps({"1": "cell", "2": "debris", "300": "cell"}))
    return root, ids


def test_masks_known_answers(tmp_path):
    src, ids = make_masks(tmp_path / "m")
    s = import_dataset("masks", src, tmp_path / "out")
    assert s.categories == ["cell", "debris"] and s.objects == 4
    hole, two, big, b1 = raw_annotations(tmp_path / "out")
    assert hole["area"] == 84 and two["area"] == 50 and big["area"] == 64 and b1["area"] == 28
    assert (annotation_mask(hole, 40, 50) == (ids["a"] == 1)).all()
    assert (annotation_mask(two, 40, 50) == (ids["a"] == 2)).all()
    assert two["category_id"] == 2
    assert_clean(tmp_path / "out")


def test_masks_penn_fudan_and_dsb_layouts(tmp_path):
    pf = tmp_path / "PennFudanPed"
    save_image(pf / "PNGImages" / "FudanPed00001.png")
    m = np.zeros((40, 50), np.uint8)
    m[5:30, 5:15], m[5:30, 20:28] = 1, 2
    p = Image.fromarray(m, mode="L").convert("P")  # PedMasks are palette PNGs of instance ids
    (pf / "PedMasks").mkdir()
    p.save(pf / "PedMasks" / "FudanPed00001_mask.png")
    s = import_dataset("masks", pf, tmp_path / "pf_out", default_class="person")
    assert s.categories == ["person"] and [a["area"] for a in raw_annotations(tmp_path / "pf_out")] == [
        250,
        200,
    ]
    dsb = tmp_path / "stage1_train" / "abc"
    save_image(dsb / "images" / "abc.png")
    (dsb / "masks").mkdir()
    for k, (y, x) in enumerate([(2, 2), (20, 30)]):
        one = np.zeros((40, 50), np.uint8)
        one[y : y + 5, x : x + 5] = 255
        Image.fromarray(one).save(dsb / "masks" / f"m{k}.png")
    s = import_dataset("masks", tmp_path / "stage1_train", tmp_path / "dsb_out")
    assert s.objects == 2 and s.categories == ["object"]


def test_masks_round_trips(tmp_path):
    src, _ = make_masks(tmp_path / "m")
    import_dataset("masks", src, tmp_path / "coco")
    before = objects(tmp_path / "coco")
    _, back_masks = round_trip(tmp_path / "coco", tmp_path, "masks")
    assert objects(back_masks) == before  # holes, parts and classes survive
    exp, back_yolo = round_trip(tmp_path / "coco", tmp_path, "yolo")
    after = objects(back_yolo)
    assert after["b"] == before["b"]
    holed = annotation_mask(next(a for a in raw_annotations(tmp_path / "coco") if a["area"] == 84), 40, 50)
    filled = ndimage.binary_fill_holes(holed)
    expected = [o for o in before["a"] if o[1] != np.packbits(holed).tobytes()]
    assert after["a"] == sorted([*expected, ("cell", np.packbits(filled).tobytes())])  # the rest: exact
    assert sorted(a["area"] for a in raw_annotations(back_yolo) if a["image_id"] == 1) == [50, 64, 100]
    assert "hole_lost: 16 px of holes filled" in log_text(exp, "export_log")


# --------------------------------------------------------------------------------------------------
# rules shared by all formats
# --------------------------------------------------------------------------------------------------
BUILDERS = {
    "via": lambda p: make_via(p),
    "labelme": lambda p: make_labelme(p),
    "yolo": lambda p: make_yolo(p),
    "cvat_xml": lambda p: make_cvat(p),
    "masks": lambda p: make_masks(p)[0],
}


@pytest.mark.parametrize("fmt", sorted(IMPORTERS))
def test_every_format_writes_a_clean_dataset_without_crowds(tmp_path, fmt):
    s = import_dataset(fmt, BUILDERS[fmt](tmp_path / "src"), tmp_path / "out")
    assert s.objects > 0 and (tmp_path / "out" / "import_log.json").is_file()
    doc = json.loads((tmp_path / "out" / "import_log.json").read_text())
    assert doc["format"] == fmt and sum(doc["skipped_by_reason"].values()) == len(doc["skipped"])
    assert all({"file", "object", "reason", "fix"} <= e.keys() for e in doc["skipped"])
    assert_clean(tmp_path / "out")


def test_val_fraction_moves_images_and_is_said(tmp_path):
    src = tmp_path / "lm"
    for k in range(10):
        save_image(src / f"i{k}.png")
        (src / f"i{k}.json").write_text(json.dumps(labelme_doc(f"i{k}.png", [shape("x", square(1, 1, 5))])))
    s = import_dataset("labelme", src, tmp_path / "o1", val_fraction=0.2, seed=1)
    assert s.splits["train"]["images"] == 8 and s.splits["val"]["images"] == 2
    assert "2 of 10 train images moved to val" in s.split_rule
    again = import_dataset("labelme", src, tmp_path / "o2", val_fraction=0.2, seed=1)
    assert objects(tmp_path / "o1", "val").keys() == objects(tmp_path / "o2", "val").keys()  # deterministic
    s = import_dataset("labelme", src, tmp_path / "o3")
    assert list(s.splits) == ["train"] and "val_fraction=0" in log_text(tmp_path / "o3")
    assert again.splits == import_dataset("labelme", src, tmp_path / "o4", val_fraction=0.2, seed=1).splits


def test_classes_option_fixes_ids_and_skips_the_rest(tmp_path):
    s = import_dataset("labelme", make_labelme(tmp_path / "lm"), tmp_path / "out", classes=["dog", "cat"])
    assert s.categories == ["dog", "cat"] and s.skipped["unknown_label"] == 1  # the bird
    cats = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())["categories"]
    assert [(c["id"], c["name"]) for c in cats] == [(1, "dog"), (2, "cat")]


def test_out_must_be_new_or_overwritten(tmp_path):
    src = make_labelme(tmp_path / "lm")
    import_dataset("labelme", src, tmp_path / "out")
    with pytest.raises(SegbenchError, match="overwrite=true"):
        import_dataset("labelme", src, tmp_path / "out")
    import_dataset("labelme", src, tmp_path / "out", overwrite=True)
    with pytest.raises(SegbenchError, match="holds the source"):
        import_dataset("labelme", src, tmp_path, overwrite=True)


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_images_can_be_linked_instead_of_copied(tmp_path, link):
    src = make_labelme(tmp_path / "lm")
    import_dataset("labelme", src, tmp_path / "out", link=link)
    dest = tmp_path / "out" / "images" / "b.png"
    if link == "symlink":
        assert dest.is_symlink() and dest.resolve() == (src / "b.png").resolve()
    else:
        assert dest.stat().st_ino == (src / "b.png").stat().st_ino
    assert_clean(tmp_path / "out")


def test_polygon_partly_outside_is_clipped_and_noted(tmp_path):
    src = tmp_path / "lm"
    save_image(src / "a.png")
    shapes = [shape("x", square(45, 35, 10)), shape("x", square(60, 60, 5))]
    (src / "a.json").write_text(json.dumps(labelme_doc("a.png", shapes)))
    s = import_dataset("labelme", src, tmp_path / "out")
    assert s.notes["clipped"] == 1 and s.skipped == {"outside_image": 1}
    assert raw_annotations(tmp_path / "out")[0]["area"] == 25


def test_cli_import_then_export(tmp_path, capsys):
    src = make_labelme(tmp_path / "lm")
    out = tmp_path / "coco"
    assert main(["data", "import", "format=labelme", f"in={src}", f"out={out}"]) == 0
    text = capsys.readouterr().out
    assert "train: 2 images" in text and "imported 6 objects" in text
    assert main(["data", "check", f"data.root={out}"]) == 0
    assert main(["data", "export", "format=yolo", f"data.root={out}", f"out={tmp_path / 'y'}"]) == 0
    assert "exported 6 objects" in capsys.readouterr().out
    assert (tmp_path / "y" / "data.yaml").is_file()


@pytest.mark.skipif(not SHARED_NUTS.is_dir(), reason="shared/data/nuts is not here")
def test_nuts_export_and_import_back(tmp_path):
    """A real labelme-made dataset (165 polygons of float coordinates) survives YOLO pixel for pixel."""
    splits = {
        s: (SHARED_NUTS / "annotations" / f"instances_{s}.json", SHARED_NUTS / "images")
        for s in ("train", "val")
    }
    summary = export_dataset("yolo", splits, tmp_path / "y")
    assert summary.objects == 165 and not summary.skipped
    import_dataset("yolo", tmp_path / "y", tmp_path / "back")
    assert_clean(tmp_path / "back")
    for split in ("train", "val"):
        assert objects(tmp_path / "back", split) == objects(SHARED_NUTS, split)
