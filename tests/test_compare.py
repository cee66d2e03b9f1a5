"""``segbench compare``: baselines fitted on train, the model, the leaderboard, bootstrap and the report."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from segbench.cli import main
from segbench.eval.compare import MethodResult, check_methods, pick_images, resample_coco
from segbench.eval.metrics import Evaluator, coco_evaluate, pr_curve
from segbench.types import Instances, SegbenchError

LEADERBOARD_SCORES = ("AP", "AP50", "AP75", "f1", "pq", "fg_iou", "fg_dice")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    from segbench.data.synthetic import generate

    root = tmp_path_factory.mktemp("tiny")
    generate(root, num_train=8, num_val=4, image_size=64, min_radius=6, max_radius=14)
    return root


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_root, tmp_path_factory) -> Path:
    """An untrained ResNet-18 Mask R-CNN, written by the training's own checkpoint writer."""
    from tests.helpers import untrained_checkpoint

    return untrained_checkpoint(
        tiny_root, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", size=64, detections=20
    )


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v:
                self.links.append(v)


def _local_links(html_file: Path) -> list[str]:
    p = _Links()
    p.feed(html_file.read_text(encoding="utf-8"))
    return [unquote(link) for link in p.links if not urlparse(link).scheme and not link.startswith("#")]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _check_report(out: Path, methods: list[str]) -> dict:
    html = out / "report.html"
    assert html.is_file() and (out / "report.md").is_file() and (out / "leaderboard.md").is_file()
    links = _local_links(html)
    assert any(x.endswith(".png") for x in links)
    missing = [x for x in links if not (out / x).is_file()]
    assert not missing, f"report.html links files that do not exist: {missing}"
    board = json.loads((out / "leaderboard.json").read_text())
    rows = board["rows"]
    assert sorted(r["method"] for r in rows) == sorted(methods)
    aps = [r["AP"] for r in rows]
    assert aps == sorted(aps, reverse=True)
    for r in rows:
        for k in LEADERBOARD_SCORES:
            assert r[k] is not None and 0.0 <= r[k] <= 1.0, (r["method"], k, r[k])
        assert r["ms_per_image"] > 0
        assert (out / "methods" / r["method"] / "results.json").is_file()
        assert (
            json.loads((out / "methods" / r["method"] / "metrics.json").read_text())["method"] == r["method"]
        )
    with open(out / "leaderboard.csv", newline="") as f:
        assert [r["method"] for r in csv.DictReader(f)] == [r["method"] for r in rows]
    return board


