"""`segbench predict` and `segbench export`: exports reload and match PyTorch, failures leave no file,
predictions from a checkpoint, an ONNX and a TorchScript export agree, unreadable images are skipped."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from segbench.cli import main
from segbench.export import (
    FILES,
    REPORT_FILE,
    OnnxRuntime,
    load_exported_model,
    load_exported_state_dict,
)
from segbench.models.checkpoint import load_model
from segbench.models.segmenter import image_to_tensor

README = Path(__file__).resolve().parents[1] / "README.md"
CAT_IDS = {1: 10, 2: 20, 3: 30}  # the synthetic dataset's categories, renumbered: results must use these
TINY = ["model.net.min_size=64", "model.net.max_size=64", "model.net.box_detections_per_img=20"]

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning",
    "ignore::FutureWarning",
    "ignore::DeprecationWarning",
    "ignore::torch.jit.TracerWarning",
)


def _renumber_categories(root: Path) -> None:
    for split in ("train", "val"):
        p = root / "annotations" / f"instances_{split}.json"
        doc = json.loads(p.read_text())
        for c in doc["categories"]:
            c["id"] = CAT_IDS[c["id"]]
        for a in doc["annotations"]:
            a["category_id"] = CAT_IDS[a["category_id"]]
        p.write_text(json.dumps(doc))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A 2-step 'trained' ResNet-18 Mask R-CNN at 64 px (category ids 10, 20, 30)."""
    from segbench.data.synthetic import generate

    root = tmp_path_factory.mktemp("pe_data")
    generate(root, num_train=8, num_val=4, image_size=64, min_radius=6, max_radius=14)
    _renumber_categories(root)
    out = tmp_path_factory.mktemp("pe_train")
    argv = ["train", "debug=tiny", f"data.root={root}", f"paths.output_dir={out}", "trainer.max_steps=2"]
    assert main([*argv, "test_after_fit=false", *TINY]) == 0
    (ckpt,) = out.glob("train/default/*/checkpoints/last.ckpt")
    return ckpt


