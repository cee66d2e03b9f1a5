"""Dataset folder layouts found by themselves (issue 13): each export built as its tool writes it, with a
known answer: which JSON and image folder each split uses, and the class list."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.cli import main
from segbench.data.coco import MissingSplitError, open_split, resolve_split, resolve_splits
from segbench.data.layouts import (
    LAYOUTS,
    Listing,
    canonical_split,
    detect_layout,
    match_layout,
    split_of_stem,
)
from segbench.types import SegbenchError

SIZE = 32


def png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)


def square(x: float, y: float, s: float) -> list[float]:
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def coco(file_names: list[str], categories: list[dict], cat_of_ann: list[int] | None = None) -> dict:
    """A COCO document: one image per name, one square object per image (of ``cat_of_ann[k]``)."""
    cat_of_ann = cat_of_ann or [categories[-1]["id"]] * len(file_names)
    return {
        "images": [
            {"id": k + 1, "file_name": fn, "height": SIZE, "width": SIZE} for k, fn in enumerate(file_names)
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": k + 1,
                "category_id": c,
                "segmentation": [square(4, 4, 10)],
                "bbox": [4, 4, 10, 10],
                "area": 100.0,
                "iscrowd": 0,
            }
            for k, c in enumerate(cat_of_ann)
        ],
        "categories": categories,
    }


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def files_of(root: Path) -> dict[str, tuple[str, str]]:
    """split -> (JSON, image folder) relative to ``root``, as the resolver finds them."""
    found = detect_layout(root)
    return {
        s: (src.ann_file.relative_to(root).as_posix(), src.image_root.relative_to(root).as_posix() or ".")
        for s, src in found.splits.items()
    }


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------
def test_split_names_as_exporters_write_them():
    assert [
        canonical_split(n) for n in ("train", "Training", "valid", "VALIDATION", "val2017", "test", "testing")
    ] == [
        "train",
        "train",
        "val",
        "val",
        "val",
        "test",
        "test",
    ]
    assert canonical_split("default") is None and canonical_split("trainval") is None
    assert split_of_stem("coco_instances_valid") == "val" and split_of_stem("train-val") is None


def test_the_table_names_every_layout_once():
    assert [lay.name for lay in LAYOUTS] == ["segbench", "roboflow", "cvat", "label_studio", "single_json"]
    assert {lay.name for lay in LAYOUTS if lay.one_split} == {"cvat", "label_studio", "single_json"}


def test_match_layout_known_answers_from_names_alone():
    def answer(dirs, jsons):
        got = match_layout(Listing(frozenset(dirs), frozenset(jsons)))
        return None if got is None else (got[0].name, [(e.split, e.ann_file, e.image_root) for e in got[1]])

    # the segbench layout wins over a stray JSON at the root (dsb2018's SUMMARY.json)
    assert answer({"annotations", "images"}, {"SUMMARY.json", "annotations/instances_train.json"}) == (
        "segbench",
        [("train", "annotations/instances_train.json", "images")],
    )
    # COCO 2017: images in train2017/ beside annotations/
    assert answer(
        {"annotations", "train2017", "val2017"},
        {"annotations/instances_train2017.json", "annotations/instances_val2017.json"},
    ) == (
        "segbench",
        [
            ("train", "annotations/instances_train2017.json", "train2017"),
            ("val", "annotations/instances_val2017.json", "val2017"),
        ],
    )
    # CVAT project exported with subsets: images/<subset>/
    assert answer(
        {"annotations", "images", "images/Train", "images/Validation"},
        {"annotations/instances_Train.json", "annotations/instances_Validation.json"},
    ) == (
        "segbench",
        [
            ("train", "annotations/instances_Train.json", "images/Train"),
            ("val", "annotations/instances_Validation.json", "images/Validation"),
        ],
    )
    assert answer({"annotations", "images", "images/default"}, {"annotations/instances_default.json"}) == (
        "cvat",
        [("train", "annotations/instances_default.json", "images/default")],
    )
    assert answer({"images"}, {"result.json"}) == ("label_studio", [("train", "result.json", "images")])
    assert answer(set(), {"train.json", "valid.json", "train.fixed.json"}) == (
        "single_json",
        [("train", "train.json", ""), ("val", "valid.json", "")],
    )
    assert answer({"images"}, set()) is None


# --------------------------------------------------------------------------------------------------
# One test per layout, built as the tool writes it
# --------------------------------------------------------------------------------------------------
def test_segbench_layout(tmp_path):
    for split, names in (("train", ["a.png", "b.png"]), ("val", ["c.png"])):
        for k, n in enumerate(names):
            png(tmp_path / "images" / n, k)
        write(tmp_path / "annotations" / f"instances_{split}.json", coco(names, [{"id": 1, "name": "cell"}]))
    assert files_of(tmp_path) == {
        "train": ("annotations/instances_train.json", "images"),
        "val": ("annotations/instances_val.json", "images"),
    }
    assert detect_layout(tmp_path).layout.name == "segbench"
    ds = open_split(tmp_path, "val")
    assert ds.class_names == ["cell"] and len(ds[0].instances) == 1


ROBOFLOW_CATS = [
    {"id": 0, "name": "nuts-xyz12", "supercategory": "none"},  # the dataset's name: no annotation uses it
    {"id": 1, "name": "date", "supercategory": "nuts-xyz12"},
    {"id": 2, "name": "fig", "supercategory": "nuts-xyz12"},
]


def roboflow(root: Path) -> Path:
    """Roboflow's COCO export: train/ valid/ test/, each with _annotations.coco.json beside its images."""
    for k, folder in enumerate(("train", "valid", "test")):
        names = [f"img{k}{j}_jpg.rf.{k}{j}ab.jpg" for j in range(2)]
        for j, n in enumerate(names):
            png(root / folder / n, 10 * k + j)  # PNG bytes under a .jpg name: PIL reads by content
        write(root / folder / "_annotations.coco.json", coco(names, ROBOFLOW_CATS, [1, 2]))
    (root / "README.roboflow.txt").write_text("exported from roboflow.com")
    return root