def test_compare_baselines_only_end_to_end(capsys, tiny_root, tmp_path):
    out = tmp_path / "cmp"
    methods = ["threshold", "multi_threshold", "sobel", "laplace", "kmeans"]
    code, stdout, err = _run(capsys, "compare", f"data.root={tiny_root}", f"out={out}", "fit_images=6")
    assert code == 0, err
    board = _check_report(out, methods)
    assert board["bootstrap"] is None and any("no model" in n for n in board["notes"])
    assert all(r["AP_class_aware"] is None for r in board["rows"])
    # Fitted on train and saved beside the results.
    for m in methods:
        params = json.loads((out / "baselines" / f"{m}.json").read_text())
        assert params["name"] == m and params["fitted"] is not None
    assert len(list((out / "overlays").glob("*.png"))) == 3
    for name in ("leaderboard", "pr_iou50", "pr_iou75"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    for m in methods:
        assert m in stdout

    # Reuse the fitted parameters: no fitting, same numbers.
    out2 = tmp_path / "cmp2"
    code, _, err = _run(
        capsys,
        "compare",
        f"data.root={tiny_root}",
        f"out={out2}",
        "methods=[threshold,kmeans]",
        f"baseline_params_dir={out / 'baselines'}",
        "overlays=1",
    )
    assert code == 0, err
    again = {r["method"]: r["AP"] for r in json.loads((out2 / "leaderboard.json").read_text())["rows"]}
    first = {r["method"]: r["AP"] for r in board["rows"]}
    assert again == {m: first[m] for m in ("threshold", "kmeans")}
    assert json.loads((out2 / "baselines" / "threshold.json").read_text()) == json.loads(
        (out / "baselines" / "threshold.json").read_text()
    )


def model_row(board: dict) -> dict:
    return next(r for r in board["rows"] if r["kind"] == "model")


def test_compare_with_model_checkpoint(capsys, tiny_root, tiny_ckpt, tmp_path):
    out = tmp_path / "cmp"
    code, stdout, err = _run(
        capsys,
        "compare",
        f"data.root={tiny_root}",
        f"out={out}",
        f"ckpt_path={tiny_ckpt}",
        "methods=[maskrcnn,threshold,kmeans]",
        "bootstrap=25",
        "fit_images=4",
        "device=cpu",
        "label_errors=true",
    )
    assert code == 0, err
    board = _check_report(out, ["maskrcnn", "threshold", "kmeans"])
    # where the errors are: analysis, per-image table, label errors, each in the report
    analysis = json.loads((out / "analysis.json").read_text())
    n_images = board["num_images"]
    counts = analysis["confusion"]["counts"]
    assert analysis["confusion"]["classes"] == ["circle", "square", "triangle", "background"]
    n_objects = sum(sum(row) for row in counts[:-1])  # every object is counted once: matched or missed
    val = json.loads((tiny_root / "annotations/instances_val.json").read_text())
    assert n_objects == sum(not a.get("iscrowd") for a in val["annotations"])
    assert analysis["errors"]["counts"]["missed"] + analysis["errors"]["true_positives"] <= n_objects
    with (out / "per_image.csv").open() as f:
        per_image = list(csv.DictReader(f))
    assert len(per_image) == 3 * n_images and {r["method"] for r in per_image} == {
        "maskrcnn",
        "threshold",
        "kmeans",
    }
    le = json.loads((out / "label_errors.json").read_text())
    patch = json.loads((out / "label_errors_patch.json").read_text())
    assert sum(le["counts"].values()) == len(le["errors"]) == len(patch["annotations"])
    html = (out / "report.html").read_text()
    by_iou = model_row(board)["AP_by_iou"]
    assert list(by_iou) == [f"{0.5 + 0.05 * k:.2f}" for k in range(10)]
    valid = [v for v in by_iou.values() if v is not None]
    assert model_row(board)["AP"] == pytest.approx(sum(valid) / len(valid))  # their mean is the AP
    assert (out / "plots" / "ap_by_iou.png").is_file()
    for section in (
        "AP at each IoU threshold",
        "Where maskrcnn",
        "Calibrated score thresholds",
        "Per-image results",
        "Suspected label errors",
    ):
        assert section in html, section
    assert "boundary AP" in html and model_row(board)["boundary_AP"] is not None
    assert "errors at IoU 0.5" in stdout and "suspected label errors" in stdout
    model = next(r for r in board["rows"] if r["method"] == "maskrcnn")
    assert model["kind"] == "model" and model["AP_class_aware"] is not None
    assert set(model["per_class_AP"]) == {"circle", "square", "triangle"}
    b = board["bootstrap"]
    assert b["a"] == "maskrcnn" and b["b"] in ("threshold", "kmeans") and b["n_resamples"] == 25
    best_baseline = next(r for r in board["rows"] if r["kind"] == "baseline")["method"]
    assert b["b"] == best_baseline
    for key in ("segm_agnostic_AP", "f1"):
        s = b[key]
        assert s["ci_low"] <= s["ci_high"] and s["resamples_used"] > 0
        assert s["difference"] == pytest.approx(s["a"] - s["b"])
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.name.split("_")[1] for p in overlays] == ["best", "median", "worst"]
    assert "95% CI" in stdout and "maskrcnn" in stdout
    assert "95% CI" in (out / "report.html").read_text()


def test_unknown_method_is_a_usage_error_listing_valid_ones(capsys, tiny_root, tmp_path):
    code, _, err = _run(
        capsys, "compare", f"data.root={tiny_root}", f"out={tmp_path}", "methods=[threshold,otsu]"
    )
    assert code == 2
    assert "'otsu'" in err and "maskrcnn" in err and "kmeans" in err and "multi_threshold" in err


def test_model_without_checkpoint_names_ckpt_path(capsys, tiny_root, tmp_path):
    code, _, err = _run(
        capsys, "compare", f"data.root={tiny_root}", f"out={tmp_path}", "methods=[maskrcnn,threshold]"
    )
    assert code == 2 and "ckpt_path" in err


