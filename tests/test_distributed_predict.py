"""`segbench predict` / `segbench eval` with `trainer=ddp_cpu`: the images are split over processes (each
exactly once), each process streams its results to a shard, and rank 0 merges the shards into the same
files as one process. The fast tests run the Lightning path in one process; the slow ones start two CPU
processes (gloo) with the real command line and compare with the one-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
from PIL import Image
from torch.utils.data import DistributedSampler

from segbench.cli import compose, main
from segbench.distributed import (
    SHARDS_DIR,
    ShardWriter,
    _in_order,
    _sharded_loader,
    evaluate_checkpoint_distributed,
    predict_images_distributed,
    processes,
    read_shard,
    trainer_options,
    use_if_distributed,
)
from segbench.predict import load_predictor, predict_images
from segbench.types import SegbenchError

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)
SEGBENCH = str(Path(sys.executable).parent / "segbench")
TINY = ["model.net.min_size=64", "model.net.max_size=64", "model.net.box_detections_per_img=20"]


def one_process_trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, **trainer_options(progress=False))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Four readable 64 px images and one broken file: five files, 3 + 2 for two processes."""
    from segbench.data.synthetic import SynthConfig, make_image

    d = tmp_path_factory.mktemp("dp_images")
    for k in range(4):
        im, _, _ = make_image(10 + k, SynthConfig(image_size=64))
        Image.fromarray(im).save(d / f"im{k}.png")
    (d / "im2_broken.png").write_bytes(b"not a png")
    return d


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step ResNet-18 Mask R-CNN at 64 px and its dataset (5 val images: not divisible by 2)."""
    from segbench.data.synthetic import generate

    root = tmp_path_factory.mktemp("dp_data")
    generate(root, num_train=4, num_val=5, image_size=64, min_radius=6, max_radius=14, seed=5)
    out = tmp_path_factory.mktemp("dp_train")
    argv = ["train", "debug=tiny", f"data.root={root}", f"paths.output_dir={out}", "trainer.max_steps=2"]
    assert main([*argv, "test_after_fit=false", *TINY]) == 0
    (ckpt,) = out.glob("train/default/*/checkpoints/last.ckpt")
    return ckpt, root


# --------------------------------------------------------------------------------------------------
# the split: each image exactly once
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "world", "batch"), [(5, 2, 1), (5, 2, 2), (6, 2, 4), (7, 3, 2), (2, 2, 1)])
def test_each_image_goes_to_exactly_one_process_in_the_batches_of_one(n, world, batch):
    one_process = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    shares = []
    for rank in range(world):
        batches = list(_sharded_loader(list(range(n)), rank=rank, world_size=world, batch_size=batch))
        assert batches == one_process[rank::world]  # whole batches, as one process cuts them
        shares.append([i for b in batches for i in b])
    flat = [i for s in shares for i in s]
    assert sorted(flat) == list(range(n))  # every image, none twice
    assert all(s == sorted(s) for s in shares)  # in order: the merge reads each shard as a sorted stream
    # why not torch's DistributedSampler (Lightning's choice for training loaders): it pads by repeating
    padded = [i for r in range(world) for i in DistributedSampler(range(n), world, r, shuffle=False)]
    assert (len(padded) > n) == (n % world != 0)


def test_the_merge_refuses_a_repeated_or_missing_image(tmp_path):
    import pickle

    def shard(name, indices):
        p = tmp_path / name
        with open(p, "wb") as f:
            for i in indices:
                pickle.dump({"index": i}, f)
        return p

    ok = [shard("a", [0, 2, 4]), shard("b", [1, 3])]
    assert [r["index"] for r in _in_order(ok, 5)] == [0, 1, 2, 3, 4]
    with pytest.raises(SegbenchError, match="image 2 twice"):
        list(_in_order([shard("c", [0, 2]), shard("d", [1, 2])], 4))
    with pytest.raises(SegbenchError, match="not image 3"):
        list(_in_order([shard("e", [0, 2, 4]), shard("f", [1])], 5))
    with pytest.raises(SegbenchError, match="4 of the 5"):
        list(_in_order([shard("g", [0, 2]), shard("h", [1, 3])], 5))
    with pytest.raises(SegbenchError, match="was not written"):
        list(_in_order([tmp_path / "missing"], 1))


def test_fewer_images_than_processes_is_a_clear_error(images, tmp_path):
    trainer = pl.Trainer(accelerator="cpu", devices=3, strategy="ddp", **trainer_options(progress=False))
    assert processes(trainer) == 3 and use_if_distributed(trainer) is trainer
    predictor = load_predictor(method="threshold")
    with pytest.raises(
        SegbenchError, match=r"2 image\(s\) in batches of 1 make 2 batch\(es\) for 3 processes"
    ):
        predict_images_distributed(predictor, f"{images}/im[01].png", tmp_path, trainer=trainer, batch_size=1)
    with pytest.raises(SegbenchError, match=r"make 1 batch\(es\) for 3 processes.*trainer.devices=1"):
        predict_images_distributed(predictor, f"{images}/im[01].png", tmp_path, trainer=trainer)


# --------------------------------------------------------------------------------------------------
# the Lightning path in one process: the same files as predict_images
# --------------------------------------------------------------------------------------------------
def test_the_lightning_path_writes_what_one_process_writes(images, tmp_path):
    predictor = load_predictor(method="threshold")
    ref = predict_images(predictor, images, tmp_path / "ref", batch_size=2, progress=False)
    got = predict_images_distributed(
        predictor, images, tmp_path / "dist", trainer=one_process_trainer(), batch_size=2
    )
    for name in ("predictions.json", "images.json", "categories.json"):
        assert (tmp_path / "dist" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert json.loads((tmp_path / "dist" / "predictions.json").read_text())  # not vacuous
    assert got["processed"] == ref["processed"] == 4 and got["skipped"] == ref["skipped"]
    assert [s["file"] for s in got["skipped"]] == ["im2_broken.png"]
    assert got["detections"] == ref["detections"] and got["processes"] == 1
    assert sorted(p.name for p in (tmp_path / "dist" / "overlays").iterdir()) == sorted(
        p.name for p in (tmp_path / "ref" / "overlays").iterdir()
    )
    assert not (tmp_path / "dist" / SHARDS_DIR).exists()  # merged, then removed


class _WatchShards(pl.Callback):
    """Before each batch and at the end: what the shard file holds, and what the writer holds."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []  # (batches done, records in the file, writer's records)

    def _look(self, trainer) -> None:
        (writer,) = [c for c in trainer.callbacks if isinstance(c, ShardWriter)]
        on_disk = sum(1 for _ in read_shard(writer.path)) if writer.path else 0
        self.seen.append((writer.batches, on_disk, writer.records))
        held = {k: v for k, v in vars(writer).items() if isinstance(v, (list, dict, set, tuple)) and v}
        assert not held, f"the writer holds {held}"

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._look(trainer)

    def on_predict_end(self, trainer, pl_module):
        self._look(trainer)