def test_roboflow_export(tmp_path, caplog):
    root = roboflow(tmp_path / "rf")
    assert detect_layout(root).layout.name == "roboflow"
    assert files_of(root) == {
        "train": ("train/_annotations.coco.json", "train"),
        "val": ("valid/_annotations.coco.json", "valid"),
        "test": ("test/_annotations.coco.json", "test"),
    }
    with caplog.at_level(logging.INFO, logger="segbench.data"):
        ds = open_split(root, "val")
    assert ds.ann_file == root / "valid" / "_annotations.coco.json"
    # category 0 only names the dataset: never a class, even with keep_empty_classes
    assert ds.class_names == ["date", "fig"] and ds.label_to_cat_id == {1: 1, 2: 2}
    assert open_split(root, "train", keep_empty_classes=True).class_names == ["date", "fig"]
    assert [c["id"] for c in ds.all_categories] == [0, 1, 2]
    text = caplog.text
    assert "Roboflow COCO export; split 'val' (Roboflow COCO export calls it 'valid') uses" in text
    assert "'nuts-xyz12' only names the dataset" in text
    assert ds[0].image.shape == (SIZE, SIZE, 3) and ds[1].instances.labels.tolist() == [2]


def test_roboflow_export_through_the_commands(tmp_path, capsys):
    root = roboflow(tmp_path / "rf")
    code, out = run(["data", "stats", f"data.root={root}", "splits=[train,valid,test]"], capsys)
    assert code == 0, out
    assert out.count("instances per class: date=1, fig=1") == 3
    assert "categories that are not classes: nuts-xyz12 (names the dataset)" in out
    code, out = run(["data", "check", f"data.root={root}", "splits=[train,val,test]"], capsys)
    assert code == 0, out
    assert "WARNING unused_category (1)" in out and "category 0 'nuts-xyz12' only names the dataset" in out
    assert "category_id_zero" not in out  # explained by unused_category, not a 'background' class
    assert "[leakage] train vs val, test" in out


def cvat(root: Path) -> Path:
    """CVAT's "COCO 1.0" export of a task without subsets."""
    names = ["frame_000000.png", "frame_000001.png"]
    for k, n in enumerate(names):
        png(root / "images" / n, k)
    cats = [{"id": 1, "name": "cell", "supercategory": ""}]
    write(root / "annotations" / "instances_default.json", {"licenses": [], "info": {}, **coco(names, cats)})
    return root


def test_cvat_export_is_one_split_read_as_train(tmp_path, caplog):
    root = cvat(tmp_path / "cvat")
    assert detect_layout(root).layout.name == "cvat"
    assert files_of(root) == {"train": ("annotations/instances_default.json", "images")}
    with caplog.at_level(logging.INFO, logger="segbench.data"):
        ds = open_split(root, "train")
    assert ds.class_names == ["cell"] and len(ds) == 2
    assert "CVAT COCO 1.0 export; split 'train' (CVAT COCO 1.0 export calls it 'default') uses" in caplog.text
    with pytest.raises(MissingSplitError) as e:
        resolve_split(root, "val")
    msg = str(e.value)
    assert "no 'val' split under data.root=" in msg and "holding one split" in msg
    assert "data.val_ann=FILE" in msg and "Validation subsets" in msg
    # asked for train and val, a command gets train (val skipped with a log line)
    assert list(resolve_splits(root, ["train", "val"])) == ["train"]


def test_cvat_export_train_says_how_to_give_a_val_split(tmp_path, capsys):
    root = cvat(tmp_path / "cvat")
    argv = [
        "train",
        f"data.root={root}",
        "debug=fdr",
        f"paths.output_dir={tmp_path / 'out'}",
        "model.net.min_size=64",
        "model.net.max_size=64",
    ]
    code, out = run(argv, capsys)
    assert code == 2, out
    assert "segbench: error: no 'val' split under data.root=" in out and "data.val_ann=FILE" in out
    assert "Traceback" not in out