def test_check_methods_defaults():
    assert check_methods(None, has_model=False)[0] == "threshold"
    assert check_methods(None, has_model=True)[0] == "maskrcnn"
    assert check_methods(["kmeans", "kmeans", "sobel"], has_model=False) == ["kmeans", "sobel"]
    with pytest.raises(SegbenchError, match="valid methods"):
        check_methods(["nope"], has_model=True)


def _square_evaluator(preds_per_image):
    ev = Evaluator([{"id": 1, "name": "thing"}])
    for k, n_pred in enumerate(preds_per_image):
        m = np.zeros((2, 32, 32), bool)
        m[0, 2:12, 2:12] = True
        m[1, 16:30, 16:30] = True
        pred = Instances.from_masks(m[:n_pred], scores=np.linspace(0.9, 0.5, n_pred)) if n_pred else None
        ev.update(
            Instances.from_masks(m), pred or Instances.empty((32, 32), with_scores=True), image_id=10 + k
        )
    return ev


def test_pr_curve_of_a_perfect_prediction_is_one_everywhere():
    ev = _square_evaluator([2, 2, 2])
    curves = pr_curve(ev.gt_dataset(), ev.results, iou_thresholds=(0.5, 0.75))
    for iou in (0.5, 0.75):
        recall, precision = curves[iou]
        assert recall[0] == 0 and recall[-1] == pytest.approx(1.0) and len(recall) == 101
        np.testing.assert_array_equal(precision, np.ones(101))
    with pytest.raises(ValueError, match="not one of COCO"):
        pr_curve(ev.gt_dataset(), ev.results, iou_thresholds=(0.62,))


def test_pr_curve_mean_is_the_ap():
    ev = _square_evaluator([2, 1, 0])
    r, p = pr_curve(ev.gt_dataset(), ev.results, iou_thresholds=(0.5,))[0.5]
    ap50 = coco_evaluate(ev.gt_dataset(), ev.results, class_agnostic=True)["AP50"]
    assert float(p.mean()) == pytest.approx(ap50)
    assert p[r > 0.5 + 1e-9].max() == 0  # 3 of 6 objects found: nothing beyond recall 0.5


def test_resample_renumbers_images_and_keeps_the_score_of_the_full_set():
    ev = _square_evaluator([2, 1, 0])
    gt, (res,) = resample_coco(ev.gt_dataset(), [ev.results], [0, 1, 2])
    assert [im["id"] for im in gt["images"]] == [1, 2, 3]
    assert coco_evaluate(gt, res)["AP"] == pytest.approx(coco_evaluate(ev.gt_dataset(), ev.results)["AP"])
    gt2, (res2,) = resample_coco(ev.gt_dataset(), [ev.results], [0, 0])
    assert len(gt2["annotations"]) == 4 and len({a["id"] for a in gt2["annotations"]}) == 4
    assert coco_evaluate(gt2, res2)["AP"] == pytest.approx(1.0)


