"""The command line: help, errors without tracebacks, data synth / stats, score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segbench.cli import COMMANDS, main
from tests.test_metrics import make_fixture, pycocotools_stats

SEGBENCH = str(Path(sys.executable).parent / "segbench")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_help_lists_every_command_with_one_line(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name, cmd in COMMANDS.items():
        assert any(line.strip().startswith(name) and cmd.help in line for line in out.splitlines())


def test_console_script_runs_and_fails_cleanly():
    p = subprocess.run([SEGBENCH, "nosuchcommand"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "unknown command 'nosuchcommand'" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["data"], "'data' needs a subcommand"),
        (["score", "gt=a.json"], "missing required value(s): pred"),
        (["data", "stats", "data.rooot=x"], "data.rooot"),
        (["data", "stats", "data=nope"], "Available options in 'data'"),
        (["data", "stats", "data.root=["], "bad override"),
        (["data", "synth", "--frobnicate"], "unknown option"),
        (["data", "synth", "num_train=-3"], "num_train"),
        (
            ["data", "stats", "data.root=/definitely/not/here"],
            "data.root=/definitely/not/here is not a folder",
        ),
    ],
)
def test_bad_input_gives_a_short_message(capsys, tmp_path, argv, message):
    if argv[:2] == ["data", "synth"]:
        argv = [*argv, f"out={tmp_path}"]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) <= 2


def test_cfg_flag_prints_config(capsys):
    code, out, _ = run(capsys, "data", "stats", "data.root=/x", "--cfg")
    assert code == 0 and "root: /x" in out


def test_data_synth_then_stats(capsys, tmp_path):
    code, out, _ = run(
        capsys, "data", "synth", f"out={tmp_path}", "num_train=12", "num_val=4", "image_size=64"
    )
    assert code == 0 and "train: 12 images" in out
    code, out, _ = run(capsys, "data", "stats", f"data.root={tmp_path}", f"out={tmp_path}/stats.json")
    assert code == 0
    assert "[train] 12 images" in out and "[val] 4 images" in out and "instances per class: circle=" in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["train"]["images"] == 12
    assert stats["train"]["instances"] == sum(stats["train"]["per_class"].values())


def test_score_equals_pycocotools(capsys, tmp_path):
    gt, results = make_fixture(seed=4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(results))
    code, out, _ = run(
        capsys, "score", f"gt={tmp_path}/gt.json", f"pred={tmp_path}/pred.json", f"out={tmp_path}/o"
    )
    assert code == 0 and "segm" in out and "F1" in out
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    for t in ("segm", "bbox"):
        ref = pycocotools_stats(gt, results, t)
        for k, i in (("AP", 0), ("AP50", 1), ("AP75", 2), ("APs", 3), ("APm", 4), ("APl", 5)):
            v = m[f"{t}_{k}"]
            assert (-1 if v is None else v) == pytest.approx(ref[i], abs=1e-9), (t, k)
    assert 0 <= m["f1"] <= 1 and m["num_pred"] == len(results)


def test_score_refuses_results_of_another_dataset(capsys, tmp_path):
    gt, results = make_fixture(seed=4)
    for r in results:
        r["image_id"] += 1000
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(results))
    code, _, err = run(
        capsys, "score", f"gt={tmp_path}/gt.json", f"pred={tmp_path}/pred.json", f"out={tmp_path}/o"
    )
    assert code == 2 and "image id(s)" in err and "another dataset" in err


def test_predict_model_names_an_export(capsys):
    code, out, _ = run(capsys, "predict", "model=exp/model.onnx", "input=a.png", "--cfg")
    assert code == 0 and "exported: exp/model.onnx" in out


def test_run_folder_time_comes_from_the_launching_process(monkeypatch):
    # DDP ranks re-run the command with the launcher's environment: all must name the same run folder
    from omegaconf import OmegaConf

    from segbench.cli import compose

    monkeypatch.setenv("SEGBENCH_START_TIME", "2031-02-03T04:05:06.000007")
    cfg = compose("train", [])
    OmegaConf.resolve(cfg)
    assert cfg.run_dir.endswith("train/auto/2031-02-03_04-05-06")  # experiment=auto, the default, names runs


def test_score_two_results_files_every_backend_and_label_errors(capsys, tmp_path):
    """pred = the ground truth itself, pred_b = the same with every mask of image 1 left out: the paired
    bootstrap says pred is better (F1 difference > 0, its interval above 0); the backends agree where their
    caps agree; the label-error finder has nothing to report for a perfect prediction."""
    gt, _ = make_fixture(seed=4)
    perfect = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "bbox": a["bbox"],
            "score": 0.9 - 0.001 * k,
        }  # fmt: skip
        for k, a in enumerate(gt["annotations"])
        if not a.get("iscrowd")
    ]
    first = gt["images"][0]["id"]
    worse = [r for r in perfect if r["image_id"] != first]
    for name, data in (("gt", gt), ("a", perfect), ("b", worse)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    code, out, err = run(
        capsys, "score", f"gt={tmp_path}/gt.json", f"pred={tmp_path}/a.json", f"pred_b={tmp_path}/b.json",
        "backend=all", "label_errors=true", "bootstrap=30", f"out={tmp_path}/o",
    )  # fmt: skip
    assert code == 0, err
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    c = m["comparison"]
    assert c["f1"]["difference"] > 0 and c["f1"]["ci_low"] >= 0 and c["f1"]["min_detectable_difference"] >= 0
    assert set(c["per_class_AP"]) == {cat["name"] for cat in gt["categories"]}
    for t in ("segm", "bbox"):
        rows = m["backends"][t]
        assert rows["pycocotools"]["AP"] == pytest.approx(rows["faster_coco_eval"]["AP"], abs=1e-9)
        assert rows["torchmetrics"]["AP"] == pytest.approx(rows["pycocotools@100"]["AP"], abs=1e-3), t
    assert "torchmetrics" in out and "smallest difference" in out
    assert m["label_errors"] == {"missing_label": 0, "not_found": 0, "class_disagrees": 0}
    assert (tmp_path / "o" / "label_errors_patch.json").is_file()
