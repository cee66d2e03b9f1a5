"""Bad inputs for ``segbench data import`` / ``data export`` (issue 13, point 5), run through the CLI.

Each case builds one broken export in ``tmp_path`` and runs ``segbench.cli.main``. Exit 2: stopped with one
``segbench: error:`` line naming the file and the fix; exit 0: the bad item was skipped, and the log
(``out/import_log.txt``) names the file, the object and the fix. Never a traceback.

| case                         | input                                                  | expected                                     |
|------------------------------|--------------------------------------------------------|----------------------------------------------|
| via/truncated_json           | via_region_data.json cut short                         | 2: file, "not valid JSON", re-export         |
| via/empty_file               | an empty via_region_data.json                          | 2: file, "not valid JSON"                    |
| via/points_as_strings        | all_points_x: ["2", "12", ...]                         | 0: region 1 skipped, "must be numbers"       |
| via/missing_image            | an entry whose image is not there                      | 0: entry skipped, missing_image, images=DIR  |
| via/outside_image            | a polygon entirely outside the image                   | 0: region skipped, outside_image             |
| via/nothing_usable           | the only image missing                                 | 2: "nothing usable", the file, the log       |
| labelme/one_truncated        | one of two JSONs cut short                             | 0: that file skipped, the other imported     |
| labelme/points_as_strings    | points [["1", "2"], ...]                               | 0: shape 0 skipped, "must be numbers"        |
| labelme/size_mismatch        | imageHeight/Width 100x100, the file is 50x40           | 0: image skipped, both sizes                 |
| labelme/missing_image        | imagePath gone, imageData null                         | 0: missing_image with the path               |
| labelme/empty_shapes         | a polygon of 3 collinear points, one of no point       | 0: empty_mask, bad_polygon                   |
| labelme/unknown_label        | classes=[cat]: a 'dog' shape                           | 0: unknown_label, the class list, the fix    |
| yolo/class_beyond_names      | class 5 with names [a, b]                              | 0: line 2 skipped, "0..1", the fix           |
| yolo/bad_yaml                | data.yaml that is not YAML                             | 2: data.yaml, "not valid YAML"               |
| yolo/empty_yaml              | an empty data.yaml                                     | 2: data.yaml, what it must hold              |
| yolo/text_coordinates        | "0 a b c d e f"                                        | 0: line 1 skipped, "'a' is not a number"     |
| yolo/missing_images          | train: images/nope                                     | 2: "nothing usable", the path                |
| cvat/truncated_xml           | annotations.xml cut short                              | 2: file, "not valid XML", line, re-export    |
| cvat/empty_file              | an empty annotations.xml                               | 2: file, "not valid XML"                     |
| cvat/unknown_label           | a polygon of label 'boat' not in <labels>              | 0: unknown_label with the labels             |
| cvat/bad_rle                 | mask rle runs that do not fill width x height          | 0: malformed, the sums                       |
| cvat/size_mismatch           | <image width=100> for a 50 px wide file                | 0: image skipped, both sizes                 |
| cvat/points_garbage          | points="a,b;c,d;e,f"                                   | 0: malformed, the bad point                  |
| masks/size_mismatch          | a 30x30 mask for a 50x40 image                         | 0: image skipped, both sizes                 |
| masks/unreadable_mask        | a .png mask of random bytes                            | 0: unreadable_file, the mask and its image   |
| masks/missing_mask           | an image without a mask                                | 0: no_mask, where it looked                  |
| masks/unknown_value          | classes.json without value 2                           | 0: unknown_label, value 2, classes.json      |
| masks/nothing_usable         | the only mask of another size                          | 2: "nothing usable", size_mismatch           |
| import/unknown_format        | format=coco                                            | 2: the formats                               |
| import/missing_in            | in=<no such path>                                      | 2: the path                                  |
| import/no_format             | no format=                                             | 2: the usage                                 |
| import/out_not_empty         | out= a folder with files                               | 2: overwrite=true                            |
| import/bad_val_fraction      | val_fraction=1.5                                       | 2: the key and the range                     |
| export/unknown_format        | data export format=voc                                 | 2: the formats                               |
| export/no_root               | data export data.root=<no such folder>                 | 2: data.root                                 |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.cli import main
from tests.test_importers import labelme_doc, make_cvat, make_labelme, make_yolo, save_image, shape, square


@dataclass
class Case:
    name: str
    build: Callable[[Path], list[str]]  # tmp -> the command line after "segbench"
    code: int
    messages: list[str] = field(default_factory=list)  # in stderr (code 2) or in the import log (code 0)


def _via(tmp: Path, regions: list[dict], *, image: bool = True, extra: dict | None = None) -> list[str]:
    src = tmp / "via"
    if image:
        save_image(src / "a.png")
    doc = {
        "a.png1": {"filename": "a.png", "size": 1, "regions": regions, "file_attributes": {}},
        **(extra or {}),
    }
    src.mkdir(exist_ok=True)
    (src / "via_region_data.json").write_text(json.dumps(doc))
    return ["data", "import", "format=via", f"in={src}", f"out={tmp / 'out'}"]


GOOD_REGION = {
    "shape_attributes": {"name": "polygon", "all_points_x": [2, 12, 12, 2], "all_points_y": [2, 2, 12, 12]},
    "region_attributes": {"name": "balloon"},
}


def via_truncated(tmp: Path) -> list[str]:
    argv = _via(tmp, [GOOD_REGION])
    p = tmp / "via" / "via_region_data.json"
    p.write_text(p.read_text()[:40])
    return argv


def via_empty(tmp: Path) -> list[str]:
    argv = _via(tmp, [GOOD_REGION])
    (tmp / "via" / "via_region_data.json").write_text("")
    return argv


def via_strings(tmp: Path) -> list[str]:
    bad = {
        "shape_attributes": {"name": "polygon", "all_points_x": ["2", "12", "12"], "all_points_y": [2, 2, 12]}
    }
    return _via(tmp, [GOOD_REGION, bad])


def via_missing(tmp: Path) -> list[str]:
    gone = {"b.png2": {"filename": "b.png", "size": 2, "regions": [GOOD_REGION], "file_attributes": {}}}
    return _via(tmp, [GOOD_REGION], extra=gone)


def via_outside(tmp: Path) -> list[str]:
    far = {"shape_attributes": {"name": "rect", "x": 200, "y": 200, "width": 5, "height": 5}}
    return _via(tmp, [GOOD_REGION, far])


def labelme_one_truncated(tmp: Path) -> list[str]:
    src = make_labelme(tmp / "lm")
    (src / "b.json").write_text((src / "b.json").read_text()[:30])
    return ["data", "import", "format=labelme", f"in={src}", f"out={tmp / 'out'}"]


def _labelme(tmp: Path, doc: dict, *, image: bool = True) -> list[str]:
    src = tmp / "lm"
    if image:
        save_image(src / "a.png")
    save_image(src / "ok.png")
    src.mkdir(exist_ok=True)
    (src / "a.json").write_text(json.dumps(doc))
    (src / "ok.json").write_text(json.dumps(labelme_doc("ok.png", [shape("cat", square(1, 1, 5))])))
    return ["data", "import", "format=labelme", f"in={src}", f"out={tmp / 'out'}"]


def _yolo(tmp: Path, label_a: str | None = None, yaml: str | None = None) -> list[str]:
    src = make_yolo(tmp / "y")
    if label_a is not None:
        (src / "labels" / "train" / "a.txt").write_text(label_a)
    if yaml is not None:
        (src / "data.yaml").write_text(yaml)
    return ["data", "import", "format=yolo", f"in={src}", f"out={tmp / 'out'}"]


def _cvat(tmp: Path, old: str, new: str) -> list[str]:
    src = make_cvat(tmp / "cvat")
    p = src / "annotations.xml"
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new, 1))
    return ["data", "import", "format=cvat_xml", f"in={src}", f"out={tmp / 'out'}"]


def cvat_truncated(tmp: Path) -> list[str]:
    argv = _cvat(tmp, "<version>", "<version>")
    p = tmp / "cvat" / "annotations.xml"
    p.write_text(p.read_text()[:700])
    return argv


def cvat_empty(tmp: Path) -> list[str]:
    argv = _cvat(tmp, "<version>", "<version>")
    (tmp / "cvat" / "annotations.xml").write_text("")
    return argv


def _masks(tmp: Path, *, bad: str, only_bad: bool = False) -> list[str]:
    src = tmp / "m"
    (src / "masks").mkdir(parents=True)
    if not only_bad:
        save_image(src / "images" / "ok.png")
        ok = np.zeros((40, 50), np.uint8)
        ok[2:8, 2:8] = 1
        Image.fromarray(ok).save(src / "masks" / "ok.png")
    save_image(src / "images" / "bad.png")
    m = np.zeros((40, 50), np.uint8)
    m[10:20, 10:20] = 1
    m[25:30, 25:30] = 2
    if bad == "size":
        Image.fromarray(np.ones((30, 30), np.uint8)).save(src / "masks" / "bad.png")
    elif bad == "unreadable":
        (src / "masks" / "bad.png").write_bytes(np.random.default_rng(0).bytes(300))
    elif bad == "value":
        Image.fromarray(m).save(src / "masks" / "bad.png")
        (src / "classes.json").write_text(json.dumps({"1": "cell"}))
    # bad == "missing": no mask at all
    return ["data", "import", "format=masks", f"in={src}", f"out={tmp / 'out'}"]


def export_no_root(tmp: Path) -> list[str]:
    return ["data", "export", "format=yolo", f"data.root={tmp / 'nope'}", f"out={tmp / 'y'}"]


def out_not_empty(tmp: Path) -> list[str]:
    argv = labelme_one_truncated(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return argv


CASES = [
    Case("via/truncated_json", via_truncated, 2, ["via_region_data.json", "not valid JSON", "re-export"]),
    Case("via/empty_file", via_empty, 2, ["via_region_data.json", "not valid JSON"]),
    Case("via/points_as_strings", via_strings, 0, ["region 1", "coordinates must be numbers", "(fix: "]),
    Case("via/missing_image", via_missing, 0, ["entry 'b.png2'", "missing_image", "images=DIR"]),
    Case("via/outside_image", via_outside, 0, ["region 1", "outside_image", "redraw it inside"]),
    Case(
        "via/nothing_usable",
        lambda t: _via(t, [GOOD_REGION], image=False),
        2,
        ["nothing usable", "'a.png'", "import_log.txt"],
    ),
    Case(
        "labelme/one_truncated",
        labelme_one_truncated,
        0,
        ["b.json: unreadable_file", "not valid JSON", "(fix: "],
    ),
    Case(
        "labelme/points_as_strings",
        lambda t: _labelme(t, labelme_doc("a.png", [shape("cat", [["1", "2"], ["5", "2"], ["5", "6"]])])),
        0,
        ["a.json shape 0 ('cat'): malformed", "coordinates must be numbers", "(fix: "],
    ),
    Case(
        "labelme/size_mismatch",
        lambda t: _labelme(t, labelme_doc("a.png", [shape("cat", square(1, 1, 5))], h=100, w=100)),
        0,
        ["a.json: size_mismatch", "100x100", "50x40", "(fix: "],
    ),
    Case(
        "labelme/missing_image",
        lambda t: _labelme(t, labelme_doc("gone.png", [shape("cat", square(1, 1, 5))]), image=False),
        0,
        ["a.json: missing_image", "'gone.png'", "images=DIR"],
    ),
    Case(
        "labelme/empty_shapes",
        lambda t: _labelme(
            t, labelme_doc("a.png", [shape("cat", [[1, 1], [5, 5], [9, 9]]), shape("cat", [], "polygon")])
        ),
        0,
        ["a.json shape 0 ('cat'): empty_mask", "a.json shape 1 ('cat'): bad_polygon", "(fix: "],
    ),
    Case(
        "labelme/unknown_label",
        lambda t: [*_labelme(t, labelme_doc("a.png", [shape("dog", square(1, 1, 5))])), "classes=[cat]"],
        0,
        ["a.json shape 0 ('dog'): unknown_label", "not one of the classes (cat)", "classes=[...]"],
    ),
    Case(
        "yolo/class_beyond_names",
        lambda t: _yolo(t, "0 0.1 0.1 0.3 0.1 0.3 0.3\n5 0.5 0.5 0.7 0.5 0.7 0.7\n"),
        0,
        ["labels/train/a.txt line 2: unknown_label", "class index 5", "0..1", "(fix: "],
    ),
    Case(
        "yolo/bad_yaml", lambda t: _yolo(t, yaml="names: [a, b\ntrain: ["), 2, ["data.yaml", "not valid YAML"]
    ),
    Case("yolo/empty_yaml", lambda t: _yolo(t, yaml=""), 2, ["data.yaml", "names:"]),
    Case(
        "yolo/text_coordinates",
        lambda t: _yolo(t, "0 a b c d e f\n"),
        0,
        ["a.txt line 1", "'a' is not a number"],
    ),
    Case(
        "yolo/missing_images",
        lambda t: _yolo(t, yaml="names: [a]\ntrain: images/nope\n"),
        2,
        ["nothing usable", "images/nope", "not found"],
    ),
    Case(
        "cvat/truncated_xml",
        cvat_truncated,
        2,
        ["annotations.xml", "not valid XML", "line", "CVAT for images 1.1"],
    ),
    Case("cvat/empty_file", cvat_empty, 2, ["annotations.xml", "not valid XML"]),
    Case(
        "cvat/unknown_label",
        lambda t: _cvat(t, 'label="person"', 'label="boat"'),
        0,
        ["<box> 1 ('boat'): unknown_label", "(car, person, tree)", "(fix: "],
    ),
    Case(
        "cvat/bad_rle",
        lambda t: _cvat(t, 'width="8" height="8"', 'width="8" height="9"'),
        0,
        ["<mask> 2", "malformed", "8x9 = 72"],
    ),
    Case(
        "cvat/size_mismatch",
        lambda t: _cvat(t, 'name="a.png" width="50"', 'name="a.png" width="100"'),
        0,
        ["name='a.png'>: size_mismatch", "100x40", "50x40", "(fix: "],
    ),
    Case(
        "cvat/points_garbage",
        lambda t: _cvat(t, 'points="2.00,2.00;12.00,2.00;12.00,12.00;2.00,12.00"', 'points="a,b;c,d;e,f"'),
        0,
        ["<polygon> 0 ('car'): malformed", "'a,b' is not two numbers"],
    ),
    Case(
        "masks/size_mismatch",
        lambda t: _masks(t, bad="size"),
        0,
        ["masks/bad.png: size_mismatch", "30x30", "50x40"],
    ),
    Case(
        "masks/unreadable_mask",
        lambda t: _masks(t, bad="unreadable"),
        0,
        ["masks/bad.png: unreadable_file", "images/bad.png is skipped"],
    ),
    Case(
        "masks/missing_mask",
        lambda t: _masks(t, bad="missing"),
        0,
        ["images/bad.png: no_mask", "masks/bad", "(fix: "],
    ),
    Case(
        "masks/unknown_value",
        lambda t: _masks(t, bad="value"),
        0,
        ["masks/bad.png instance 2: unknown_label", "classes.json"],
    ),
    Case(
        "masks/nothing_usable",
        lambda t: _masks(t, bad="size", only_bad=True),
        2,
        ["nothing usable", "size_mismatch", "30x30"],
    ),
    Case(
        "import/unknown_format",
        lambda t: ["data", "import", "format=coco", f"in={t}", f"out={t / 'o'}"],
        2,
        ["'coco'", "via, labelme, yolo, cvat_xml, masks"],
    ),
    Case(
        "import/missing_in",
        lambda t: ["data", "import", "format=via", f"in={t / 'nope'}", f"out={t / 'o'}"],
        2,
        ["nope: no such file"],
    ),
    Case(
        "import/no_format",
        lambda t: ["data", "import", f"in={t}"],
        2,
        ["missing required value(s): format, out", "format=via|"],
    ),
    Case("import/out_not_empty", out_not_empty, 2, ["is not empty", "overwrite=true"]),
    Case(
        "import/bad_val_fraction",
        lambda t: [*labelme_one_truncated(t), "val_fraction=1.5"],
        2,
        ["val_fraction=1.5", "[0, 1)"],
    ),
    Case(
        "export/unknown_format",
        lambda t: ["data", "export", "format=voc", f"out={t / 'y'}", f"data.root={make_yolo(t / 'yy')}"],
        2,
        ["'voc'", "yolo, masks"],
    ),
    Case("export/no_root", export_no_root, 2, ["data.root=", "is not a folder"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_import_input(case, tmp_path, capsys):
    argv = case.build(tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert code == case.code, (code, out, err)
    if code == 2:
        assert err.startswith("segbench: error:"), err
        text = err
    else:
        text = (tmp_path / "out" / "import_log.txt").read_text()
        assert "Traceback" not in text
    missing = [m for m in case.messages if m not in text]
    assert not missing, f"{missing} not in:\n{text}"


def test_the_corpus_covers_every_format():
    formats = {c.name.split("/")[0] for c in CASES}
    assert {"via", "labelme", "yolo", "cvat", "masks", "import", "export"} <= formats
    assert sum(c.code == 0 for c in CASES) >= 10 and sum(c.code == 2 for c in CASES) >= 10