def test_results_stream_to_the_shard_and_nothing_accumulates(images, tmp_path):
    """Bounded memory: after each batch its records are on disk (flushed), the writer keeps only counters,
    and Lightning keeps no prediction (``return_predictions=False``)."""
    watch = _WatchShards()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, **{**trainer_options(progress=False), "callbacks": [watch]}
    )
    predictor = load_predictor(method="threshold")
    predict_images_distributed(predictor, images, tmp_path / "p", trainer=trainer, batch_size=2)
    # five files in batches of 2: before each batch, every earlier batch's records are in the file
    assert watch.seen == [(0, 0, 0), (1, 2, 2), (2, 4, 4), (3, 5, 5)]
    assert trainer.predict_loop.predictions == []


def test_trainer_group_selects_the_distributed_path(tmp_path):
    cfg = compose("predict", ["input=a.png", "trainer=ddp_cpu", "trainer.devices=2"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2
    assert "trainer" not in compose("predict", ["input=a.png"])  # no trainer=: the one-process path
    assert compose("eval", ["ckpt_path=x.ckpt", "trainer=ddp_cpu"]).trainer.devices == 2
    from hydra.utils import instantiate

    two = instantiate(cfg.trainer, **trainer_options(cfg.trainer, progress=False), _convert_="all")
    assert use_if_distributed(two) is two and processes(two) == 2
    assert two.precision == "32-true"  # not a training preset's mixed precision
    one = instantiate(compose("predict", ["input=a.png", "trainer=cpu"]).trainer, **trainer_options())
    assert use_if_distributed(one) is None


@pytest.mark.slow  # trains the tiny model, then two evaluations
def test_eval_lightning_path_gives_the_same_metrics(tiny_run, tmp_path):
    from segbench.data.coco import CocoDataset
    from segbench.training import evaluate_checkpoint

    ckpt, root = tiny_run
    ds = CocoDataset(root / "annotations" / "instances_val.json", root / "images")
    ref = evaluate_checkpoint(ckpt, ds, out_dir=tmp_path / "ref", progress=False, score_threshold=0.05)
    got = evaluate_checkpoint_distributed(
        ckpt, ds, trainer=one_process_trainer(), out_dir=tmp_path / "dist", score_threshold=0.05
    )
    assert got["processes"] == 1
    assert _without_timing(got) == _without_timing(ref)
    for name in ("results.json", "per_image.csv"):
        assert (tmp_path / "dist" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def _without_timing(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in ("ms_per_image", "processes")}


# --------------------------------------------------------------------------------------------------
# two CPU processes (gloo), the real command line
# --------------------------------------------------------------------------------------------------
def _segbench(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("LOCAL_RANK", None)
    p = subprocess.run([SEGBENCH, *argv], capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def _detections(folder: Path) -> set:
    """The detections as a set: (image file, category, box, score, mask RLE)."""
    names = {v["id"]: k for k, v in json.loads((folder / "images.json").read_text()).items()}
    return {
        (
            names[r["image_id"]],
            r["category_id"],
            tuple(r["bbox"]),
            r["score"],
            r["segmentation"]["counts"],
        )
        for r in json.loads((folder / "predictions.json").read_text())
    }


@pytest.mark.slow
def test_two_processes_predict_what_one_process_predicts(tiny_run, images, tmp_path):
    ckpt, _ = tiny_run
    common = [
        f"ckpt_path={ckpt}",
        f"input={images}",
        "score_threshold=0.0",
        "progress=false",
        "num_threads=1",
    ]
    _segbench("predict", *common, f"output={tmp_path / 'one'}", "save_masks=true")
    p = _segbench(
        "predict",
        *common,
        f"output={tmp_path / 'two'}",
        "save_masks=true",
        "trainer=ddp_cpu",
        "trainer.devices=2",
    )
    assert "Starting with 2 processes" in p.stdout + p.stderr
    one, two = _detections(tmp_path / "one"), _detections(tmp_path / "two")
    assert len(one) >= 4 and one == two
    for name in ("images.json", "categories.json"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["processed"] == 4
    assert [s["file"] for s in summary["skipped"]] == ["im2_broken.png"]
    # each image exactly once: one image entry, one overlay, its masks, per readable file
    assert sorted(json.loads((tmp_path / "two" / "images.json").read_text())) == [
        f"im{k}.png" for k in (0, 1, 2, 3)
    ]
    for sub in ("overlays", "masks"):
        assert sorted(p.name for p in (tmp_path / "two" / sub).iterdir()) == sorted(
            p.name for p in (tmp_path / "one" / sub).iterdir()
        )
    assert not (tmp_path / "two" / SHARDS_DIR).exists()
    assert p.stdout.count("processed 4 image(s)") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_two_processes_evaluate_what_one_process_evaluates(tiny_run, tmp_path):
    ckpt, root = tiny_run
    common = [
        f"ckpt_path={ckpt}",
        f"data.root={root}",
        "progress=false",
        "num_threads=1",
        "score_threshold=0.05",
    ]
    _segbench("eval", *common, f"out={tmp_path / 'one'}")
    _segbench("eval", *common, f"out={tmp_path / 'two'}", "trainer=ddp_cpu", "trainer.devices=2")
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["processes"] == 2
    assert _without_timing(two) == _without_timing(one)
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results and sorted({r["image_id"] for r in results}) == sorted(
        {r["image_id"] for r in json.loads((tmp_path / "one" / "results.json").read_text())}
    )
    rows = (tmp_path / "two" / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 5  # each of the 5 val images exactly once
    assert (tmp_path / "two" / "per_image.csv").read_text() == (
        tmp_path / "one" / "per_image.csv"
    ).read_text()


@pytest.mark.slow
@pytest.mark.parametrize("failing", [1, 0])
def test_a_failing_process_stops_the_run_with_its_message(tiny_run, tmp_path, failing):
    """A truncated val image in one process's share: both stop (no hang at the barrier), exit 2 (rank 0 is
    not killed by Lightning's watch on its children), the failing process's message names the file and the
    other process says why it stopped."""
    import shutil

    ckpt, root = tiny_run
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    img = bad / "images" / f"val_0000{failing}.png"  # image k: process k's share (batches of 1)
    img.write_bytes(img.read_bytes()[:200])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("LOCAL_RANK", None)
    argv = [f"ckpt_path={ckpt}", f"data.root={bad}", f"out={tmp_path / 'ev'}", "progress=false"]
    p = subprocess.run(
        [SEGBENCH, "eval", *argv, "trainer=ddp_cpu", "trainer.devices=2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 2, p.stderr[-3000:]
    assert f"val_0000{failing}.png" in p.stderr and "truncated" in p.stderr
    assert f"process {1 - failing}: another process of this run stopped: process {failing}" in p.stderr
    assert "internal error" not in p.stderr and "Forcefully terminating" not in p.stderr