@pytest.fixture(scope="session")
def exported(tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pe_export")
    code = main(["export", f"ckpt_path={tiny_ckpt}", f"out={out}", "formats=[state_dict,torchscript,onnx]"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A normal image, a greyscale one and a truncated PNG."""
    from segbench.data.synthetic import SynthConfig, make_image

    d = tmp_path_factory.mktemp("pe_images")
    im, _, _ = make_image(3, SynthConfig(image_size=64))
    Image.fromarray(im).save(d / "a_normal.png")
    im2, _, _ = make_image(4, SynthConfig(image_size=64))
    Image.fromarray(im2[..., 1][:, :56]).save(d / "b_grey.png")  # greyscale, 64 x 56
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="PNG")
    (d / "c_broken.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return d


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------
def test_export_writes_checked_files_and_report(exported):
    report = json.loads((exported / REPORT_FILE).read_text())
    card = json.loads((exported / "model.json").read_text())
    tol = report["tolerances"]
    assert report["ok"] is True
    assert [c["image"] for c in report["check_images"]] == ["blank", "shapes", "noise"]
    assert len({(c["height"], c["width"]) for c in report["check_images"]}) == 3  # three input sizes
    assert max(report["reference"]["detections"].values()) >= 10  # a crowded case was checked
    written = {k: FILES[k] for k in ("state_dict", "torchscript", "onnx")}  # the default formats
    for fmt, name in written.items():
        e = report["formats"][fmt]
        assert e["status"] == "ok" and e["file"] == name and (exported / name).is_file()
        assert e["max_box_diff"] <= tol["box"]
        assert e["max_score_diff"] <= tol["score"]
        assert e["max_mask_diff"] <= tol["mask"]
        assert e["ms_per_image"] > 0
        assert [p["detections"] for p in e["images"]] == list(report["reference"]["detections"].values())
    assert report["formats"]["state_dict"]["max_box_diff"] == 0.0  # same code, same weights
    assert card["files"] == written
    assert card["class_names"] == ["circle", "square", "triangle"]
    assert card["label_to_cat_id"] == {"1": 10, "2": 20, "3": 30}
    assert card["build"]["num_classes"] == 3 and card["build"]["weights"] is None
    assert card["image"]["min_size"] == [64] and len(card["image"]["mean"]) == 3
    assert not list(exported.glob("*.partial")) and not list(exported.glob("*.failed"))


def test_exports_reload_and_match_pytorch_on_a_new_image(exported, tiny_ckpt):
    """Independent of the report: each file, loaded back, agrees with the checkpoint on an unseen size."""
    model, _, _ = load_model(tiny_ckpt)  # RoI scales set: else this 44 x 64 first image would set wrong ones
    rng = np.random.default_rng(5)
    x = image_to_tensor(rng.integers(0, 256, (50, 72, 3), dtype=np.uint8))
    with torch.inference_mode():
        ref = {k: v.numpy() for k, v in model([x])[0].items()}
    assert len(ref["scores"]) > 0

    sd_model, card = load_exported_state_dict(exported)
    with torch.inference_mode():
        got = sd_model([x])[0]
    np.testing.assert_array_equal(got["boxes"].numpy(), ref["boxes"])

    for name in (FILES["torchscript"], FILES["onnx"]):
        runtime, card2 = load_exported_model(exported / name)
        assert card2["class_names"] == card["class_names"]
        out = runtime(x)
        assert out["masks"].shape[1:] == (1, 50, 72)
        n = len(ref["scores"])
        assert len(out["scores"]) == n
        # An untrained model's scores nearly tie: pair detections by label and box, not by rank; the
        # sets may differ only at the top-k cut (scores within 1e-3 of the lowest kept score).
        rows, cols = _pairs(ref["boxes"], ref["labels"], out["boxes"], out["labels"])
        ok = (ref["labels"][rows] == out["labels"][cols]) & (
            np.abs(ref["boxes"][rows] - out["boxes"][cols]).max(axis=1) <= 1e-2
        )
        rows, cols = rows[ok], cols[ok]
        assert len(rows) >= n - 2
        for side, used in ((ref, rows), (out, cols)):
            rest = np.setdiff1d(np.arange(n), used)
            assert np.all(side["scores"][rest] - side["scores"].min() < 1e-3)
        np.testing.assert_allclose(out["scores"][cols], ref["scores"][rows], atol=1e-4)
        np.testing.assert_allclose(out["masks"][cols], ref["masks"][rows], atol=1e-3)


def _pairs(boxes_a, labels_a, boxes_b, labels_b) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs of two detection sets: same label, nearest boxes."""
    a, b = np.asarray(boxes_a, np.float64), np.asarray(boxes_b, np.float64)
    if not len(a) or not len(b):
        return np.zeros(0, int), np.zeros(0, int)
    cost = np.abs(a[:, None] - b[None]).max(axis=2)
    cost += 1e6 * (np.asarray(labels_a)[:, None] != np.asarray(labels_b)[None])
    return linear_sum_assignment(cost)


def test_exported_resize_matches_eager_pytorch_on_every_size(tmp_path):
    """torchvision's scripted/traced resize rounds its float32 scale; ExactResizeTransform does not."""
    import onnxruntime as ort
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from segbench.models.transforms import ExactResizeTransform

    args = (64, 64, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    eager = GeneralizedRCNNTransform(*args).eval()
    exact = ExactResizeTransform(*args).eval()

    class Resize(torch.nn.Module):
        def __init__(self, t):
            super().__init__()
            self.t = t

        def forward(self, x):
            return self.t.resize(x)[0]

    scripted = torch.jit.script(Resize(exact))
    path = tmp_path / "resize.onnx"
    torch.onnx.export(
        Resize(exact), (torch.rand(3, 64, 80),), str(path), opset_version=17, dynamo=False,
        input_names=["image"], dynamic_axes={"image": [1, 2]},
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sizes = [(h, w) for h in range(24, 140, 5) for w in range(24, 140, 9)]
    for h, w in [*sizes, (31, 30), (48, 67)]:  # the last two: float32 arithmetic gives one pixel less
        x = torch.rand(3, h, w)
        want = eager.resize(x)[0]
        assert torch.equal(scripted(x), want), (h, w)
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == tuple(want.shape), (h, w)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_onnx_export_is_one_image_per_call(exported):
    runtime, _ = load_exported_model(exported / FILES["onnx"])
    x = torch.rand(2, 3, 64, 64).numpy()
    with pytest.raises(Exception, match="Invalid rank for input"):
        runtime.session.run(None, {"image": x})


def test_readme_lines_load_the_state_dict(exported, tmp_path, monkeypatch):
    text = README.read_text()
    section = text.split("## Predict and export", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's 'Predict and export' section has no python block"
    for name in ("model.pt", "model.json"):
        (tmp_path / name).symlink_to(exported / name)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)
    from torchvision.models.detection import MaskRCNN

    model = ns["model"]
    assert type(model) is MaskRCNN and not model.training
    ref, _ = load_exported_state_dict(exported)
    x = torch.rand(3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_array_equal(model([x])[0]["scores"].numpy(), ref([x])[0]["scores"].numpy())


def test_export_of_a_model_that_detects_nothing(tiny_ckpt, tmp_path):
    """Zero detections go through TorchScript and onnxruntime (empty outputs) and pass the check."""
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ckpt["segbench"]["net"]["box_score_thresh"] = 0.999
    silent = tmp_path / "silent.ckpt"
    torch.save(ckpt, silent)
    out = tmp_path / "export"
    mine = tmp_path / "mine.png"
    Image.fromarray(np.full((40, 90, 3), 200, np.uint8)).save(mine)
    argv = [
        "export",
        f"ckpt_path={silent}",
        f"out={out}",
        "formats=[torchscript,onnx]",
        f"check_images=[{mine}]",
    ]
    assert main(argv) == 0
    report = json.loads((out / REPORT_FILE).read_text())
    assert [c["image"] for c in report["check_images"]] == ["blank", "shapes", "noise", "mine.png"]
    assert set(report["reference"]["detections"].values()) == {0}
    for fmt in ("torchscript", "onnx"):
        e = report["formats"][fmt]
        assert e["status"] == "ok" and [p["detections"] for p in e["images"]] == [0, 0, 0, 0]
    runtime, _ = load_exported_model(out / FILES["onnx"])
    o = runtime(torch.rand(3, 40, 48))
    assert o["boxes"].shape == (0, 4) and o["masks"].shape == (0, 1, 40, 48)


def test_a_format_that_fails_its_check_is_reported_and_removed(tiny_ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"stale file of an earlier export")
    real_call = OnnxRuntime.__call__

    def perturbed(self, image):
        o = real_call(self, image)
        o["boxes"] = o["boxes"] + 0.5  # tolerance 0.1 px
        return o

    monkeypatch.setattr(OnnxRuntime, "__call__", perturbed)
    code = main(["export", f"ckpt_path={tiny_ckpt}", f"out={out}", "formats=[onnx,state_dict]"])
    printed = capsys.readouterr().out
    assert code == 1
    report = json.loads((out / REPORT_FILE).read_text())
    onnx = report["formats"]["onnx"]
    assert onnx["status"] == "failed" and onnx["file"] is None
    assert "box difference" in onnx["error"] and 0.49 < onnx["max_box_diff"] < 0.51
    assert report["formats"]["state_dict"]["status"] == "ok"
    assert report["ok"] is False
    assert not (out / "model.onnx").exists() and not list(out.glob("model.onnx*"))
    assert (out / "model.pt").is_file()
    assert json.loads((out / "model.json").read_text())["files"] == {"state_dict": "model.pt"}
    assert "onnx FAILED" in printed


def test_unknown_format_is_a_usage_error(tiny_ckpt, tmp_path, capsys):
    assert main(["export", f"ckpt_path={tiny_ckpt}", f"out={tmp_path}", "formats=[tflite]"]) == 2
    assert "unknown export format" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------
def _predict(source: list[str], folder: Path | str, out: Path, *extra: str) -> int:
    return main(["predict", *source, f"input={folder}", f"output={out}", "progress=false", *extra])


@pytest.fixture(scope="session")
def ckpt_predictions(tiny_ckpt, image_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pe_pred_ckpt")
    code = _predict([f"ckpt_path={tiny_ckpt}"], image_folder, out, "score_threshold=0.0", "batch_size=1")
    assert code == 0
    return out


def test_predict_folder_skips_the_corrupt_image(tiny_ckpt, image_folder, tmp_path, caplog):
    out = tmp_path / "pred"
    with caplog.at_level(logging.WARNING):
        code = _predict(
            [f"ckpt_path={tiny_ckpt}"], image_folder, out, "score_threshold=0.2", "save_masks=true"
        )
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("c_broken.png" in w and "truncated" in w for w in warnings)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 2 and [s["file"] for s in summary["skipped"]] == ["c_broken.png"]
    images = json.loads((out / "images.json").read_text())
    assert images == {
        "a_normal.png": {"id": 1, "height": 64, "width": 64},
        "b_grey.png": {"id": 2, "height": 64, "width": 56},
    }
    cats = json.loads((out / "categories.json").read_text())
    assert [(c["id"], c["name"]) for c in cats] == [(10, "circle"), (20, "square"), (30, "triangle")]
    results = json.loads((out / "predictions.json").read_text())
    assert results and all(r["score"] >= 0.2 for r in results)
    assert {r["category_id"] for r in results} <= {10, 20, 30}
    # valid COCO results: pycocotools loads them against the images + categories written beside them
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {
        "images": [
            {"id": v["id"], "file_name": k, "height": v["height"], "width": v["width"]}
            for k, v in images.items()
        ],
        "categories": cats,
        "annotations": [],
    }
    gt.createIndex()
    dt = gt.loadRes(results)
    assert len(dt.getAnnIds()) == len(results)
    for r in results:
        h, w = (64, 64) if r["image_id"] == 1 else (64, 56)
        assert r["segmentation"]["size"] == [h, w]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a_normal.png", "b_grey.png"]
    n_first = sum(r["image_id"] == 1 for r in results)
    masks = sorted((out / "masks").glob("a_normal_*.png"))
    assert len(masks) == n_first
    overlay = np.asarray(Image.open(out / "overlays" / "a_normal.png"))
    assert overlay.shape == (64, 64, 3)
    assert not np.array_equal(overlay, np.asarray(Image.open(image_folder / "a_normal.png")))


def test_predict_fails_when_no_image_can_be_read(tiny_ckpt, image_folder, tmp_path, capsys):
    code = _predict([f"ckpt_path={tiny_ckpt}"], image_folder / "c_broken.png", tmp_path / "p")
    assert code == 2
    assert "could be read" in capsys.readouterr().err


def _match(a: list[dict], b: list[dict]) -> list[tuple[dict, dict]]:
    """One-to-one pairs of two result lists of one image (same category, nearest boxes)."""
    rows, cols = _pairs(
        [r["bbox"] for r in a],
        [r["category_id"] for r in a],
        [r["bbox"] for r in b],
        [r["category_id"] for r in b],
    )
    return [(a[i], b[j]) for i, j in zip(rows, cols, strict=True)]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "state_dict"])
def test_predict_with_an_export_matches_the_checkpoint(
    fmt, exported, image_folder, ckpt_predictions, tmp_path
):
    out = tmp_path / fmt
    pattern = f"{image_folder}/*.png"  # a glob this time: the same three files
    code = _predict([f"exported={exported / FILES[fmt]}"], pattern, out, "score_threshold=0.0")
    assert code == 0
    ref = json.loads((ckpt_predictions / "predictions.json").read_text())
    got = json.loads((out / "predictions.json").read_text())
    assert json.loads((out / "images.json").read_text()) == json.loads(
        (ckpt_predictions / "images.json").read_text()
    )
    assert json.loads((out / "categories.json").read_text()) == json.loads(
        (ckpt_predictions / "categories.json").read_text()
    )
    assert len(ref) > 10
    for image_id in (1, 2):
        a = [r for r in ref if r["image_id"] == image_id]
        b = [r for r in got if r["image_id"] == image_id]
        assert len(a) == len(b)
        pairs = _match(a, b)
        assert len(pairs) == len(a)
        for ra, rb in pairs:
            assert ra["category_id"] == rb["category_id"]
            np.testing.assert_allclose(ra["bbox"], rb["bbox"], atol=0.02)
            assert abs(ra["score"] - rb["score"]) < 1e-4
            iou = mask_utils.iou([ra["segmentation"]], [rb["segmentation"]], [0])[0, 0]
            assert iou > 0.95 or mask_utils.area(ra["segmentation"]) < 5


def test_predict_with_a_baseline(image_folder, tmp_path):
    from segbench.baselines import build_baseline

    params = build_baseline("threshold", method="otsu").save(tmp_path / "threshold.json")
    out = tmp_path / "pred"
    code = _predict([f"baseline_params={params}"], image_folder, out, "score_threshold=0.0")
    assert code == 0
    assert json.loads((out / "categories.json").read_text()) == [{"id": 1, "name": "object"}]
    results = json.loads((out / "predictions.json").read_text())
    assert results and {r["category_id"] for r in results} == {1}
    assert _predict(["method=sobel", f"baseline_params={params}"], image_folder, tmp_path / "x") == 2


def test_predict_needs_exactly_one_source(tiny_ckpt, exported, image_folder, tmp_path, capsys):
    assert _predict([], image_folder, tmp_path / "a") == 2
    assert "exactly one source" in capsys.readouterr().err
    both = [f"ckpt_path={tiny_ckpt}", f"exported={exported / FILES['onnx']}"]
    assert _predict(both, image_folder, tmp_path / "b") == 2


def test_exported_model_without_its_card_uses_the_embedded_one(exported, tmp_path):
    lone = tmp_path / "lone.onnx"
    lone.symlink_to(exported / FILES["onnx"])
    _, card = load_exported_model(lone)
    assert card["label_to_cat_id"] == {"1": 10, "2": 20, "3": 30}


def test_predict_uses_the_calibrated_thresholds_by_default(tiny_ckpt, image_folder, tmp_path, capsys):
    """A model whose scores are low (this barely trained one scores < 0.5 everywhere) returns nothing at
    the plain 0.5; with the per-class thresholds stored in its card (as training stores them after its
    final evaluation) the default run keeps the detections above each class's threshold, and an explicit
    score_threshold still wins. The export card carries the thresholds too."""
    import shutil

    from segbench.models.checkpoint import read_checkpoint, update_card

    ckpt = tmp_path / "calibrated.ckpt"
    shutil.copy(tiny_ckpt, ckpt)
    assert "score_thresholds" not in read_checkpoint(ckpt)["segbench"]
    assert _predict([f"ckpt_path={ckpt}"], image_folder, tmp_path / "plain", "score_threshold=0.5") == 0
    assert json.loads((tmp_path / "plain" / "predictions.json").read_text()) == []
    update_card(ckpt, score_thresholds={"circle": 0.06, "square": 0.06, "triangle": None})
    capsys.readouterr()
    assert _predict([f"ckpt_path={ckpt}"], image_folder, tmp_path / "cal") == 0
    assert "calibrated after training" in capsys.readouterr().out
    results = json.loads((tmp_path / "cal" / "predictions.json").read_text())
    summary = json.loads((tmp_path / "cal" / "summary.json").read_text())
    assert summary["score_threshold"] == {"circle": 0.06, "square": 0.06}
    assert results and all(r["score"] >= (0.06 if r["category_id"] in (10, 20) else 0.5) for r in results)
    assert _predict([f"ckpt_path={ckpt}"], image_folder, tmp_path / "over", "score_threshold=0.5") == 0
    assert json.loads((tmp_path / "over" / "predictions.json").read_text()) == []
    assert main(["export", f"ckpt_path={ckpt}", f"out={tmp_path / 'exp'}", "formats=[state_dict]"]) == 0
    card = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert card["score_thresholds"] == {"circle": 0.06, "square": 0.06, "triangle": None}


@pytest.mark.slow  # about a minute: an ONNX export of its own
def test_a_56_pixel_mask_head_exports_and_passes_the_parity_check(tmp_path):
    from segbench.export import export_checkpoint
    from segbench.models.module import MaskRCNNModule
    from segbench.training import save_checkpoint

    torch.manual_seed(0)
    net = {"backbone": "resnet18_fpn", "weights": None, "min_size": 64, "max_size": 64, "mask_resolution": 56}
    cats = [{"id": 1, "name": "a"}]
    module = MaskRCNNModule(
        net=net, num_classes=1, class_names=["a"], categories=cats, label_to_cat_id={1: 1}
    )
    ckpt = save_checkpoint(module, tmp_path / "m56.ckpt")
    report = export_checkpoint(ckpt, tmp_path / "out", formats=["state_dict", "torchscript", "onnx"])
    assert report["ok"], {k: v["error"] for k, v in report["formats"].items()}
    card = json.loads((tmp_path / "out" / "model.json").read_text())
    assert card["build"]["mask_resolution"] == 56


def test_score_floor_drops_only_the_boxes_predict_would_drop(tiny_ckpt, image_folder, tmp_path, capsys):
    """An export with score_floor keeps exactly the reference's detections at or above the floor (same
    boxes, scores and masks: a box below it can only suppress boxes below it in NMS), records the floor in
    its card, and refuses a predict threshold below it."""
    model, _, _ = load_model(tiny_ckpt)
    x = image_to_tensor(np.asarray(Image.open(image_folder / "a_normal.png").convert("RGB")))
    with torch.inference_mode():
        ref = {k: v.numpy() for k, v in model([x])[0].items()}
    assert len(ref["scores"]) >= 4
    floor = float(np.median(ref["scores"]))  # a detection's own score: kept (predict keeps score >= floor)
    out = tmp_path / "floored"
    code = main(["export", f"ckpt_path={tiny_ckpt}", f"out={out}", "formats=[torchscript]",
                 f"score_floor={floor!r}", "accuracy_images=0"])  # fmt: skip
    assert code == 0
    card = json.loads((out / "model.json").read_text())
    assert card["score_floor"] == pytest.approx(floor) and card["box_score_thresh"] < floor
    runtime, _ = load_exported_model(out / FILES["torchscript"])
    got = runtime(x)
    keep = ref["scores"] >= np.float32(floor)
    assert 0 < keep.sum() < len(keep) and len(got["scores"]) == keep.sum()
    rows, cols = _pairs(ref["boxes"][keep], ref["labels"][keep], got["boxes"], got["labels"])
    assert len(rows) == keep.sum()
    np.testing.assert_allclose(got["boxes"][cols], ref["boxes"][keep][rows], atol=1e-3)
    np.testing.assert_allclose(got["scores"][cols], ref["scores"][keep][rows], atol=1e-5)
    np.testing.assert_allclose(got["masks"][cols], ref["masks"][keep][rows], atol=1e-4)

    exported_file = f"exported={out / FILES['torchscript']}"
    capsys.readouterr()
    assert _predict([exported_file], image_folder, tmp_path / "low", f"score_threshold={floor / 2}") == 2
    err = capsys.readouterr().err
    assert "score_floor" in err and "export again with score_floor=null" in err
    assert _predict([exported_file], image_folder, tmp_path / "ok", f"score_threshold={floor}") == 0
    results = json.loads((tmp_path / "ok" / "predictions.json").read_text())
    assert results and min(r["score"] for r in results) >= floor - 1e-6

    assert main(["export", f"ckpt_path={tiny_ckpt}", f"out={tmp_path / 'bad'}", "score_floor=high"]) == 2
    assert "score_floor='high' is not valid" in capsys.readouterr().err