def test_cvat_export_with_an_explicit_val_json(tmp_path):
    root = cvat(tmp_path / "cvat")
    png(tmp_path / "val_images" / "v.png", 9)
    val = write(tmp_path / "val.json", coco(["v.png"], [{"id": 1, "name": "cell"}]))
    found = resolve_splits(
        root, ["train", "val"], sources={"val": {"ann_file": val, "image_root": tmp_path / "val_images"}}
    )
    assert found["val"] == (val, tmp_path / "val_images")
    assert found["train"][0] == root / "annotations" / "instances_default.json"


def label_studio(root: Path) -> Path:
    """Label Studio's COCO export: result.json + images/, file names relative to the root, ids from 0."""
    names = ["images/0b1c2d3e-cells_1.png", "images/4f5a6b7c-cells_2.png"]
    for k, n in enumerate(names):
        png(root / n, k)
    cats = [{"id": 0, "name": "nucleus"}, {"id": 1, "name": "debris"}]
    doc = {"info": {"contributor": "Label Studio"}, **coco(names, cats, [0, 1])}
    write(root / "result.json", doc)
    return root


def test_label_studio_export(tmp_path):
    root = label_studio(tmp_path / "ls")
    assert detect_layout(root).layout.name == "label_studio"
    assert files_of(root) == {"train": ("result.json", "images")}
    ds = open_split(root, "train")
    # Label Studio numbers categories from 0: a used category 0 is a class like any other
    assert ds.class_names == ["nucleus", "debris"] and ds.label_to_cat_id == {1: 0, 2: 1}
    assert ds.image_path(0) == root / "images" / "0b1c2d3e-cells_1.png"
    assert ds[1].instances.labels.tolist() == [2]
    with pytest.raises(
        MissingSplitError, match="Label Studio COCO export holding one split.*data.val_ann=FILE"
    ):
        resolve_split(root, "val")


def test_detectron2_single_json_beside_an_image_folder(tmp_path):
    root = tmp_path / "d2"
    for k, n in enumerate(["x.png", "y.png"]):
        png(root / "images" / n, k)
    write(root / "my_cells.json", coco(["x.png", "y.png"], [{"id": 3, "name": "cell"}]))
    assert detect_layout(root).layout.name == "single_json"
    assert files_of(root) == {"train": ("my_cells.json", "images")}
    assert open_split(root, "train").class_names == ["cell"]


def test_detectron2_jsons_named_after_splits_beside_their_images(tmp_path):
    root = tmp_path / "d2"
    for k, n in enumerate(["x.png", "y.png", "z.png"]):
        png(root / n, k)
    cats = [{"id": 1, "name": "cell"}]
    write(root / "cells_train.json", coco(["x.png", "y.png"], cats))
    write(root / "cells_validation.json", coco(["z.png"], cats))
    assert files_of(root) == {"train": ("cells_train.json", "."), "val": ("cells_validation.json", ".")}
    assert len(open_split(root, "val")) == 1


def test_an_explicit_json_wins_over_the_layout(tmp_path):
    root = roboflow(tmp_path / "rf")
    other = write(tmp_path / "mine.json", coco(["img10_jpg.rf.10ab.jpg"], ROBOFLOW_CATS, [1]))
    assert resolve_split(root, "val", ann_file=other) == (other, tmp_path)
    assert resolve_split(root, "val", image_root=tmp_path / "pics")[1] == tmp_path / "pics"


# --------------------------------------------------------------------------------------------------
# Bad input: one clear message each, exit 2, no traceback
# --------------------------------------------------------------------------------------------------
def test_unknown_layout_gets_one_message_listing_what_was_looked_for(tmp_path, capsys):
    root = tmp_path / "mystery"
    png(root / "pics" / "a.png")
    (root / "notes.txt").write_text("hi")
    code, out = run(["data", "stats", f"data.root={root}"], capsys)
    assert code == 2 and "Traceback" not in out
    assert out.count("segbench: error:") == 1
    assert f"no COCO dataset found under data.root={root} (it holds notes.txt, pics/)" in out
    for lay in LAYOUTS:
        assert lay.looks_for in out
    assert "data.<split>_ann=FILE" in out


def test_several_unnamed_jsons_are_not_guessed(tmp_path, capsys):
    root = tmp_path / "two"
    png(root / "images" / "a.png")
    for n in ("first.json", "second.json"):
        write(root / n, coco(["a.png"], [{"id": 1, "name": "cell"}]))
    code, out = run(["data", "check", f"data.root={root}"], capsys)
    assert code == 2 and "Traceback" not in out
    assert "several JSON files, none named after a split (first.json, second.json)" in out
    assert "data.train_ann=FILE" in out


def test_data_root_that_is_a_json_file(tmp_path, capsys):
    p = write(tmp_path / "x.json", coco(["a.png"], [{"id": 1, "name": "cell"}]))
    code, out = run(["data", "stats", f"data.root={p}"], capsys)
    assert code == 2 and "Traceback" not in out
    assert f"data.root={p} is a JSON file, not a folder: pass it as data.train_ann={p}" in out


def test_a_split_the_layout_lacks_names_the_file_and_the_key(tmp_path):
    root = roboflow(tmp_path / "rf")
    with pytest.raises(
        SegbenchError, match=r"no 'holdout' split .* has 'train' \(train/_annotations.coco.json\)"
    ):
        resolve_split(root, "holdout")