def _random_two_class_evaluator(seed: int, images: int = 9) -> Evaluator:
    """Squares of two classes at random places, detections near them (shifted, some of the wrong class,
    random scores), an image without objects and one without detections."""
    rng = np.random.default_rng(seed)
    ev = Evaluator([{"id": 3, "name": "a"}, {"id": 7, "name": "b"}], label_to_cat_id={1: 3, 2: 7})
    for k in range(images):
        n_gt = 0 if k == 0 else int(rng.integers(1, 5))
        gt = np.zeros((n_gt, 48, 48), bool)
        dt = np.zeros((n_gt + 1, 48, 48), bool)
        for j in range(n_gt):
            y, x, w = (int(v) for v in rng.integers(0, 30, 3) % 30)
            w = 6 + w % 10
            gt[j, y : y + w, x : x + w] = True
            d = int(rng.integers(0, 4))
            dt[j, y + d : y + w + d, x : x + w] = True
        dt[n_gt, 40:46, 0:6] = True  # a false positive on every image
        labels = rng.integers(1, 3, n_gt)
        pred_labels = np.concatenate([np.where(rng.random(n_gt) < 0.2, 3 - labels, labels), [1]])
        pred = Instances.from_masks(dt, labels=pred_labels, scores=rng.random(n_gt + 1))
        if k == 1:
            pred = Instances.empty((48, 48), with_scores=True)
        ev.update(Instances.from_masks(gt, labels=labels), pred, image_id=100 - k)  # ids not in list order
    return ev


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_resampled_ap_equals_scoring_a_copy_of_the_resample(class_agnostic):
    from segbench.eval.metrics import ResampledAP

    ev = _random_two_class_evaluator(5)
    gt, rs = ev.gt_dataset(), ev.results
    score = ResampledAP(gt, rs, class_agnostic=class_agnostic)
    full = coco_evaluate(gt, rs, class_agnostic=class_agnostic, backend="pycocotools")
    assert score.full["AP"] == full["AP"] and 0 < full["AP"] < 1
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, 9, 9) for _ in range(6)] + [np.array([0, 0, 1]), np.array([4, 4, 4, 4])]
    for idx in draws:  # repeats, an image without objects, one without detections
        got = score(idx)
        g, (r,) = resample_coco(gt, [rs], idx)
        want = coco_evaluate(g, r, class_agnostic=class_agnostic, backend="pycocotools")
        assert got["AP"] == want["AP"]  # the same accumulation: equal, not close
        if not class_agnostic:
            assert got["per_class_AP"] == want["per_class_AP"]
    assert score([0, 0])["AP"] is None  # no object drawn: nothing to score, as COCO's -1


def test_pick_images_best_median_worst():
    ev = _square_evaluator([1, 2, 0, 1, 2])
    picks = pick_images(MethodResult("m", "baseline", {}, ev), 3)
    assert [p["label"] for p in picks] == ["best", "median", "worst"]
    assert picks[0]["f1"] == 1.0 and picks[-1]["f1"] == 0.0 and picks[-1]["image_id"] == 12
    assert len(pick_images(MethodResult("m", "baseline", {}, ev), 10)) == 5


def test_equal_scores_are_warned_about():
    from segbench.eval.compare import score_warnings

    ev = Evaluator([{"id": 1, "name": "thing"}])
    m = np.zeros((2, 32, 32), bool)
    m[0, 2:12, 2:12] = True
    m[1, 16:30, 16:30] = True
    ev.update(Instances.from_masks(m), Instances.from_masks(m, scores=[0.5, 0.5]))
    flat = MethodResult("flat", "baseline", {}, ev)
    ranked = MethodResult("ranked", "baseline", {}, _square_evaluator([2]))
    empty = MethodResult("empty", "baseline", {}, _square_evaluator([0]))
    warnings = score_warnings({"flat": flat, "ranked": ranked, "empty": empty})
    assert len(warnings) == 2
    assert warnings[0].startswith("flat: all 2 instance scores are equal")
    assert warnings[1].startswith("empty made no detection")


def _one_square_per_image(hits: list[bool], *, false_positive: bool) -> MethodResult:
    """One 10x10 square of ground truth on each 32x32 image; the method finds it exactly where ``hits``
    says, and (``false_positive``) puts one wrong square on every image."""
    ev = Evaluator([{"id": 1, "name": "thing"}])
    gt = np.zeros((1, 32, 32), bool)
    gt[0, 2:12, 2:12] = True
    fp = np.zeros((1, 32, 32), bool)
    fp[0, 20:30, 20:30] = True
    for k, hit in enumerate(hits):
        masks = np.concatenate([gt[:hit], fp[:false_positive]])
        scores = [0.9] * hit + [0.3] * false_positive
        ev.update(Instances.from_masks(gt), Instances.from_masks(masks, scores=scores), image_id=k + 1)
    return MethodResult("m", "baseline", ev.compute(), ev)


