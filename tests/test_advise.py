"""``segbench advise``: the learning-curve maths with known answers, nested subsets, the end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from segbench.advise import (
    bootstrap_scores,
    check_fractions,
    count_objects,
    nested_subsets,
    pick_checkpoint,
    segm_map,
    val_ground_truth,
)
from segbench.cli import _resolve, compose, main
from segbench.data.coco import open_split
from segbench.eval import learning_curve as lc
from segbench.eval.learning_curve import (
    analyse_learning_curve,
    bootstrap_curve,
    fit_learning_curve,
    holdout_check,
    log_linear,
    power_law,
)
from segbench.types import Instances, SegbenchError

N = np.array([50.0, 100, 200, 400, 800])
TRUE = {"a": 0.72, "b": 1.8, "c": 0.55}


# --- the curve maths -------------------------------------------------------------------------------
def test_power_law_is_recovered_from_its_own_points():
    fit = fit_learning_curve(N, power_law(N, **TRUE))
    assert fit.model == "power_law" and fit.note is None
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-4), k
    assert float(fit.predict(1600)) == pytest.approx(float(power_law(1600, **TRUE)), abs=1e-6)
    assert fit.rmse < 1e-8


def test_power_law_from_three_points_is_exact():
    n = N[1:4]
    fit = fit_learning_curve(n, power_law(n, **TRUE))
    assert fit.model == "power_law"
    assert fit.params["a"] == pytest.approx(TRUE["a"], abs=1e-4)
    assert fit.params["c"] == pytest.approx(TRUE["c"], abs=1e-3)


def test_noisy_power_law_is_close():
    y = power_law(N, **TRUE) + np.array([0.004, -0.003, 0.002, -0.004, 0.003])
    fit = fit_learning_curve(N, y)
    assert fit.model == "power_law"
    assert float(fit.predict(1600)) == pytest.approx(float(power_law(1600, **TRUE)), abs=0.02)


def test_power_law_respects_its_bounds():
    """A curve that rises towards 1.2 cannot have an asymptote above a_max = 1; a falling one is flat."""
    fit = fit_learning_curve(N, power_law(N, 1.2, 5.0, 0.5))
    assert fit.params["a"] <= 1.0 + 1e-12 and fit.params["b"] >= 0
    flat = fit_learning_curve(N, 0.6 - 0.01 * np.log(N))
    assert flat.params["b"] == pytest.approx(0.0, abs=1e-6)


def test_two_points_fall_back_to_log_linear():
    fit = fit_learning_curve([100, 200], [0.3, 0.4])
    assert fit.model == "log_linear" and "2 points" in fit.note
    assert fit.params["b"] == pytest.approx(0.1 / np.log(2))
    assert float(fit.predict(400)) == pytest.approx(0.5)


def test_log_linear_known_answer():
    fit = fit_learning_curve(N, log_linear(N, 0.1, 0.05), model="log_linear")
    assert fit.params == pytest.approx({"a": 0.1, "b": 0.05})
    assert fit.note is None and "log(n)" in fit.formula


def test_failed_power_law_falls_back_and_says_why(monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(lc, "curve_fit", fail)
    fit = fit_learning_curve(N, power_law(N, **TRUE))
    assert fit.model == "log_linear" and "failed" in fit.note and "Optimal parameters" in fit.note
    with pytest.raises(RuntimeError, match="could not be fitted"):
        fit_learning_curve(N, power_law(N, **TRUE), model="power_law")


@pytest.mark.parametrize(
    ("n", "y", "match"),
    [
        ([100, 100], [0.1, 0.2], "2 different"),
        ([0, 10], [0.1, 0.2], "positive"),
        ([1, 2], [0.1], "same length"),
    ],
)
def test_bad_points_are_refused(n, y, match):
    with pytest.raises(ValueError, match=match):
        fit_learning_curve(n, y)


def test_bootstrap_intervals_cover_the_truth_and_skip_bad_rows():
    rng = np.random.default_rng(0)
    truth = power_law(N, **TRUE)
    ys = truth + rng.normal(0, 0.01, (100, N.size))
    ys[3, 2] = np.nan  # a resample without any ground-truth object
    boot = bootstrap_curve(N, ys, model="power_law", at=[800, 1600])
    assert boot.failed >= 1 and boot.predictions.shape == (100 - boot.failed, 2)
    lo, hi = boot.interval(0.95)
    assert np.all(lo < hi)
    assert lo[0] <= truth[-1] <= hi[0]
    assert lo[1] <= float(power_law(1600, **TRUE)) <= hi[1]
    assert (hi[1] - lo[1]) > (hi[0] - lo[0])  # extrapolation is less certain than interpolation


def test_holdout_check_passes_on_a_true_curve_and_fails_on_a_break():
    rng = np.random.default_rng(1)
    n = N[:4]
    y = power_law(n, **TRUE)
    ys = y + rng.normal(0, 0.005, (60, n.size))
    ok = holdout_check(n, y, ys)
    assert ok["n"] == 400 and ok["fit"]["model"] == "power_law"
    assert ok["predicted"]["mAP"] == pytest.approx(y[-1], abs=1e-4)
    assert ok["within_interval"] is True and ok["measured_in_prediction_interval"] is True
    broken = y.copy()
    broken[-1] -= 0.1  # the largest run falls far below the curve of the others
    bad = holdout_check(n, broken, ys - (y - broken))
    assert bad["within_interval"] is False and bad["error"] == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(ValueError, match="at least 3"):
        holdout_check(n[:2], y[:2])


def test_analyse_predicts_at_twice_the_labels():
    rng = np.random.default_rng(2)
    n = N[:3]
    y = power_law(n, **TRUE)
    ys = y + rng.normal(0, 0.01, (60, n.size))
    out = analyse_learning_curve(n[::-1], y[::-1], ys[:, ::-1])  # any order of the points
    pred = out["prediction"]
    assert pred["n"] == 400 and pred["factor"] == 2
    assert pred["mAP"] == pytest.approx(float(power_law(400, **TRUE)), abs=1e-3)
    assert pred["ci_low"] < pred["mAP"] < pred["ci_high"]
    assert [p["n"] for p in out["points"]] == n.tolist()
    assert out["curve"]["n"][0] == pytest.approx(50) and out["curve"]["n"][-1] == pytest.approx(400)
    assert out["bootstrap"]["used"] + out["bootstrap"]["failed"] == 60
    assert out["holdout_check"]["fit"]["model"] == "log_linear"  # 2 points left to fit
    two = analyse_learning_curve(n[:2], y[:2])
    assert two["fit"]["model"] == "log_linear" and "skipped" in two["holdout_check"]
    assert two["prediction"]["ci_low"] is None  # no resamples, no interval
    assert two["prediction"]["curve_gain_ci"] is None


def test_the_curve_gain_and_its_interval():
    # every resample shifts all three scores by the same amount: the refitted curve shifts by it too, so the
    # curve's own gain from 400 to 800 labels is the same on every resample (its interval is a point), while
    # the prediction's own interval is as wide as the shifts
    n = np.array([100.0, 200, 400])
    y = 0.2 + 0.05 * np.log(n)
    shifts = np.linspace(-0.05, 0.05, 41)[:, None]
    out = analyse_learning_curve(n, y, y + shifts)
    pred = out["prediction"]
    # the true curve gains 0.05 log 2 = 0.035 at 2x; the bounded power law fitted to its 3 points is close
    assert pred["curve_gain"] == pytest.approx(0.05 * np.log(2), rel=0.15)
    assert pred["curve_gain_ci"][0] == pytest.approx(pred["curve_gain"], abs=2e-3)
    assert pred["curve_gain_ci"][1] == pytest.approx(pred["curve_gain"], abs=2e-3)
    assert pred["ci_high"] - pred["ci_low"] > 0.08
    # a flat curve whose largest run scored low: the gain over that measured value is large, the curve's is 0
    flat = analyse_learning_curve(n, np.array([0.19, 0.18, 0.13]), None)["prediction"]
    assert flat["gain"] > 0.02 and abs(flat["curve_gain"]) < flat["gain"]


def _doc(ci, *, passes=8.0, holdout=True):
    return {
        "prediction": {"factor": 2.0, "curve_gain": 0.05, "curve_gain_ci": ci},
        "runs": [{"passes": 12.0}, {"passes": passes}],
        "holdout_check": {
            "within_interval": holdout,
            "predicted": {"mAP": 0.178},
            "measured": {"mAP": 0.127},
        },
    }


@pytest.mark.parametrize(
    ("gain_ci", "answer"),
    [([0.01, 0.09], "more_labels_help"), ([-0.09, -0.01], "no_gain"), ([-0.03, 0.05], "not_detectable"),
     (None, "unknown")],
)  # fmt: skip
def test_the_verdict_reads_the_curves_gain_interval(gain_ci, answer):
    from segbench.advise import verdict

    v = verdict(_doc(gain_ci))
    assert v["answer"] == answer and "2x the labels: +0.050 val segm mAP by the curve" in v["text"]
    assert "training time" not in v["text"]  # 8 passes over its images: not time-limited
    doc = {**_doc(gain_ci, passes=2.8), "budget_minutes": 5}
    assert "went over its images 2.8 times in its 5 minutes" in verdict(doc)["text"]


def test_a_curve_that_fails_its_holdout_check_is_not_extrapolated():
    from segbench.advise import verdict

    v = verdict(_doc([0.01, 0.09], holdout=False))  # whatever the gain's interval says
    assert v["answer"] == "unreliable"
    assert "predicts 0.178 for it, measured 0.127" in v["text"]


# --- subsets ----------------------------------------------------------------------------------------
def test_nested_subsets_are_nested_sorted_and_seeded():
    a = nested_subsets(400, [1.0, 0.25, 0.5], seed=7)
    assert [len(s) for s in a] == [100, 200, 400]
    assert set(a[0]) < set(a[1]) < set(a[2]) == set(range(400))
    assert all(s == sorted(s) for s in a)
    assert a == nested_subsets(400, [0.25, 0.5, 1.0], seed=7)
    assert a[0] != nested_subsets(400, [0.25, 0.5, 1.0], seed=8)[0]
    assert a[0] != list(range(100))  # random, not the first images


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ([0.5], "at least 2"),
        ([0.0, 1.0], r"not in \(0, 1\]"),
        ([0.5, 1.5], "not in"),
        ([0.5, 0.5], "repeats"),
    ],
)
def test_bad_fractions_are_refused(fractions, match):
    with pytest.raises(SegbenchError, match=match):
        check_fractions(fractions)


def test_fractions_giving_equal_subsets_are_refused():
    with pytest.raises(SegbenchError, match="same size"):
        nested_subsets(4, [0.25, 0.3, 1.0])


def test_subset_restricts_the_training_data(synth_root):
    from segbench.data.datamodule import CocoDataModule

    dm = CocoDataModule(root=str(synth_root), train_indices=[5, 2, 9])
    ds = dm.train_dataset()
    ids = [im["id"] for im in dm.train_coco.images]
    assert len(ds) == 3 and [ds[k][1]["image_id"] for k in range(3)] == [ids[5], ids[2], ids[9]]
    assert len(CocoDataModule(root=str(synth_root)).train_dataset()) == 24
    with pytest.raises(SegbenchError, match="out of range"):
        CocoDataModule(root=str(synth_root), train_indices=[0, 99]).train_dataset()


def test_count_objects(synth_root):
    ds = open_split(synth_root, "train")
    per_image = [count_objects(ds, [i]) for i in range(len(ds))]
    assert sum(per_image) == count_objects(ds, range(len(ds))) == ds.num_annotations
    assert count_objects(ds, [0, 3]) == per_image[0] + per_image[3]


# --- scoring ----------------------------------------------------------------------------------------
def test_val_ground_truth_is_the_evaluators(synth_root):
    from segbench.eval.runner import evaluate_segmenter

    ds = open_split(synth_root, "val")
    _, ev = evaluate_segmenter(lambda image: Instances.empty(image.shape[:2], with_scores=True), ds)
    gt = val_ground_truth(ds)
    mine, theirs = dict(gt), dict(ev.gt_dataset())
    assert [{**im, "file_name": ""} for im in theirs.pop("images")] == mine.pop("images")
    assert mine == theirs


def test_bootstrap_scores_are_paired(synth_root):
    ds = open_split(synth_root, "val")
    gt = val_ground_truth(ds)
    perfect = [{**a, "score": 1.0} for a in gt["annotations"]]
    half = perfect[::2]
    assert segm_map(gt, perfect) == pytest.approx(1.0)
    ys = bootstrap_scores(gt, [perfect, half, perfect], n_resamples=12, seed=3)
    assert ys.shape == (12, 3)
    assert np.allclose(ys[:, 0], 1.0) and np.array_equal(ys[:, 0], ys[:, 2])
    assert np.all(ys[:, 1] < 1.0) and ys[:, 1].std() > 0  # the resamples differ
    assert np.array_equal(ys, bootstrap_scores(gt, [perfect, half, perfect], n_resamples=12, seed=3))


def test_epochs_count_passes_over_the_whole_split():
    from segbench.commands.advise import _scaled_epochs

    tr = OmegaConf.create({"max_epochs": 20, "check_val_every_n_epoch": 1, "limit_train_batches": None})
    assert _scaled_epochs(tr, 0.25) == {"max_epochs": 80, "check_val_every_n_epoch": 4}
    assert _scaled_epochs(tr, 1.0) == {"max_epochs": 20, "check_val_every_n_epoch": 1}
    tr.limit_train_batches = 2  # epochs of 2 batches whatever the subset: nothing to scale
    assert _scaled_epochs(tr, 0.25) == {}
    # validation by the clock (the auto recipe): every run validates as often, whatever its epochs' length
    tr.limit_train_batches, tr.val_check_interval = None, "00:00:01:30"
    assert _scaled_epochs(tr, 0.25) == {"max_epochs": 80}
    tr.val_check_interval = {"minutes": 1.5}
    assert _scaled_epochs(tr, 0.25) == {"max_epochs": 80}


# --- the command ------------------------------------------------------------------------------------
TINY = ["debug=tiny", "trainer.max_steps=2", "model.net.min_size=64", "model.net.max_size=64"]


@pytest.mark.slow  # three tiny trainings and their evaluations: about a minute
def test_advise_end_to_end(synth_root, tmp_path, capsys, caplog):
    out = tmp_path / "advise"
    code = main(
        [
            "advise",
            *TINY,
            f"data.root={synth_root}",
            f"paths.output_dir={tmp_path}",
            f"out={out}",
            "budget=0.5",
            "bootstrap=10",
            "fractions=[1.0,0.25,0.5]",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    doc = json.loads((out / "advise.json").read_text())
    assert doc["status"] == "done" and doc["budget_minutes"] == 0.5 and doc["checkpoint"] == "final"
    runs = doc["runs"]
    assert [r["fraction"] for r in runs] == [0.25, 0.5, 1.0]
    assert [r["images"] for r in runs] == [6, 12, 24]
    assert runs[-1]["objects"] == doc["train_objects"] > runs[0]["objects"] > 0
    indices = [json.loads((out / "runs" / name / "train_indices.json").read_text()) for name in
               ("frac_0.25", "frac_0.5", "frac_1")]  # fmt: skip
    assert set(indices[0]) < set(indices[1]) < set(indices[2]) == set(range(24))
    for r in runs:
        assert r["steps"] == 2 and r["wall_seconds"] > 0
        assert r["segm_mAP"] is not None and r["bbox_mAP"] is not None and len(r["segm_mAP_ci"]) == 2
        run_dir = out / "runs" / f"frac_{r['fraction']:g}"
        assert r["run_dir"] == str(run_dir) and r["checkpoint"] == str(run_dir / "checkpoints" / "final.ckpt")
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        assert metrics["segm_AP"] == r["segm_mAP"] and metrics["num_images"] == 8  # the whole val split
        cfg = OmegaConf.load(run_dir / "config.yaml")
        assert cfg.trainer.max_time == {"seconds": 30.0}
        assert cfg.callbacks.model_checkpoint.dirpath == str(run_dir / "checkpoints")
    assert doc["fit"]["model"] in ("power_law", "log_linear") and doc["fit"]["params"]
    pred = doc["prediction"]
    assert pred["n"] == 48 and pred["ci_low"] is not None and pred["ci_low"] <= pred["ci_high"]
    hc = doc["holdout_check"]
    assert hc["n"] == 24 and isinstance(hc["within_interval"], bool)
    png = (out / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "expected val segm mAP with 2x the labels (48 images)" in text and "hold-out check" in text
    assert doc["verdict"]["answer"] in ("more_labels_help", "no_gain", "not_detectable", "unreliable")
    assert f"verdict: {doc['verdict']['text']}" in text
    assert runs[-1]["passes"] == pytest.approx(2 * 2 / 24)  # 2 steps of TINY's 2 images over 24 images
    assert "recomputed" not in caplog.text  # the bootstrap rescored exactly what the evaluation scored


def test_advise_refuses_bad_options(synth_root, tmp_path, capsys):
    base = ["advise", f"data.root={synth_root}", f"out={tmp_path}/a"]
    assert main([*base, "fractions=[0.5]"]) == 2
    assert "at least 2 fractions" in capsys.readouterr().err
    assert main([*base, "budget=0"]) == 2
    assert "budget" in capsys.readouterr().err
    assert main([*base, "data.limit_train=4"]) == 2
    assert "data.limit_train" in capsys.readouterr().err


def test_every_run_leaves_its_final_weights(synth_root, tmp_path):
    """The budget (here max_steps) ends the run before its first validation: no best or last checkpoint,
    but the final weights are saved, as a checkpoint segbench loads."""
    from segbench.commands.advise import _make_train_one
    from segbench.models.checkpoint import read_checkpoint

    cfg = compose(
        "advise",
        [*TINY, f"data.root={synth_root}", f"out={tmp_path}", "trainer.check_val_every_n_epoch=2"],
    )
    _resolve(cfg)
    train_one = _make_train_one(cfg, n_train=24, budget_s=30.0, scale_epochs=True)
    result = train_one([0, 1, 2, 3], tmp_path / "runs" / "frac_x")
    assert (
        result["global_step"] == 2 and not result.get("best_checkpoint") and not result.get("last_checkpoint")
    )
    final = tmp_path / "runs" / "frac_x" / "checkpoints" / "final.ckpt"
    assert result["final_checkpoint"] == str(final)
    assert read_checkpoint(final, key="ckpt")["global_step"] == 2
    assert pick_checkpoint(result, "best") == pick_checkpoint(result, "final") == str(final)
    assert pick_checkpoint({**result, "best_checkpoint": "b.ckpt"}, "best") == "b.ckpt"
    assert pick_checkpoint({}, "final") is None


def test_advise_chooses_the_auto_recipe_once_by_default(synth_root, tmp_path, capsys):
    """Without an experiment, advise runs the recipe `segbench train` would choose (one for all the runs)."""
    code = main(
        [
            "advise",
            f"data.root={synth_root}",
            f"out={tmp_path}/a",
            "budget=3",
            "recipe.probe=false",
            "recipe.dry_run=true",
            "model.net.box_batch_size_per_image=48",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "auto recipe: 24 train images" in text and "budget 3 min" in text
    assert "model.net.min_size=" in text and "trainer.max_time=00:00:03:00" in text
    assert "model.net.box_batch_size_per_image=48" in text and "your override" in text
    assert "nothing trained" in text and not (tmp_path / "a").exists()
    from segbench.cli import compose
    from segbench.commands.train import _auto

    assert not _auto(compose("advise", [f"data.root={synth_root}", "experiment=torchvision"]))
