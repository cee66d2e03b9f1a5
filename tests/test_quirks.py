"""Exporters' quirks accepted (issue 13): each export built as the tool writes it, read by the loader
(:class:`CocoDataset`) and judged by the doctor (``segbench data check``) through the one image lookup
(:func:`segbench.data.coco.resolve_image_path`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.cli import main
from segbench.data.coco import CocoDataset, normalise_file_name, resolve_image_path
from segbench.data.doctor import check_dataset, check_split
from tests.conftest import write_coco

SIZE = 32
CATS = [{"id": 1, "name": "cell"}]


def pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)


def one_object(image_id: int = 1, ann_id: int = 1, cat: int = 1) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]],
        "bbox": [4, 4, 10, 10],
        "area": 100.0,
        "iscrowd": 0,
    }


def dataset(root: Path, file_name: str, *, on_disk: str = "a.png", cats=CATS, anns=None) -> Path:
    """A segbench-layout split of one image stored at ``images/<on_disk>`` and named ``file_name``."""
    entries = [{"id": 1, "file_name": file_name, "height": SIZE, "width": SIZE}]
    p = write_coco(
        root, [(on_disk, pixels())], anns if anns is not None else [one_object()], cats, image_entries=entries
    )
    return p


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def reads(p: Path, root: Path | None = None, **kw) -> CocoDataset:
    ds = CocoDataset(p, root=root, **kw)
    s = ds[0]
    assert s.image.shape == (SIZE, SIZE, 3) and (s.image == pixels()).all()
    return ds


def test_byte_order_mark(tmp_path, capsys):
    p = dataset(tmp_path, "a.png")
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())  # as Windows tools write UTF-8
    assert reads(p).num_annotations == 1
    code, out = run(["data", "check", f"data.root={tmp_path}"], capsys)
    assert code == 0 and "no problems found" in out, out


def test_windows_backslashes(tmp_path, capsys):
    p = dataset(tmp_path, "sub\\im0.png", on_disk="sub/im0.png")
    assert reads(p).image_path(0) == tmp_path / "images" / "sub" / "im0.png"
    code, out = run(["data", "check", f"data.root={tmp_path}", "fix=true"], capsys)
    assert code == 0, out
    assert "WARNING indirect_file_name (1)" in out and "written with backslashes" in out
    fixed = json.loads(p.with_name("instances_train.fixed.json").read_text())
    assert fixed["images"][0]["file_name"] == "sub/im0.png"


def test_file_name_relative_to_the_root(tmp_path, capsys):
    p = dataset(tmp_path, "images/a.png")  # the CVAT / Label Studio zip habit
    reads(p)
    look = resolve_image_path("images/a.png", tmp_path / "images", root=tmp_path)
    assert (look.found, look.how) == (True, "image_folder_prefix")
    rep = check_dataset(p, root=tmp_path)
    assert [(i.kind, i.file_name) for i in rep.issues] == [("indirect_file_name", "images/a.png")]
    assert "fix=true rewrites it to 'a.png'" in rep.issues[0].message


def test_file_name_relative_to_the_dataset_folder_outside_the_image_folder(tmp_path):
    p = dataset(tmp_path, "frames/a.png", on_disk="unused.png")
    (tmp_path / "frames").mkdir()
    Image.fromarray(pixels()).save(tmp_path / "frames" / "a.png")
    ds = reads(p, root=tmp_path)
    assert ds.image_path(0) == tmp_path / "frames" / "a.png"
    issue = check_dataset(p, root=tmp_path).issues[0]
    assert issue.kind == "indirect_file_name" and "relative to the dataset folder" in issue.message
    assert "outside the image folder: fix=true leaves it" in issue.message


def test_file_name_relative_to_the_json_folder(tmp_path):
    # detectron2 habit: the JSON in labels/, names relative to it, images given explicitly
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels()).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels").mkdir()
    p = tmp_path / "labels" / "train.json"
    doc = {
        "images": [{"id": 1, "file_name": "../images/a.png", "height": SIZE, "width": SIZE}],
        "annotations": [one_object()],
        "categories": CATS,
    }
    p.write_text(json.dumps(doc))
    ds = CocoDataset(p, tmp_path / "images")  # '..' that leads back into the image folder
    assert ds.image_path(0) == tmp_path / "images" / "a.png" and ds[0].image.shape == (SIZE, SIZE, 3)
    # and a name relative to the JSON's folder only
    Image.fromarray(pixels()).save(tmp_path / "labels" / "b.png")
    doc["images"][0]["file_name"] = "b.png"
    p.write_text(json.dumps(doc))
    look = resolve_image_path("b.png", tmp_path / "images", ann_dir=tmp_path / "labels")
    assert (look.found, look.how, look.path) == (True, "ann_dir", tmp_path / "labels" / "b.png")
    assert CocoDataset(p, tmp_path / "images")[0].image.shape == (SIZE, SIZE, 3)


def test_leading_image_folder_name_with_an_explicit_image_root(tmp_path):
    (tmp_path / "pics").mkdir()
    Image.fromarray(pixels()).save(tmp_path / "pics" / "a.png")
    p = tmp_path / "x.json"
    p.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "pics/a.png", "height": SIZE, "width": SIZE}],
                "annotations": [one_object()],
                "categories": CATS,
            }
        )
    )
    assert (
        CocoDataset(p, tmp_path / "pics", root=tmp_path / "elsewhere").image_path(0)
        == tmp_path / "pics" / "a.png"
    )


def test_file_url_prefix(tmp_path, capsys):
    name = "file://" + str((tmp_path / "images" / "my cells.png").resolve()).replace(" ", "%20")
    p = dataset(tmp_path, name, on_disk="my cells.png")
    assert normalise_file_name(name) == str((tmp_path / "images" / "my cells.png").resolve())
    assert reads(p).num_annotations == 1
    code, out = run(["data", "check", f"data.root={tmp_path}"], capsys)
    assert code == 0 and "fix=true rewrites it to 'my cells.png'" in out, out


def test_absolute_path_inside_the_dataset(tmp_path, capsys):
    p = dataset(tmp_path, str((tmp_path / "images" / "a.png").resolve()))
    reads(p, root=tmp_path)
    code, out = run(["data", "stats", f"data.root={tmp_path}"], capsys)
    assert code == 0 and "instances per class: cell=1" in out, out


def test_absolute_path_outside_the_dataset_is_refused(tmp_path, capsys):
    outside = tmp_path / "elsewhere" / "a.png"
    outside.parent.mkdir()
    Image.fromarray(pixels()).save(outside)
    root = tmp_path / "ds"
    dataset(root, str(outside), on_disk="other.png")
    code, out = run(["data", "stats", f"data.root={root}"], capsys)
    assert code == 2 and "Traceback" not in out
    assert (
        "instances_train.json: image id 1: file_name" in out
        and "is an absolute path outside the dataset folder" in out
    )
    assert "Rewrite it relative to that folder" in out and "fix=true" in out
    # the doctor: the base name is not in the image folder, so the image is dropped by the fix
    code, out = run(["data", "check", f"data.root={root}"], capsys)
    assert code == 1 and "ERROR   unsafe_file_name (1)" in out


def test_absolute_windows_path_repaired_by_base_name(tmp_path, capsys):
    root = tmp_path / "ds"
    p = dataset(root, "C:\\Users\\me\\labelling\\a.png")  # a labelme / Label Studio export made on Windows
    code, out = run(["data", "stats", f"data.root={root}"], capsys)
    assert code == 2 and "absolute path outside the dataset folder" in out and "Traceback" not in out
    result = check_split(p, root=root, fix=True)
    assert result.fixed_report.errors == 0
    assert json.loads(result.fixed_file.read_text())["images"][0]["file_name"] == "a.png"
    assert result.changes.recovered == 1
    reads(result.fixed_file)


def test_dotdot_leaving_the_image_folder_is_refused(tmp_path, capsys):
    dataset(tmp_path, "../a.png")
    code, out = run(["data", "stats", f"data.root={tmp_path}"], capsys)
    assert code == 2 and "contains '..' and would leave the image folder" in out and "Traceback" not in out


def test_empty_category_is_not_trained_unless_asked(tmp_path, caplog, capsys):
    cats = [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}]
    p = dataset(tmp_path, "a.png", cats=cats)
    with caplog.at_level(logging.WARNING, logger="segbench.data.coco"):
        ds = CocoDataset(p)
    assert ds.class_names == ["cell"] and [c["id"] for c in ds.all_categories] == [1, 2]
    assert "no annotation uses categor(ies) 2 'debris': not trained as classes" in caplog.text
    assert CocoDataset(p, keep_empty_classes=True).class_names == ["cell", "debris"]
    code, out = run(["data", "stats", f"data.root={tmp_path}", "data.keep_empty_classes=true"], capsys)
    assert code == 0 and "instances per class: cell=1, debris=0" in out
    code, out = run(["data", "stats", f"data.root={tmp_path}"], capsys)
    assert code == 0 and "categories that are not classes: debris (no annotation)" in out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sub\\im0.png", "sub/im0.png"),
        ("./images/a.png", "images/a.png"),
        ("file:///C:/data/a%201.png", "C:/data/a 1.png"),
        ("FILE:///srv/a.png", "/srv/a.png"),
    ],
)
def test_normalise_file_name(name, expected):
    assert normalise_file_name(name) == expected