def test_bootstrap_difference_has_the_answer_known_by_hand():
    """7 images with one object each; a finds the objects of images 0..3 exactly and nothing else, b only
    makes false positives. A resample that draws k of a's 4 images has, by hand: a's F1 = 2k / (7 + k)
    (k true positives, 7 - k misses), b's F1 = 0; a's AP = (floor(100 k / 7) + 1) / 101 (precision 1 up to
    recall k / 7, read at COCO's 101 recall points, the same at every IoU), b's AP = 0."""
    from segbench.eval.compare import bootstrap_difference

    n, seed, resamples = 7, 3, 40
    a = _one_square_per_image([True] * 4 + [False] * 3, false_positive=False)
    b = _one_square_per_image([False] * n, false_positive=True)
    assert a.metrics["f1"] == pytest.approx(8 / 11) and b.metrics["f1"] == 0
    out = bootstrap_difference(a, b, n_resamples=resamples, seed=seed)

    rng = np.random.default_rng(seed)  # the same draws as the function's
    ks = [int((rng.integers(0, n, size=n) < 4).sum()) for _ in range(resamples)]
    f1 = np.array([2 * k / (n + k) for k in ks])
    ap = np.array([(np.floor(100 * k / n) + 1) / 101 if k else 0.0 for k in ks])
    for key, diffs in (("f1", f1), ("segm_agnostic_AP", ap)):
        got = out[key]
        assert got["resamples_used"] == resamples
        assert got["bootstrap_mean"] == pytest.approx(diffs.mean())
        assert got["ci_low"] == pytest.approx(np.percentile(diffs, 2.5))
        assert got["ci_high"] == pytest.approx(np.percentile(diffs, 97.5))
        assert got["p_not_better"] == pytest.approx(np.mean(diffs <= 0))
    assert out["f1"]["difference"] == pytest.approx(8 / 11)
    assert out["segm_agnostic_AP"]["difference"] == pytest.approx((np.floor(400 / 7) + 1) / 101)

    same = bootstrap_difference(a, a, n_resamples=10, seed=0)["f1"]
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0 and same["p_not_better"] == 1


@pytest.mark.slow  # ~35-95 s on 2 cores: with the slow tests in .ci/run, so make test fits ~10 min
def test_compare_refine_edges_adds_a_fitted_method_and_predict_reuses_it(
    capsys, tiny_root, tiny_ckpt, tmp_path
):
    out = tmp_path / "cmp"
    code, stdout, err = _run(
        capsys, "compare", f"data.root={tiny_root}", f"out={out}", f"ckpt_path={tiny_ckpt}",
        "methods=[maskrcnn,threshold]", "bootstrap=0", "fit_images=4", "device=cpu", "refine=edges",
    )  # fmt: skip
    assert code == 0, err
    board = json.loads((out / "leaderboard.json").read_text())
    assert {r["method"] for r in board["rows"]} == {"maskrcnn", "maskrcnn+refine", "threshold"}
    params = json.loads((out / "baselines" / "maskrcnn+refine.json").read_text())
    assert params["name"] == "refine" and "unrefined" in params["fit_scores"]
    code = main(
        [
            "predict",
            f"ckpt_path={tiny_ckpt}",
            f"input={tiny_root / 'images'}",
            f"output={tmp_path / 'pred'}",
            "refine=edges",
            f"refine_params={out / 'baselines' / 'maskrcnn+refine.json'}",
            "progress=false",
            "score_threshold=0.0",
        ]  # fmt: skip
    )
    assert code == 0
    assert "edge refinement" in json.loads((tmp_path / "pred" / "summary.json").read_text())["source"]
    assert main(["predict", f"ckpt_path={tiny_ckpt}", f"input={tiny_root}", "refine=edges"]) == 2
    # eval with the same fitted refinement scores what compare's maskrcnn+refine row scored
    refined = next(r for r in board["rows"] if r["method"] == "maskrcnn+refine")
    code = main(
        [
            "eval",
            f"ckpt_path={tiny_ckpt}",
            f"data.root={tiny_root}",
            f"out={tmp_path / 'ev'}",
            "refine=edges",
            f"refine_params={out / 'baselines' / 'maskrcnn+refine.json'}",
            "progress=false",
        ]  # fmt: skip
    )
    assert code == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["refine"]["enabled"] == params["config"]["enabled"]
    assert m["segm_AP"] == pytest.approx(refined["AP_class_aware"], abs=1e-9)
    assert m["segm_agnostic_AP"] == pytest.approx(refined["AP"], abs=1e-9)
    assert main(["eval", f"ckpt_path={tiny_ckpt}", f"data.root={tiny_root}", "refine=edges"]) == 2
