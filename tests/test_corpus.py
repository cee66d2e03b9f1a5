"""A corpus of broken datasets, configs, result files, checkpoints and inputs (issue 6, point 2).

Each case builds one broken input in ``tmp_path``, runs ``segbench.cli.main(argv)`` in-process and asserts:
the exit code (2: stopped before the work with one ``segbench: error:`` line; 1: ``data check`` found
errors; 0: the bad item was skipped or warned about, and counted in the output or the log), that nothing
printed a traceback or "internal error", and that the message names the file / annotation id / image id /
config key and the fix (``Case.messages``). A refused ``train`` must stop before ``trainer.fit`` unless the
case says otherwise; training cases use ``debug=fdr`` at 64 px. :func:`corpus_table` runs the corpus
outside pytest and returns (case, expected, observed) rows::

    .venv/bin/python -c "from tests.test_corpus import corpus_table; [print(*r, sep=' | ') for r in corpus_table()]"

| case                           | input                                                       | expected outcome                                                                |
|--------------------------------|-------------------------------------------------------------|---------------------------------------------------------------------------------|
| missing_image/check            | data check: images/b.png deleted                            | exit 1: missing_image with image id + file + fix                                |
| missing_image/train            | train: images/b.png deleted                                 | exit 2: stopped before the model is built, names JSON, file, key, fix           |
| truncated_image/train          | train (debug=fdr, DataLoader worker): b.png truncated       | exit 2: stopped at the first batch, the worker's message without its traceback  |
| truncated_image/check          | data check: b.png cut to half its bytes                     | exit 1: unreadable_image with id + file + fix                                   |
| truncated_image/eval           | eval: val image d.png truncated                             | exit 2: names the file, points to data check                                    |
| size_mismatch/check            | data check: JSON says 40x40, file is 32x32                  | exit 1: size_mismatch with both sizes + fix                                     |
| size_mismatch/compare          | compare: val JSON says 40x40 for a 32x32 file               | exit 2: names file, id, sizes and fix                                           |
| duplicate_image_id/check       | data check: two images with id 1                            | exit 1: duplicate_image_id + fix                                                |
| duplicate_image_id/stats       | data stats: two images with id 1                            | exit 2: names JSON, id, file and fix                                            |
| duplicate_ann_id/check         | data check: two annotations with id 1                       | exit 1: duplicate_ann_id + fix                                                  |
| duplicate_ann_id/stats         | data stats: two annotations with id 1                       | exit 0: the second is dropped, counted and logged                               |
| unknown_image/check            | data check: annotation 2 of image id 99                     | exit 1: unknown_image + ids + fix                                               |
| unknown_image/stats            | data stats: annotation 2 of image id 99                     | exit 0: dropped, counted and logged                                             |
| unknown_category/check         | data check: annotation 2 of category 7                      | exit 1: unknown_category + ids + fix                                            |
| unknown_category/compare       | compare: val annotation 2 of category 7                     | exit 0: dropped, counted and logged; report written                             |
| polygon_2_points/check         | data check: polygon [[6,6,18,18]]                           | exit 1: bad_polygon + id + fix                                                  |
| polygon_2_points/stats         | data stats: polygon [[6,6,18,18]]                           | exit 0: dropped, counted and logged                                             |
| odd_coordinates/check          | data check: polygon of 7 numbers                            | exit 1: bad_polygon + id + fix                                                  |
| odd_coordinates/stats          | data stats: polygon of 7 numbers                            | exit 0: dropped, counted and logged                                             |
| rle_size/check                 | data check: 16x16 RLE on a 32x32 image                      | exit 1: rle_size_mismatch + sizes + fix                                         |
| rle_size/eval                  | eval: val annotation 1 is a 16x16 RLE on a 32x32 image      | exit 0: dropped, counted and logged                                             |
| box_negative/check             | data check: bbox [18,6,-12,12]                              | exit 1: bad_box + id + fix                                                      |
| box_outside/check              | data check: bbox [40,40,5,5] on a 32x32 image               | exit 1: bad_box + id + fix                                                      |
| box_mask_disagree/check        | data check: bbox [0,0,5,5], mask at [6,6,12,12]             | exit 1: box_mask_mismatch + both boxes + fix                                    |
| empty_mask/check               | data check: polygon of 3 collinear points                   | exit 1: empty_mask + id + fix                                                   |
| empty_mask/stats               | data stats: polygon of 3 collinear points                   | exit 0: dropped, counted and logged                                             |
| category_id_0/check            | data check: categories 0 'background' and 1                 | exit 0: category_id_zero warning + advice                                       |
| cvat_iscrowd/check             | data check: one ordinary object exported as iscrowd=1 RLE   | exit 0: crowd_object warning + fix                                              |
| too_many_objects/check         | data check max_dets=3: 5 objects in one image               | exit 0: too_many_objects warning + key to raise                                 |
| file_name_dotdot/check         | data check: file_name '../x.png'                            | exit 1: unsafe_file_name + id + fix                                             |
| file_name_dotdot/train         | train: file_name '../x.png'                                 | exit 2: stopped before training, names JSON, id, name, fix                      |
| file_name_absolute/stats       | data stats: file_name '/abs/.../b.png' inside data.root     | exit 0: found: the image is read                                                |
| file_name_absolute/check       | data check: file_name '/abs/.../b.png' inside data.root     | exit 0: indirect_file_name warning + fix                                        |
| invalid_json/check             | data check: instances_train.json cut short                  | exit 1: malformed_json + file + fix                                             |
| invalid_json/train             | train: instances_train.json cut short                       | exit 2: stopped before training, names file + position + fix                    |
| json_list/stats                | data stats: instances_train.json is []                      | exit 2: names the file and what COCO needs                                      |
| json_list/check                | data check: instances_train.json is []                      | exit 1: malformed_json + file                                                   |
| empty_root/stats               | data stats: data.root is an empty folder                    | exit 2: names data.root and the layout expected                                 |
| empty_root/train               | train: data.root is an empty folder                         | exit 2: stopped before training, names file + key                               |
| no_annotations_folder/eval     | eval: images/ but no annotations/                           | exit 2: names the file it looked for + key                                      |
| no_annotations_folder/check    | data check: images/ but no annotations/                     | exit 2: names data.root and the layout expected                                 |
| train_val_categories/train     | train: train has 'blob', val has 'cell'                     | exit 2: stopped before training, names both files + classes                     |
| train_val_categories/eval      | eval: 'blob' checkpoint on a 'cell' val split               | exit 2: names checkpoint classes, file, classes                                 |
| unknown_key/train              | train data.batchsize=2 (typo)                               | exit 2: names the key, how to list keys                                         |
| batch_size_abc/train           | train data.batch_size=abc                                   | exit 2: names key, value, what is valid                                         |
| batch_size_0/train             | train data.batch_size=0                                     | exit 2: names key, value, what is valid                                         |
| unknown_group_option/train     | train model=nope                                            | exit 2: names the group and the valid options                                   |
| missing_required/eval          | eval without ckpt_path                                      | exit 2: names the key to pass                                                   |
| bad_experiment/train           | train experiment=nope                                       | exit 2: names the group and the valid experiments                               |
| persistent_workers/train       | train data.persistent_workers=true data.num_workers=0       | exit 2: stopped before training, names both keys                                |
| unknown_method/compare         | compare methods=[nope]                                      | exit 2: names the method and the valid ones                                     |
| maskrcnn_without_ckpt/compare  | compare methods=[maskrcnn] without ckpt_path                | exit 2: names the key to pass                                                   |
| results_of_other_dataset/score | score: results for image id 999                             | exit 2: names file + ids + likely cause                                         |
| results_unknown_category/score | score: results with category_id 99                          | exit 2: names file + id + fix                                                   |
| results_is_dataset/score       | score pred=<a COCO dataset JSON>                            | exit 2: says which is which                                                     |
| results_not_json/score         | score pred=<a CSV file>                                     | exit 2: names the file                                                          |
| missing_checkpoint/eval        | eval ckpt_path=<no such file>                               | exit 2: names the file                                                          |
| other_architecture/train       | train resnet18 with model.net.weights=<resnet34 state_dict> | exit 2: stopped before training, names file, backbone, fix                      |
| code_running_pickle/eval       | eval ckpt_path=<pickle whose __reduce__ runs code>          | exit 2: refused, the code did not run                                           |
| code_running_pickle/train      | train model.net.weights=<pickle whose __reduce__ runs code> | exit 2: stopped before training, refused, the code did not run                  |
| random_bytes/eval              | eval ckpt_path=<4 KiB of random bytes>                      | exit 2: names the file                                                          |
| random_bytes/train             | train model.net.weights=<4 KiB of random bytes>             | exit 2: stopped before training, names the file                                 |
| truncated_checkpoint/eval      | eval ckpt_path=<the first half of a checkpoint>             | exit 2: names the file, says it may be truncated                                |
| empty_folder/predict           | predict input=<empty folder>                                | exit 2: names the folder and what input= takes                                  |
| one_truncated_image/predict    | predict input=<folder: good.png + truncated bad.png>        | exit 0: good.png predicted, bad.png skipped, logged and counted in summary.json |
| missing_input/predict          | predict input=<no such path>                                | exit 2: names the path                                                          |
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from segbench.cli import main
from tests.conftest import write_coco

SIZE = 32
CATS = [{"id": 1, "name": "blob"}]
# data.root layout: train images a.png b.png (ids 1, 2), val images c.png d.png (ids 1, 2)
FILES = {"train": ("a.png", "b.png"), "val": ("c.png", "d.png")}
SQUARES = ((6, 6, 12), (14, 10, 10))  # (x, y, side) of the one object of image 1 and image 2


# --------------------------------------------------------------------------------------------------
# Building blocks: a clean tiny dataset, then one thing broken
# --------------------------------------------------------------------------------------------------
def square_polygon(x: float, y: float, s: float) -> list[float]:
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def _pixels(x: int, y: int, s: int) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), 40, np.uint8)
    img[y : y + s, x : x + s] = 210
    return img


def dataset(tmp: Path, name: str = "ds", *, categories: dict[str, list] | None = None) -> Path:
    """A clean dataset root: train and val, two 32x32 images each, one square object per image."""
    root = tmp / name
    for split, files in FILES.items():
        images = [(fn, _pixels(*sq)) for fn, sq in zip(files, SQUARES, strict=True)]
        anns = [
            {
                "id": k + 1,
                "image_id": k + 1,
                "category_id": 1,
                "segmentation": [square_polygon(*sq)],
                "bbox": [sq[0], sq[1], sq[2], sq[2]],
                "area": float(sq[2] * sq[2]),
                "iscrowd": 0,
            }
            for k, sq in enumerate(SQUARES)
        ]
        write_coco(root, images, anns, (categories or {}).get(split, CATS), split=split)
    return root


def ann_file(root: Path, split: str = "train") -> Path:
    return root / "annotations" / f"instances_{split}.json"


def edit(root: Path, fn: Callable[[dict], None], split: str = "train") -> Path:
    """Apply ``fn`` to the JSON of ``split`` in place; return the root."""
    p = ann_file(root, split)
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))
    return root


def ann(doc: dict, ann_id: int) -> dict:
    return next(a for a in doc["annotations"] if a["id"] == ann_id)


def truncate_image(path: Path) -> None:
    """Replace ``path`` by the first half of a noisy PNG (a download cut short)."""
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# A segbench checkpoint made without training (an untrained resnet18 Mask R-CNN for the class 'blob'),
# built once per process: evaluating it on a broken dataset reaches the broken image quickly.
_CACHE: dict[str, Path] = {}
NET = {
    "backbone": "resnet18_fpn",
    "weights": None,
    "min_size": 64,
    "max_size": 64,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_detections_per_img": 10,
}


def model_checkpoint(tmp: Path) -> Path:
    p = _CACHE.get("ckpt")
    if p is not None and p.is_file():
        return p
    import torch

    from segbench.models.module import MaskRCNNModule
    from segbench.training import save_checkpoint

    torch.manual_seed(0)
    module = MaskRCNNModule(
        net=dict(NET), num_classes=1, class_names=["blob"], categories=CATS, label_to_cat_id={1: 1}
    )
    p = save_checkpoint(module, tmp / "model.ckpt")
    _CACHE["ckpt"] = p
    return p


class RunsCode:
    """Unpickling this object runs code: it creates ``marker`` (a stand-in for anything worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def malicious_pickle(tmp: Path) -> tuple[Path, Path]:
    """A checkpoint-looking file whose unpickling creates ``marker``; returns (file, marker)."""
    import torch

    marker = tmp / "PWNED"
    p = tmp / "evil.ckpt"
    torch.save({"state_dict": {"model.x": RunsCode(marker)}, "segbench": {}}, p)
    assert not marker.exists()
    return p, marker


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


# command lines
TRAIN_FDR = ["debug=fdr", "model.net.min_size=64", "model.net.max_size=64"]


def train(tmp: Path, root: Path | None, *extra: str) -> list[str]:
    data = [f"data.root={root}"] if root is not None else []
    return ["train", *TRAIN_FDR, *data, f"paths.output_dir={tmp / 'out'}", *extra]


def check(root: Path, *extra: str) -> list[str]:
    return ["data", "check", f"data.root={root}", *extra]


def stats(root: Path, *extra: str) -> list[str]:
    return ["data", "stats", f"data.root={root}", *extra]


def evaluate(tmp: Path, root: Path, ckpt: Path | str | None = None, *extra: str) -> list[str]:
    ckpt = model_checkpoint(tmp) if ckpt is None else ckpt
    return ["eval", f"ckpt_path={ckpt}", f"data.root={root}", f"out={tmp / 'eval'}", *extra]


def compare(tmp: Path, root: Path, *extra: str) -> list[str]:
    return [
        "compare",
        f"data.root={root}",
        f"out={tmp / 'compare'}",
        "bootstrap=0",
        "overlays=0",
        *extra,
    ]


# --------------------------------------------------------------------------------------------------
# Running one case
# --------------------------------------------------------------------------------------------------
@dataclass
class Observed:
    argv: list[str]
    code: int
    out: str  # stdout
    err: str  # stderr
    log: str  # segbench's log records, one "LEVEL logger: message" per line

    def summary(self, messages: tuple[str, ...] = (), width: int = 230) -> str:
        """``exit N: <what it said>`` in one line: the error line (code 2), else the report / log lines
        holding the expected messages (a data-check kind line is followed by its first example)."""
        if self.code == 2:
            lines = [x for x in self.err.splitlines() if x.startswith("segbench:")]
            parts = lines[:1] or self.err.strip().splitlines()[-1:]
        else:
            lines = [x.strip() for x in (self.out + "\n" + self.log).splitlines()]
            parts = []
            for k, line in enumerate(lines):
                if line and any(m in line for m in messages) and line not in parts:
                    parts.append(line)
                    if re.match(r"(ERROR|WARNING) +\w+ \(\d+\):", line) and k + 2 < len(lines):
                        parts.append(lines[k + 2])  # skip the "fix:" line, show the first example
            parts = parts or lines[-1:]
        text = " / ".join(" ".join(p.split()) for p in parts)
        return f"exit {self.code}: {text[:width]}" + ("..." if len(text) > width else "")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def run_cli(argv: list[str]) -> Observed:
    """``segbench.cli.main(argv)`` with stdout, stderr and segbench's log records captured."""
    handler = _Records()
    logger = logging.getLogger("segbench")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    debug = os.environ.pop("SEGBENCH_DEBUG", None)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        if debug is not None:
            os.environ["SEGBENCH_DEBUG"] = debug
    return Observed(list(map(str, argv)), code, out.getvalue(), err.getvalue(), "\n".join(handler.lines))


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One broken input, the command it is given to, and what must happen.

    ``messages`` must all appear in the one ``segbench: error:`` line (code 2), in the report / log
    (codes 0 and 1). ``check`` asserts anything else (a file not created, a skip counted...).
    ``before_work``: a ``train`` refused with code 2 must not have reached ``trainer.fit``.
    """

    name: str
    build: Callable[[Path], list[str]]
    code: int
    messages: tuple[str, ...]
    input: str
    expected: str
    check: Callable[[Path, Observed], None] | None = None
    before_work: bool = True  # a refused `train` stops before the Trainer starts
    marks: tuple = field(default=())


# -- builders: each makes its broken input under ``t`` and returns the command line -----------------
def _missing_image(t: Path) -> Path:
    root = dataset(t)
    (root / "images" / "b.png").unlink()
    return root


def _truncated(t: Path, split: str = "train") -> Path:
    root = dataset(t)
    truncate_image(root / "images" / FILES[split][1])
    return root


def _with(fn: Callable[[dict], None], split: str = "train") -> Callable[[Path], Path]:
    """A builder: a clean dataset whose ``split`` JSON is edited by ``fn(doc)``; returns its root."""
    return lambda t: edit(dataset(t), fn, split)


def _size_40(doc: dict) -> None:
    doc["images"][1].update(width=40, height=40)


def _dup_image_id(doc: dict) -> None:
    doc["images"][1]["id"] = 1


def _dup_ann_id(doc: dict) -> None:
    doc["annotations"][1]["id"] = 1


def _unknown_image(doc: dict) -> None:
    ann(doc, 2)["image_id"] = 99


def _unknown_category(doc: dict) -> None:
    ann(doc, 2)["category_id"] = 7


def _two_points(doc: dict) -> None:
    ann(doc, 1)["segmentation"] = [[6, 6, 18, 18]]


def _odd_coords(doc: dict) -> None:
    ann(doc, 1)["segmentation"] = [[6, 6, 18, 6, 18, 18, 6]]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def _rle_16(doc: dict) -> None:
    m = np.zeros((16, 16), np.uint8)
    m[3:9, 3:9] = 1
    ann(doc, 1)["segmentation"] = _rle(m)


def _negative_box(doc: dict) -> None:
    ann(doc, 1)["bbox"] = [18, 6, -12, 12]


def _box_outside(doc: dict) -> None:
    ann(doc, 1)["bbox"] = [40, 40, 5, 5]


def _box_mask_disagree(doc: dict) -> None:
    ann(doc, 1)["bbox"] = [0, 0, 5, 5]


def _empty_mask(doc: dict) -> None:
    a = ann(doc, 1)
    a["segmentation"] = [[5, 5, 10, 10, 15, 15]]  # three points on a line: no area
    a["bbox"] = [5, 5, 10, 10]


def _category_zero(doc: dict) -> None:
    doc["categories"] = [{"id": 0, "name": "background"}, *CATS]


def _cvat_crowd(doc: dict) -> None:
    x, y, s = SQUARES[0]
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[y : y + s, x : x + s] = 1
    ann(doc, 1).update(segmentation=_rle(m), iscrowd=1)


def _five_objects(doc: dict) -> None:
    doc["annotations"] = [
        {
            "id": 10 + k,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [square_polygon(2 + 6 * k, 2, 4)],
            "bbox": [2 + 6 * k, 2, 4, 4],
            "area": 16.0,
            "iscrowd": 0,
        }
        for k in range(5)
    ]


def _dotdot(doc: dict) -> None:
    doc["images"][1]["file_name"] = "../x.png"


def _absolute(root: Path) -> Callable[[dict], None]:
    def fn(doc: dict) -> None:
        doc["images"][1]["file_name"] = str((root / "images" / "b.png").resolve())

    return fn


def _write_json_text(text: str, split: str = "train") -> Callable[[Path], Path]:
    def build(t: Path) -> Path:
        root = dataset(t)
        ann_file(root, split).write_text(text)
        return root

    return build


def _empty_root(t: Path) -> Path:
    (t / "empty").mkdir()
    return t / "empty"


def _no_annotations(t: Path) -> Path:
    root = dataset(t)
    for p in (root / "annotations").iterdir():
        p.unlink()
    (root / "annotations").rmdir()
    return root


def _other_val_categories(t: Path) -> Path:
    return dataset(t, categories={"val": [{"id": 1, "name": "cell"}]})


def _results(t: Path, results) -> tuple[Path, Path]:
    """(gt, pred): the val JSON of a clean dataset and ``results`` written as the predictions file."""
    root = dataset(t)
    pred = t / "pred.json"
    pred.write_text(results if isinstance(results, str) else json.dumps(results))
    return ann_file(root, "val"), pred


def _one_result(image_id: int = 1, category_id: int = 1) -> list[dict]:
    return [{"image_id": image_id, "category_id": category_id, "bbox": [6, 6, 12, 12], "score": 0.9}]


def _score(t: Path, results) -> list[str]:
    gt, pred = _results(t, results)
    return ["score", f"gt={gt}", f"pred={pred}", f"out={t / 'score'}"]


def _resnet34_state_dict(t: Path) -> Path:
    import torch

    from segbench.models.maskrcnn import build_maskrcnn

    p = t / "resnet34.pth"
    torch.save(build_maskrcnn(backbone="resnet34_fpn", num_classes=1, weights=None).state_dict(), p)
    return p


def _truncated_checkpoint(t: Path) -> Path:
    import torch

    p = t / "half.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1000)}, "segbench": {"format": 1}}, p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


def _predict_folder(t: Path, *, bad: bool) -> Path:
    from PIL import Image

    folder = t / "pictures"
    folder.mkdir()
    Image.fromarray(_pixels(*SQUARES[0])).save(folder / "good.png")
    if bad:
        truncate_image(folder / "bad.png")
    return folder


def predict(t: Path, source: Path) -> list[str]:
    return ["predict", f"input={source}", "method=threshold", f"output={t / 'pred'}", "progress=false"]


def _marker_not_created(t: Path, obs: Observed) -> None:
    assert not (t / "PWNED").exists(), "the checkpoint's pickled code ran"


def _predict_skip_counted(t: Path, obs: Observed) -> None:
    s = json.loads((t / "pred" / "summary.json").read_text())
    assert s["processed"] == 1
    assert [x["file"] for x in s["skipped"]] == ["bad.png"]
    assert "bad.png" in s["skipped"][0]["reason"]
    assert (t / "pred" / "overlays" / "good.png").is_file()
    assert not (t / "pred" / "overlays" / "bad.png").exists()
    assert list(json.loads((t / "pred" / "images.json").read_text())) == ["good.png"]


def _one_dropped(reason: str) -> Callable[[Path, Observed], None]:
    """``data stats`` counts the kept objects only, and the dropped one under its problem kind."""

    def check(t: Path, obs: Observed) -> None:
        assert "[train] 2 images (1 without objects), 1 instances" in obs.out, obs.out
        assert f"dropped annotations: {reason}: 1" in obs.out, obs.out

    return check


# fmt: off
CASES: list[Case] = [
    # -- datasets ---------------------------------------------------------------------------------
    Case("missing_image/check", lambda t: check(_missing_image(t)), 1,
         ("missing_image (1)", "image 2 'b.png'", "not found", "fix:", "data.image_root"),
         "data check: images/b.png deleted", "missing_image with image id + file + fix"),
    Case("missing_image/train", lambda t: train(t, _missing_image(t)), 2,
         ("1 image file(s) named in", "instances_train.json", "missing from", "b.png", "data.image_root",
          "segbench data check"),
         "train: images/b.png deleted", "stopped before the model is built, names JSON, file, key, fix"),
    Case("truncated_image/train", lambda t: train(t, _truncated(t)), 2,
         ("cannot read image", "b.png", "truncated", "segbench data check"),
         "train (debug=fdr, DataLoader worker): b.png truncated",
         "stopped at the first batch, the worker's message without its traceback", before_work=False),
    Case("truncated_image/check", lambda t: check(_truncated(t)), 1,
         ("unreadable_image (1)", "image 2 'b.png'", "re-export"),
         "data check: b.png cut to half its bytes", "unreadable_image with id + file + fix"),
    Case("truncated_image/eval", lambda t: evaluate(t, _truncated(t, "val")), 2,
         ("d.png", "truncated", "segbench data check"),
         "eval: val image d.png truncated", "names the file, points to data check"),
    Case("size_mismatch/check", lambda t: check(_with(_size_40)(t)), 1,
         ("size_mismatch (1)", "image 2 'b.png'", "40x40", "32x32", "fix=true"),
         "data check: JSON says 40x40, file is 32x32", "size_mismatch with both sizes + fix"),
    Case("size_mismatch/compare", lambda t: compare(t, _with(_size_40, "val")(t), "methods=[threshold]"), 2,
         ("d.png", "image id 2", "40x40", "32x32", "fix the JSON's width/height"),
         "compare: val JSON says 40x40 for a 32x32 file", "names file, id, sizes and fix"),
    Case("duplicate_image_id/check", lambda t: check(_with(_dup_image_id)(t)), 1,
         ("duplicate_image_id (1)", "repeats id 1", "give each image its own id"),
         "data check: two images with id 1", "duplicate_image_id + fix"),
    Case("duplicate_image_id/stats", lambda t: stats(_with(_dup_image_id)(t)), 2,
         ("instances_train.json", "duplicate image id 1", "'b.png'", "fix=true"),
         "data stats: two images with id 1", "names JSON, id, file and fix"),
    Case("duplicate_ann_id/check", lambda t: check(_with(_dup_ann_id)(t)), 1,
         ("duplicate_ann_id (1)", "ann 1", "repeats id 1", "renumbers"),
         "data check: two annotations with id 1", "duplicate_ann_id + fix"),
    Case("duplicate_ann_id/stats", lambda t: stats(_with(_dup_ann_id)(t)), 0,
         ("dropped 1 annotation(s)", "duplicate_ann_id (ids 1)"),
         "data stats: two annotations with id 1", "the second is dropped, counted and logged",
         check=_one_dropped("duplicate_ann_id")),
    Case("unknown_image/check", lambda t: check(_with(_unknown_image)(t)), 1,
         ("unknown_image (1)", "ann 2", "image_id 99", "add the image"),
         "data check: annotation 2 of image id 99", "unknown_image + ids + fix"),
    Case("unknown_image/stats", lambda t: stats(_with(_unknown_image)(t)), 0,
         ("dropped 1 annotation(s)", "unknown_image (ids 2)"),
         "data stats: annotation 2 of image id 99", "dropped, counted and logged",
         check=_one_dropped("unknown_image")),
    Case("unknown_category/check", lambda t: check(_with(_unknown_category)(t)), 1,
         ("unknown_category (1)", "ann 2", "category_id 7", "add the category"),
         "data check: annotation 2 of category 7", "unknown_category + ids + fix"),
    Case("unknown_category/compare",
         lambda t: compare(t, _with(_unknown_category, "val")(t), "methods=[threshold]"), 0,
         ("instances_val.json: dropped 1 annotation(s)", "unknown_category (ids 2)"),
         "compare: val annotation 2 of category 7", "dropped, counted and logged; report written",
         check=lambda t, o: (t / "compare" / "report.html").is_file() or pytest.fail("no report")),
    Case("polygon_2_points/check", lambda t: check(_with(_two_points)(t)), 1,
         ("bad_polygon (1)", "ann 1", "2 point(s)", "redraw the object"),
         "data check: polygon [[6,6,18,18]]", "bad_polygon + id + fix"),
    Case("polygon_2_points/stats", lambda t: stats(_with(_two_points)(t)), 0,
         ("dropped 1 annotation(s)", "bad_polygon (ids 1)"),
         "data stats: polygon [[6,6,18,18]]", "dropped, counted and logged",
         check=_one_dropped("bad_polygon")),
    Case("odd_coordinates/check", lambda t: check(_with(_odd_coords)(t)), 1,
         ("bad_polygon (1)", "ann 1", "odd number of coordinates (7)"),
         "data check: polygon of 7 numbers", "bad_polygon + id + fix"),
    Case("odd_coordinates/stats", lambda t: stats(_with(_odd_coords)(t)), 0,
         ("dropped 1 annotation(s)", "bad_polygon (ids 1)"),
         "data stats: polygon of 7 numbers", "dropped, counted and logged",
         check=_one_dropped("bad_polygon")),
    Case("rle_size/check", lambda t: check(_with(_rle_16)(t)), 1,
         ("rle_size_mismatch (1)", "ann 1", "RLE size 16x16", "image is 32x32", "export the mask"),
         "data check: 16x16 RLE on a 32x32 image", "rle_size_mismatch + sizes + fix"),
    Case("rle_size/eval", lambda t: evaluate(t, _with(_rle_16, "val")(t)), 0,
         ("instances_val.json: dropped 1 annotation(s)", "rle_size_mismatch (ids 1)"),
         "eval: val annotation 1 is a 16x16 RLE on a 32x32 image", "dropped, counted and logged",
         check=lambda t, o: json.loads((t / "eval" / "metrics.json").read_text())["num_gt"] == 1
         or pytest.fail("the dropped object was scored")),
    Case("box_negative/check", lambda t: check(_with(_negative_box)(t)), 1,
         ("bad_box (1)", "ann 1", "[18, 6, -12, 12]", "negative size", "[x, y, width, height]"),
         "data check: bbox [18,6,-12,12]", "bad_box + id + fix"),
    Case("box_outside/check", lambda t: check(_with(_box_outside)(t)), 1,
         ("bad_box (1)", "ann 1", "entirely outside the 32x32 image"),
         "data check: bbox [40,40,5,5] on a 32x32 image", "bad_box + id + fix"),
    Case("box_mask_disagree/check", lambda t: check(_with(_box_mask_disagree)(t)), 1,
         ("box_mask_mismatch (1)", "ann 1", "[0, 0, 5, 5]", "[6, 6, 12, 12]", "recomputes it from the mask"),
         "data check: bbox [0,0,5,5], mask at [6,6,12,12]", "box_mask_mismatch + both boxes + fix"),
    Case("empty_mask/check", lambda t: check(_with(_empty_mask)(t)), 1,
         ("empty_mask (1)", "ann 1", "redraw the object"),
         "data check: polygon of 3 collinear points", "empty_mask + id + fix"),
    Case("empty_mask/stats", lambda t: stats(_with(_empty_mask)(t)), 0,
         ("dropped 1 annotation(s)", "empty_mask (ids 1)"),
         "data stats: polygon of 3 collinear points", "dropped, counted and logged",
         check=_one_dropped("empty_mask")),
    Case("category_id_0/check", lambda t: check(_with(_category_zero)(t)), 0,
         ("WARNING category_id_zero (1)", "category 0 'background'", "remove it if it is one"),
         "data check: categories 0 'background' and 1", "category_id_zero warning + advice"),
    Case("cvat_iscrowd/check", lambda t: check(_with(_cvat_crowd)(t)), 0,
         ("WARNING crowd_object (1)", "ann 1", "iscrowd=1 on one connected object", "set iscrowd=0"),
         "data check: one ordinary object exported as iscrowd=1 RLE", "crowd_object warning + fix"),
    Case("too_many_objects/check", lambda t: check(_with(_five_objects)(t), "max_dets=3"), 0,
         ("WARNING too_many_objects (1)", "image 1 'a.png'", "5 objects > max_dets=3",
          "model.net.box_detections_per_img"),
         "data check max_dets=3: 5 objects in one image", "too_many_objects warning + key to raise"),
    Case("file_name_dotdot/check", lambda t: check(_with(_dotdot)(t)), 1,
         ("unsafe_file_name (1)", "image 2 '../x.png'", "contains '..'"),
         "data check: file_name '../x.png'", "unsafe_file_name + id + fix"),
    Case("file_name_dotdot/train", lambda t: train(t, _with(_dotdot)(t)), 2,
         ("instances_train.json", "image id 2", "'../x.png'", "move the image inside that folder"),
         "train: file_name '../x.png'", "stopped before training, names JSON, id, name, fix"),
    # an absolute path inside the dataset folder is found (issue 13: the lookup accepts it); outside it
    # is refused (tests/test_quirks.py)
    Case("file_name_absolute/stats", lambda t: stats(edit(dataset(t), _absolute(t / "ds"))), 0,
         ("[train] 2 images", "instances per class: blob=2"),
         "data stats: file_name '/abs/.../b.png' inside data.root", "found: the image is read"),
    Case("file_name_absolute/check", lambda t: check(edit(dataset(t), _absolute(t / "ds"))), 0,
         ("WARNING indirect_file_name (1)", "image 2", "absolute path inside the dataset folder",
          "fix=true rewrites it to 'b.png'"),
         "data check: file_name '/abs/.../b.png' inside data.root", "indirect_file_name warning + fix"),
    Case("invalid_json/check", lambda t: check(_write_json_text('{"images": [')(t)), 1,
         ("malformed_json (1)", "instances_train.json", "not valid JSON", "re-export"),
         "data check: instances_train.json cut short", "malformed_json + file + fix"),
    Case("invalid_json/train", lambda t: train(t, _write_json_text('{"images": [')(t)), 2,
         ("instances_train.json is not valid JSON", "line 1", "re-export the annotations"),
         "train: instances_train.json cut short", "stopped before training, names file + position + fix"),
    Case("json_list/stats", lambda t: stats(_write_json_text("[]")(t)), 2,
         ("instances_train.json", "a COCO file is a JSON object with 'images'"),
         "data stats: instances_train.json is []", "names the file and what COCO needs"),
    Case("json_list/check", lambda t: check(_write_json_text("[]")(t)), 1,
         ("malformed_json (1)", "instances_train.json", "JSON object"),
         "data check: instances_train.json is []", "malformed_json + file"),
    Case("empty_root/stats", lambda t: stats(_empty_root(t)), 2,
         ("data.root=", "empty", "annotations/instances_<split>.json", "data.<split>_ann=FILE"),
         "data stats: data.root is an empty folder", "names data.root and the layout expected"),
    Case("empty_root/train", lambda t: train(t, _empty_root(t)), 2,
         ("no annotations for split 'train'", "instances_train.json does not exist", "data.<split>_ann=FILE"),
         "train: data.root is an empty folder", "stopped before training, names file + key"),
    Case("no_annotations_folder/eval", lambda t: evaluate(t, _no_annotations(t)), 2,
         ("no annotations for split 'val'", "annotations/instances_val.json does not exist", "data.<split>_ann=FILE"),
         "eval: images/ but no annotations/", "names the file it looked for + key"),
    Case("no_annotations_folder/check", lambda t: check(_no_annotations(t)), 2,
         ("data.root=", "annotations/instances_<split>.json", "data.<split>_ann=FILE"),
         "data check: images/ but no annotations/", "names data.root and the layout expected"),
    Case("train_val_categories/train", lambda t: train(t, _other_val_categories(t)), 2,
         ("instances_val.json (['cell'])", "instances_train.json (['blob'])", "same category list"),
         "train: train has 'blob', val has 'cell'", "stopped before training, names both files + classes"),
    Case("train_val_categories/eval", lambda t: evaluate(t, _other_val_categories(t)), 2,
         ("trained on classes ['blob']", "instances_val.json has ['cell']", "same categories"),
         "eval: 'blob' checkpoint on a 'cell' val split", "names checkpoint classes, file, classes"),
    # -- configs ----------------------------------------------------------------------------------
    Case("unknown_key/train", lambda t: train(t, dataset(t), "data.batchsize=2"), 2,
         ("data.batchsize", "--cfg"),
         "train data.batchsize=2 (typo)", "names the key, how to list keys"),
    Case("batch_size_abc/train", lambda t: train(t, dataset(t), "data.batch_size=abc"), 2,
         ("data.batch_size", "'abc'", "positive integer"),
         "train data.batch_size=abc", "names key, value, what is valid"),
    Case("batch_size_0/train", lambda t: train(t, dataset(t), "data.batch_size=0"), 2,
         ("data.batch_size", "got 0", "positive integer"),
         "train data.batch_size=0", "names key, value, what is valid"),
    Case("unknown_group_option/train", lambda t: train(t, dataset(t), "model=nope"), 2,
         ("model", "nope", "maskrcnn_r18"),
         "train model=nope", "names the group and the valid options"),
    Case("missing_required/eval", lambda t: ["eval", f"data.root={dataset(t)}"], 2,
         ("missing required value(s): ckpt_path", "ckpt_path=..."),
         "eval without ckpt_path", "names the key to pass"),
    Case("bad_experiment/train", lambda t: train(t, dataset(t), "experiment=nope"), 2,
         ("experiment", "nope", "synth_cpu"),
         "train experiment=nope", "names the group and the valid experiments"),
    Case("persistent_workers/train",
         lambda t: train(t, dataset(t), "data.persistent_workers=true", "data.num_workers=0"), 2,
         ("data.persistent_workers=true", "data.num_workers > 0"),
         "train data.persistent_workers=true data.num_workers=0", "stopped before training, names both keys"),
    Case("unknown_method/compare", lambda t: compare(t, dataset(t), "methods=[nope]"), 2,
         ("'nope'", "valid methods: maskrcnn, threshold"),
         "compare methods=[nope]", "names the method and the valid ones"),
    Case("maskrcnn_without_ckpt/compare", lambda t: compare(t, dataset(t), "methods=[maskrcnn]"), 2,
         ("'maskrcnn'", "no checkpoint", "ckpt_path=FILE"),
         "compare methods=[maskrcnn] without ckpt_path", "names the key to pass"),
    # -- score ------------------------------------------------------------------------------------
    Case("results_of_other_dataset/score", lambda t: _score(t, _one_result(image_id=999)), 2,
         ("pred.json", "image id(s)", "[999]", "another dataset"),
         "score: results for image id 999", "names file + ids + likely cause"),
    Case("results_unknown_category/score", lambda t: _score(t, _one_result(category_id=99)), 2,
         ("pred.json", "category id(s) [99]", "original category ids"),
         "score: results with category_id 99", "names file + id + fix"),
    Case("results_is_dataset/score",
         lambda t: ["score", f"gt={ann_file(dataset(t), 'val')}", f"pred={ann_file(t / 'ds', 'val')}",
                    f"out={t / 'score'}"], 2,
         ("instances_val.json is a COCO dataset, not a results file", "pred="),
         "score pred=<a COCO dataset JSON>", "says which is which"),
    Case("results_not_json/score", lambda t: _score(t, "image_id,score\n1,0.9\n"), 2,
         ("pred.json is not valid JSON",),
         "score pred=<a CSV file>", "names the file"),
    # -- checkpoints ------------------------------------------------------------------------------
    Case("missing_checkpoint/eval", lambda t: evaluate(t, dataset(t), t / "nope.ckpt"), 2,
         ("nope.ckpt", "not found"),
         "eval ckpt_path=<no such file>", "names the file"),
    Case("other_architecture/train",
         lambda t: train(t, dataset(t), f"model.net.weights={_resnet34_state_dict(t)}"), 2,
         ("resnet34.pth", "does not fit", "'resnet18_fpn'", "backbone"),
         "train resnet18 with model.net.weights=<resnet34 state_dict>",
         "stopped before training, names file, backbone, fix"),
    Case("code_running_pickle/eval", lambda t: evaluate(t, dataset(t), malicious_pickle(t)[0]), 2,
         ("evil.ckpt", "refusing to load", "run code"),
         "eval ckpt_path=<pickle whose __reduce__ runs code>", "refused, the code did not run",
         check=_marker_not_created),
    Case("code_running_pickle/train",
         lambda t: train(t, dataset(t), f"model.net.weights={malicious_pickle(t)[0]}"), 2,
         ("evil.ckpt", "refusing to load", "run code"),
         "train model.net.weights=<pickle whose __reduce__ runs code>",
         "stopped before training, refused, the code did not run", check=_marker_not_created),
    Case("random_bytes/eval", lambda t: evaluate(t, dataset(t), random_bytes(t / "garbage.ckpt")), 2,
         ("garbage.ckpt", "cannot read checkpoint", "truncated"),
         "eval ckpt_path=<4 KiB of random bytes>", "names the file"),
    Case("random_bytes/train",
         lambda t: train(t, dataset(t), f"model.net.weights={random_bytes(t / 'garbage.pth')}"), 2,
         ("garbage.pth", "not a plain file of tensors"),
         "train model.net.weights=<4 KiB of random bytes>", "stopped before training, names the file"),
    Case("truncated_checkpoint/eval", lambda t: evaluate(t, dataset(t), _truncated_checkpoint(t)), 2,
         ("half.ckpt", "cannot read checkpoint", "truncated"),
         "eval ckpt_path=<the first half of a checkpoint>", "names the file, says it may be truncated"),
    # -- predict ----------------------------------------------------------------------------------
    Case("empty_folder/predict", lambda t: predict(t, _empty_root(t)), 2,
         ("no image files in", "empty", "input="),
         "predict input=<empty folder>", "names the folder and what input= takes"),
    Case("one_truncated_image/predict", lambda t: predict(t, _predict_folder(t, bad=True)), 0,
         ("skipped bad.png", "processed 1 image(s), skipped 1 (bad.png)"),
         "predict input=<folder: good.png + truncated bad.png>",
         "good.png predicted, bad.png skipped, logged and counted in summary.json",
         check=_predict_skip_counted),
    Case("missing_input/predict", lambda t: predict(t, t / "nowhere"), 2,
         ("input=", "nowhere", "does not exist"),
         "predict input=<no such path>", "names the path"),
]
# fmt: on


def run_case(case: Case, tmp: Path) -> Observed:
    return run_cli(case.build(tmp))


def assert_outcome(case: Case, tmp: Path, obs: Observed) -> None:
    """Every assertion a case makes (shared by the test and :func:`corpus_table`)."""
    everything = "\n".join((obs.out, obs.err, obs.log))
    assert "Traceback" not in everything, everything[-3000:]
    assert "internal error" not in obs.err, obs.err[-3000:]
    assert obs.code == case.code, f"exit {obs.code}, expected {case.code}\n{everything[-3000:]}"
    if case.code == 2:
        lines = [x for x in obs.err.splitlines() if x.startswith("segbench: error: ")]
        assert len(lines) == 1, obs.err[-3000:]
        where = lines[0]
    else:
        where = obs.out + "\n" + obs.log
    missing = [m for m in case.messages if m not in where]
    assert not missing, f"{missing} not in:\n{where[-3000:]}"
    if obs.argv[0] == "train" and case.code == 2 and case.before_work:
        assert "segbench.training: training " not in obs.log, "the Trainer had started"
    if case.check is not None:
        case.check(tmp, obs)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_corpus(case: Case, tmp_path: Path) -> None:
    obs = run_case(case, tmp_path)
    assert_outcome(case, tmp_path, obs)


def corpus_table() -> list[tuple[str, str, str]]:
    """Run every case in a temporary folder: rows of (case, expected outcome, observed outcome)."""
    import tempfile

    rows = []
    root_logger = logging.getLogger()
    null = logging.NullHandler()
    root_logger.addHandler(null)  # keeps the command's logging.basicConfig from writing to stderr
    try:
        with tempfile.TemporaryDirectory() as d:
            for k, case in enumerate(CASES):
                tmp = Path(d) / f"{k:02d}"
                tmp.mkdir()
                obs = run_case(case, tmp)
                try:
                    assert_outcome(case, tmp, obs)
                    verdict = ""
                except AssertionError as e:
                    verdict = " [MISMATCH: " + " ".join(str(e).split())[:200] + "]"
                seen = obs.summary(case.messages).replace(str(tmp), "<tmp>").replace(d, "<tmpdir>")
                rows.append((case.name, f"exit {case.code}: {case.expected}", seen + verdict))
    finally:
        root_logger.removeHandler(null)
        _CACHE.clear()
    return rows


def test_the_code_running_pickle_really_runs_code(tmp_path: Path) -> None:
    """The refusal cases mean something: loaded with the full unpickler, the payload creates its marker."""
    import torch

    path, marker = malicious_pickle(tmp_path)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_the_docstring_table_lists_every_case() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) >= 25
    documented = [line.split("|")[1].strip() for line in __doc__.splitlines() if line.startswith("|")][2:]
    assert documented == names
