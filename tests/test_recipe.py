"""experiment=auto: the rules on hand-made statistics (answers worked out by hand in the comments), the user's
overrides, the probe, the saved recipe.yaml, and one end-to-end run on the tiny synthetic set."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from segbench.cli import UsageError, compose, main
from segbench.recipe import (
    Machine,
    Probe,
    Quantiles,
    Sides,
    TrainStats,
    choose_recipe,
    experiment_yaml,
    probe_machine,
    train_statistics,
)

CPU = Machine(cores=2)


def stats(
    *,
    images: int = 100,
    size: tuple[int, int] = (600, 800),
    sizes: tuple[int, int] | None = None,
    objects: tuple[float, ...] = (60, 80, 100, 120, 150),
    per_image: tuple[float, float, int] = (4, 8, 10),
    classes: dict[str, int] | None = None,
    per_class: dict[str, Quantiles] | None = None,
    modes: dict[str, int] | None = None,
    val_images: int | None = 20,
    class_images: dict[str, int] | None = None,
) -> TrainStats:
    """Train statistics of images of one size (HxW) with object sides ``objects`` (5/25/50/75/95%)."""
    short, long_ = min(size), max(size)
    q = Quantiles(*objects)
    lo, hi = sizes or (long_, long_)
    return TrainStats(
        images=images,
        instances=int(per_image[0] * images),
        short_side=Sides(short, short, short),
        long_side=Sides(long_, lo, hi),
        object_side=q,
        object_side_rel=q.scaled(1 / short),
        objects_per_image=per_image,
        class_counts=classes or {"thing": int(per_image[0] * images)},
        object_side_per_class=per_class or {},
        image_modes=modes or {"RGB": images},
        val_images=val_images,
        class_images=class_images or {},
    )


def values(recipe) -> dict:
    return recipe.values()


# --- the training scale ---------------------------------------------------------------------------------


def test_large_images_with_small_objects_train_on_native_crops():
    # 4000x3000 images, median object 30 px: in the band natively, but the 512 px CPU cap would scale the images
    # by 384/3000 = 0.128 and the objects to 3.8 px: native-size crops of 512 px instead
    r = choose_recipe(stats(size=(3000, 4000), objects=(20, 25, 30, 35, 45)), CPU, budget_minutes=15)
    v = values(r)
    assert v["model.net.keep_size"] is True and v["data.max_crop"] == 512
    assert "model.net.min_size" not in v  # no resize
    assert v["model.net.anchor_sizes"] == [16, 32, 64, 128, 256]  # 5% side 20 px -> 16, doubling
    # a 512 x 512 crop is more than 384^2 px: 2 per step, 2 steps per update
    assert (v["data.batch_size"], v["trainer.accumulate_grad_batches"]) == (2, 2)
    assert "crops" in r.text() and "below the band" in r.text()


def test_few_large_objects_are_downscaled_into_the_band():
    # 1024x768 images, median object 288 px = 0.375 of the short side: min_size 48 / 0.375 = 128 puts it at 48 px;
    # max_size: 128 x 4/3 = 171 -> 192 (a multiple of 32)
    r = choose_recipe(stats(size=(768, 1024), objects=(200, 250, 288, 320, 400), per_image=(2, 3, 3)), CPU)
    v = values(r)
    assert v["model.net.keep_size"] is False
    assert (v["model.net.min_size"], v["model.net.max_size"]) == (128, 192)
    # 5% side 200 px at 128/768: 33 px -> 32; the 95% side 400 px -> 67 px, well inside the largest (512)
    assert v["model.net.anchor_sizes"] == [32, 64, 128, 256, 512]
    assert v["data.batch_size"] == 4 and v["trainer.accumulate_grad_batches"] == 1  # 171 x 128 px is small
    assert "48 px at 128" in r.text()


def test_objects_in_the_band_keep_their_scale():
    # the synthetic set: 192 px images, median object 28 px, in the band: trained as they are
    v = values(choose_recipe(stats(size=(192, 192), objects=(14, 21, 28, 38, 49)), CPU))
    assert (v["model.net.min_size"], v["model.net.max_size"], v["model.net.keep_size"]) == (192, 192, False)
    # 14 px -> 16 (the nearest power of two: 16's band 11.3-22.6 px holds it; 8's is 5.7-11.3)
    assert v["model.net.anchor_sizes"] == [16, 32, 64, 128, 256]


def test_multi_scale_draws_short_sides_that_keep_the_objects_in_the_band():
    # nuts-like: 600x800 images, median object 100 px (1/6 of the short side): S = 288 (48 / (1/6)); within
    # 25% of it 224-352 px, the median object 37-59 px (in the band), the long side at most 512 (352 x 4/3 =
    # 469): every step of 32 from 224 to 352, 288 last (torchvision tests at the last one)
    one = values(choose_recipe(stats(), CPU))
    r = choose_recipe(stats(), CPU, current={"recipe.multi_scale": True})
    v = values(r)
    assert one["model.net.min_size"] == 288
    assert v["model.net.min_size"] == [224, 256, 320, 352, 288]
    assert v["model.net.max_size"] == 480  # for the largest: 352 x 4/3 = 469 -> 480
    assert v["model.net.anchor_sizes"] == one["model.net.anchor_sizes"]  # anchors at the test scale
    assert "multi-scale (recipe.multi_scale=true)" in r.text() and "tested at 288" in r.text()
    # the synthetic set: 160 px would put the median object at 23 px, below the band; 256 is beyond 25%
    v = values(
        choose_recipe(
            stats(size=(192, 192), objects=(14, 21, 28, 38, 49)), CPU, current={"recipe.multi_scale": True}
        )
    )
    assert v["model.net.min_size"] == [224, 192]
    # native-size training has no scale to vary: said, and nothing changes
    s = stats(size=(3000, 4000), objects=(20, 25, 30, 35, 45))
    r = choose_recipe(s, CPU, current={"recipe.multi_scale": True})
    assert values(r)["model.net.keep_size"] is True and "multi_scale=true not applied" in r.text()
    # the user's own min_size wins over the flag
    r = choose_recipe(stats(), CPU, overrides={"model.net.min_size": "model.net.min_size=320"},
                      current={"recipe.multi_scale": True, "model.net.min_size": 320})  # fmt: skip
    assert values(r)["model.net.min_size"] == 320


def test_varied_image_sizes_with_small_objects_stay_native():
    # dsb2018-like: median image 256 px but some 1272 px, objects 0.046 of the short side: at the 2x upsampling
    # limit (512 px) the median object is 23.6 px, below the band, and resizing the 1272 px images to 512 would
    # shrink theirs 2.5x: native size, 512 px crops of the large images
    s = stats(size=(256, 256), sizes=(256, 1272), objects=(6.3, 10.8, 11.8, 24, 43))
    v = values(choose_recipe(s, CPU))
    assert v["model.net.keep_size"] is True and v["data.max_crop"] == 512
    assert v["model.net.anchor_sizes"] == [8, 16, 32, 64, 128]  # 6.3 px -> 8 (nearest), the least allowed


def test_tiny_objects_in_small_uniform_images_are_upsampled_to_the_limit():
    # 128 px images, 6 px objects: 48/6 = 8x wanted, 2x allowed -> 256 px (objects 12 px, still below the band,
    # but these images are cheap and all the same size)
    v = values(choose_recipe(stats(size=(128, 128), objects=(4, 5, 6, 7, 9)), CPU))
    assert v["model.net.keep_size"] is False and v["model.net.min_size"] == 256


# --- detections, proposals, RoIs --------------------------------------------------------------------------


def test_many_objects_raise_the_detection_cap_above_the_most_in_an_image():
    # up to 375 objects per image (p95 137): cap 1.2 x 375 = 450 > 100, so the evaluation keeps every detection
    v = values(choose_recipe(stats(per_image=(27, 137, 375)), CPU))
    assert v["model.net.box_detections_per_img"] == 450
    assert "model.eval_max_dets" in v and v["model.eval_max_dets"] is None
    assert v["model.net.rpn_post_nms_top_n_test"] == 900 and v["model.net.rpn_pre_nms_top_n_test"] == 1800
    assert v["model.net.rpn_post_nms_top_n_train"] == 900 and v["model.net.rpn_pre_nms_top_n_train"] == 1800
    assert v["model.net.box_batch_size_per_image"] == 256  # 8 x 137 = 1096, at most 256


def test_few_objects_keep_cocos_cap_and_small_caps():
    # at most 13 objects (p95 12): the cap stays 100 (eval_max_dets is not touched), proposals at their least,
    # 8 x 12 = 96 RoIs -> 128
    v = values(choose_recipe(stats(per_image=(8, 12, 13)), CPU))
    assert v["model.net.box_detections_per_img"] == 100 and "model.eval_max_dets" not in v
    assert v["model.net.rpn_post_nms_top_n_test"] == 200 and v["model.net.rpn_post_nms_top_n_train"] == 300
    assert v["model.net.box_batch_size_per_image"] == 128


# --- classes, greyscale, tiny sets ------------------------------------------------------------------------


def test_many_classes_name_the_rare_ones_and_those_outside_the_anchors():
    classes = {f"c{k}": 50 for k in range(60)} | {"rare": 3, "huge": 20}
    per_class = {name: Quantiles(60, 80, 100, 120, 150) for name in classes}
    per_class["huge"] = Quantiles(1500, 1600, 1700, 1800, 1900)  # 1700 px at 0.48x: 816 px, beyond 256 x 1.41
    r = choose_recipe(stats(classes=classes, per_class=per_class), CPU)
    text = r.text()
    assert "62 classes" in text
    assert "rare (3)" in text and "noisy AP" in text
    assert "outside the anchors' reach" in text and "huge" in text.split("outside the anchors' reach")[1]
    assert "c0" not in text.split("outside the anchors' reach")[1].split("\n")[0]
    assert values(r) == values(choose_recipe(stats(), CPU))  # the classes change no rule's value


def test_a_class_in_few_train_images_turns_on_repeat_factor_sampling():
    r = choose_recipe(stats(class_images={"common": 100, "rare": 8}), CPU)
    assert values(r)["data.repeat_factor_threshold"] == 0.3
    line = {c.key: c.line() for c in r.choices}["data.repeat_factor_threshold"]
    assert "rare in 8%" in line and "1.9x" in line  # sqrt(0.3 / 0.08) = 1.94
    balanced = choose_recipe(stats(class_images={"a": 90, "b": 30}), CPU)
    assert values(balanced)["data.repeat_factor_threshold"] is None
    assert "plain shuffle" in balanced.text()
    mine = {"data.repeat_factor_threshold": "data.repeat_factor_threshold=0.05"}
    r = choose_recipe(
        stats(class_images={"common": 100, "rare": 8}),
        CPU,
        overrides=mine,
        current={"data.repeat_factor_threshold": 0.05},
    )
    assert values(r)["data.repeat_factor_threshold"] == 0.05
    assert "your override" in {c.key: c.line() for c in r.choices}["data.repeat_factor_threshold"]


def test_greyscale_images_get_the_same_recipe_and_a_note():
    rgb = choose_recipe(stats(), CPU)
    grey = choose_recipe(stats(modes={"L": 100}), CPU)
    assert values(grey) == values(rgb)
    assert "greyscale" in grey.text() and "greyscale" not in rgb.text()


def test_a_tiny_dataset_batches_all_its_images_and_says_pretrained_weights_help():
    r = choose_recipe(stats(images=3, per_image=(2, 3, 3)), CPU)
    v = values(r)
    assert (v["data.batch_size"], v["trainer.accumulate_grad_batches"]) == (3, 1)
    assert "only 3 train images" in r.text() and v["model.net.weights"] is None


# --- the machine: precision, schedule, GPU ----------------------------------------------------------------


def synth_stats(**kw) -> TrainStats:
    return stats(images=400, size=(192, 192), objects=(14, 21, 28, 38, 49), val_images=100, **kw)


def test_the_probe_sizes_the_schedule():
    # 1.0 s a step of 4 images, 0.1 s a val image: 4 validations of 100 images take 40 s of the 900;
    # (900 - 40) / (1.0 x 1.15) = 748 batches = 7.5 epochs of 100 batches
    probe = Probe(step_s=1.0, batch_size=4, steps=3, infer_s=0.1)
    r = choose_recipe(synth_stats(), Machine(cores=2, probe=probe), budget_minutes=15)
    v = values(r)
    batches = (900 - 40) / 1.15
    assert v["trainer.max_time"] == "00:00:15:00" and v["model.scheduler.by_time"] is True
    assert v["trainer.max_epochs"] == math.ceil(2 * batches / 100) == 15
    assert v["model.scheduler.warmup_steps"] == round(0.05 * batches) == 37
    assert v["model.scheduler.name"] == "cosine"
    assert v["trainer.val_check_interval"] == "00:00:03:45" and v["trainer.check_val_every_n_epoch"] == 1
    assert "data.limit_val" not in v  # validations take 40 s, under 10% of the budget
    assert "probe: 3 steps of 4 images" in r.text()


def test_slow_validations_run_on_the_first_val_images():
    # 2 s a val image: 4 x 100 x 2 = 800 s > 10% of 900; 90 s / 4 / 2 s = 11 images
    probe = Probe(step_s=1.0, batch_size=4, steps=3, infer_s=2.0)
    v = values(choose_recipe(synth_stats(), Machine(cores=2, probe=probe), budget_minutes=15))
    assert v["data.limit_val"] == 11


def test_without_the_probe_the_schedule_is_estimated_and_said_so():
    r = choose_recipe(synth_stats(), Machine(cores=2, probe_skipped="recipe.probe=false"), budget_minutes=10)
    v = values(r)
    assert v["trainer.max_time"] == "00:00:10:00" and v["trainer.val_check_interval"] == "00:00:02:30"
    assert "probe skipped: recipe.probe=false" in r.text() and "estimated without the probe" in r.text()


@pytest.mark.parametrize(
    ("bf16", "bf16_step", "precision"),
    [
        (False, None, "32-true"),
        (True, 1.0, "bf16-mixed"),
        (True, 1.98, "32-true"),
        (True, None, "bf16-mixed"),
    ],
)
def test_bfloat16_only_where_it_is_faster(bf16, bf16_step, precision):
    probe = Probe(step_s=2.0, batch_size=4, steps=3, bf16_step_s=bf16_step) if bf16_step else None
    v = values(choose_recipe(synth_stats(), Machine(cores=2, cpu_bf16=bf16, probe=probe)))
    assert v["trainer.precision"] == precision
    assert v["model.channels_last"] is (precision == "bf16-mixed")


def test_on_a_gpu_epochs_end_the_run():
    # 0.1 s a step: (900 - 8) / 0.115 = 7757 batches = 77 epochs; validation every 77 // 4 = 19 epochs, and the
    # epochs a multiple of it (76) so that the last one validates
    probe = Probe(step_s=0.1, batch_size=4, steps=3, infer_s=0.02, device="cuda")
    r = choose_recipe(synth_stats(), Machine(cores=16, cuda=True, gpu_name="H200", probe=probe))
    v = values(r)
    assert v["trainer.accelerator"] == "gpu" and v["trainer.precision"] == "16-mixed"
    assert v["trainer.max_time"] is None and v["model.scheduler.by_time"] is False
    assert (v["trainer.max_epochs"], v["trainer.check_val_every_n_epoch"]) == (76, 19)
    assert v["data.num_workers"] == 8
    assert "not the clock" in r.text()


def test_a_cpu_trains_a_narrower_mask_head_unless_pretrained_weights_bring_one(tmp_path):
    from segbench.commands.train import _file_mask_head
    from segbench.recipe import WEIGHTS_MASK_HEAD

    def head(machine=CPU, weights=None, in_file=None):
        current = {"model.net.weights": weights, WEIGHTS_MASK_HEAD: in_file}
        r = choose_recipe(synth_stats(), machine, current=current)
        return values(r)["model.net.mask_head_layers"], r.text()

    value, text = head()
    assert value == [128, 128, 128, 128] and "a quarter of the mask head's FLOPs" in text
    assert head(weights="ImageNet")[0] == [128, 128, 128, 128]  # ImageNet weights have no mask head
    assert head(weights="coco")[0] is None  # torchvision's pretrained 4 x 256 head is kept
    assert head(Machine(cores=16, cuda=True, gpu_name="x"))[0] is None
    # a weights file: the head it fits, whatever the machine
    assert head(weights="/w.pth", in_file=[256] * 4)[0] == [256] * 4
    mine = choose_recipe(
        synth_stats(),
        CPU,
        overrides={"model.net.mask_head_layers": "model.net.mask_head_layers=[64,64]"},
        current={"model.net.mask_head_layers": [64, 64]},
    )
    assert values(mine)["model.net.mask_head_layers"] == [64, 64] and "(your override)" in mine.text()
    # the command reads the widths from the file (both of torchvision's key layouts), nothing from the rest
    new = {f"roi_heads.mask_head.{i}.0.weight": torch.zeros(96, 8, 3, 3) for i in range(3)}
    old = {f"roi_heads.mask_head.mask_fcn{i}.weight": torch.zeros(64, 8, 3, 3) for i in (1, 2)}
    torch.save(new, tmp_path / "new.pth")
    torch.save({"model": old}, tmp_path / "old.pth")
    assert _file_mask_head(str(tmp_path / "new.pth")) == [96, 96, 96]
    assert _file_mask_head(str(tmp_path / "old.pth")) == [64, 64]
    assert _file_mask_head("coco") is None and _file_mask_head(None) is None
    assert _file_mask_head(str(tmp_path / "missing.pth")) is None  # the model build names the missing file


def test_on_a_cpu_batches_load_between_the_steps_unless_a_core_is_spare():
    probe = Probe(step_s=2.0, batch_size=4, steps=3, bf16_step_s=1.0, infer_s=0.1, data_s=0.1)
    busy = choose_recipe(synth_stats(), Machine(cores=2, threads=2, cpu_bf16=True, probe=probe))
    v = values(busy)
    assert v["data.num_workers"] == 0 and v["data.persistent_workers"] is False
    assert "use all 2 cores" in busy.text() and "0.10 s a batch, 10% of a step" in busy.text()
    assert "1.10 s a step with 0.10 s of loading" in busy.text()  # the schedule counts the loading
    free = choose_recipe(
        synth_stats(), Machine(cores=2, threads=2, cpu_bf16=True, probe=replace(probe, data_s=0.0))
    )
    assert busy.steps == pytest.approx(free.steps / 1.1)
    spare = choose_recipe(synth_stats(), Machine(cores=16, threads=8, cpu_bf16=True, probe=probe))
    assert values(spare)["data.num_workers"] == 4 and "1.00 s a step (" in spare.text()  # loaded by workers
    assert values(choose_recipe(synth_stats(), Machine(cores=4, threads=3)))["data.num_workers"] == 1
    mine = choose_recipe(
        synth_stats(),
        Machine(cores=2, threads=2, probe=probe),
        overrides={"data.num_workers": "data.num_workers=1"},
        current={"data.num_workers": 1},
    )
    assert values(mine)["data.num_workers"] == 1 and "(your override)" in mine.text()
    assert "1.00 s a step" not in mine.text() and "2.00 s a step (" in mine.text()  # float32, a worker loads
    kept = choose_recipe(
        synth_stats(),
        Machine(cores=2, threads=2, probe=probe),
        overrides={"data.persistent_workers": "data.persistent_workers=true"},
        current={"data.persistent_workers": True},
    )
    assert values(kept)["data.num_workers"] == 1  # not 0: persistent workers without one are a config error


def test_loader_workers_persist_through_the_run_unless_there_are_none():
    r = choose_recipe(synth_stats(), Machine(cores=4, threads=2))
    v = values(r)
    assert v["data.num_workers"] == 2 and v["data.persistent_workers"] is True
    assert "forked again at every epoch" in r.text()
    none = choose_recipe(
        synth_stats(),
        Machine(cores=4, threads=2),
        overrides={"data.num_workers": "data.num_workers=0"},
        current={"data.num_workers": 0},
    )
    assert values(none)["data.persistent_workers"] is False  # data.persistent_workers=true would be an error
    mine = choose_recipe(
        synth_stats(),
        Machine(cores=2),
        overrides={"data.persistent_workers": "data.persistent_workers=false"},
        current={"data.persistent_workers": False},
    )
    assert values(mine)["data.persistent_workers"] is False


# --- the user's overrides ---------------------------------------------------------------------------------


def test_an_override_keeps_the_users_value_and_later_rules_build_on_it():
    overrides = {"model.net.min_size": "model.net.min_size=320", "data.batch_size": "debug=tiny"}
    current = {"model.net.min_size": 320, "data.batch_size": 2}
    r = choose_recipe(stats(), CPU, overrides=overrides, current=current)
    v = values(r)
    assert v["model.net.min_size"] == 320 and v["data.batch_size"] == 2
    assert v["model.net.max_size"] == 448  # 320 x 4/3 = 427 -> 448, from the user's 320
    assert (
        v["model.net.anchor_sizes"][0] == 32
    )  # the 5% side 60 px at 320/600 is 32 px (at the rule's 256: 16)
    lines = {c.key: c.line() for c in r.choices}
    assert "(your override); the rule: 288" in lines["model.net.min_size"]  # 48 / (100 / 600)
    assert "(your override: debug=tiny)" in lines["data.batch_size"]


def test_a_users_max_time_is_the_budget():
    r = choose_recipe(
        synth_stats(),
        CPU,
        budget_minutes=15,
        overrides={"trainer.max_time": "trainer.max_time=00:00:20:00"},
        current={"trainer.max_time": "00:00:20:00"},
    )
    v = values(r)
    assert v["trainer.max_time"] == "00:00:20:00" and v["trainer.val_check_interval"] == "00:00:05:00"
    assert "budget 20 min" in r.text()


def test_a_bad_budget_is_refused():
    from segbench.types import SegbenchError

    with pytest.raises(SegbenchError, match="budget=-1"):
        choose_recipe(synth_stats(), CPU, budget_minutes=-1)


def test_group_options_count_as_the_users_keys():
    from segbench.commands.train import user_keys

    keys, groups = user_keys(["debug=tiny", "model.net.min_size=64", "trainer=gpu", "experiment=auto"])
    assert keys["model.net.min_size"] == "model.net.min_size=64"  # the value wins over debug's 96
    assert (
        keys["trainer.max_epochs"] == "debug=tiny"
        and keys["model.net.rpn_pre_nms_top_n_train"] == "debug=tiny"
    )
    assert keys["trainer.accelerator"] == "trainer=gpu" and keys["trainer.precision"] == "trainer=gpu"
    assert not any(k.startswith(("recipe", "budget", "name")) for k in keys)  # experiment=auto is the switch
    assert groups == {"debug": "tiny", "trainer": "gpu", "experiment": "auto"}


# --- configs ----------------------------------------------------------------------------------------------


def test_auto_is_the_default_and_debug_runs_the_plain_recipe():
    cfg = compose("train", [])
    assert cfg.name == "auto" and cfg.recipe.auto is True and cfg.budget == 15
    for debug in ("tiny", "fdr"):
        plain = compose("train", [f"debug={debug}"])
        assert plain.name == "default" and "recipe" not in plain  # as before experiment=auto existed
        assert compose("train", [f"debug={debug}", "experiment=auto"]).recipe.auto is True
    tv = compose("train", ["experiment=torchvision"])
    assert tv.name == "torchvision" and "recipe" not in tv and tv.model.net.min_size == 800


def test_an_experiment_file_that_does_not_exist_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        compose("train", [f"experiment={tmp_path}/nope.yaml"])


def test_experiment_yaml_writes_nested_keys_with_reasons(tmp_path):
    text = experiment_yaml(
        [
            ("model.net.min_size", 256, "why"),
            ("trainer.max_time", "00:00:15:00", None),
            ("model.net.anchor_sizes", [8, 16], None),
            ("model.eval_max_dets", None, "cap"),
        ],
        defaults=["override /model: maskrcnn_r18"],
    )
    assert text.startswith("# @package _global_\n") and '  max_time: "00:00:15:00"' in text
    assert "    min_size: 256  # why" in text
    raw = OmegaConf.create(text)
    assert raw.model.net.anchor_sizes == [8, 16] and raw.model.eval_max_dets is None
    assert OmegaConf.to_container(raw.defaults) == [{"override /model": "maskrcnn_r18"}]


# --- statistics and the probe on real files ---------------------------------------------------------------


def test_train_statistics_of_the_synthetic_set(synth_root):
    from segbench.data.coco import open_split

    ds = open_split(synth_root, "train")
    s = train_statistics(ds, val_images=8)
    assert s.images == 24 and s.val_images == 8
    assert (s.short_side.median, s.long_side.max) == (96, 96)
    assert s.instances == sum(s.class_counts.values()) == sum(len(ds.annotations(i)) for i in range(len(ds)))
    q = s.object_side
    assert 8 < q.p5 <= q.p25 <= q.p50 <= q.p75 <= q.p95 < 96  # radii 8-20 px
    assert s.object_side_rel.p50 == pytest.approx(q.p50 / 96)
    assert set(s.object_side_per_class) == set(s.class_counts) and s.image_modes
    assert s.objects_per_image[2] >= s.objects_per_image[1] >= s.objects_per_image[0] >= 1
    assert set(s.class_images) == set(s.class_counts)
    assert all(1 <= s.class_images[n] <= min(s.images, s.class_counts[n]) for n in s.class_counts)


def test_the_probe_times_real_steps_and_leaves_the_random_state_alone(synth_root):
    from segbench.data.datamodule import CocoDataModule
    from segbench.models.maskrcnn import build_maskrcnn

    dm = CocoDataModule(root=str(synth_root), batch_size=2)
    dm.setup("fit")
    model = build_maskrcnn(num_classes=dm.num_classes, backbone="resnet18_fpn", min_size=64, max_size=64)
    state = torch.get_rng_state()
    p = probe_machine(model, dm.train_dataset(), dm.val_dataset(), batch_size=2, steps=1, detections=5)
    assert torch.equal(state, torch.get_rng_state())
    assert p.step_s > 0 and p.infer_s > 0 and p.bf16_step_s is None
    assert (p.batch_size, p.steps, p.image_size) == (2, 1, (96, 96))
    assert model.roi_heads.detections_per_img == 100  # the timing's cap is put back
    assert p.infer_cap_s > 0  # the first validations' cost: the cap filled
    m = model.roi_heads.proposal_matcher
    assert (m.high_threshold, m.low_threshold) == (0.5, 0.5)  # the matcher is put back


def test_the_probe_runs_the_mask_head_on_a_trained_models_share_of_rois(synth_root):
    """A fresh model's random proposals rarely reach IoU 0.5, so its mask head sees few RoIs; the probe
    times the steps with the full positive share (25 % of the RoI samples), as after the RPN has learnt."""
    from segbench.data.datamodule import CocoDataModule, collate
    from segbench.models.maskrcnn import build_maskrcnn
    from segbench.recipe import _as_trained

    dm = CocoDataModule(root=str(synth_root), batch_size=2)
    dm.setup("fit")
    torch.manual_seed(0)
    model = build_maskrcnn(
        num_classes=dm.num_classes,
        backbone="resnet18_fpn",
        min_size=64,
        max_size=64,
        box_batch_size_per_image=32,
    )
    model.train()
    seen = []
    model.roi_heads.mask_roi_pool.register_forward_hook(lambda mod, args, out: seen.append(len(out)))
    images, targets = collate([dm.train_dataset()[k] for k in range(2)])
    targets = [{k: v for k, v in t.items() if k != "image_id"} for t in targets]
    model(list(images), targets)
    with _as_trained(model):
        model(list(images), targets)
    fresh, trained = seen
    assert trained == 2 * 8  # positive_fraction 0.25 of 32 RoIs, two images
    assert fresh < trained


def test_validation_time_counts_a_young_model_filling_the_cap():
    from segbench.recipe import VALIDATIONS, _val_image_s

    p = Probe(step_s=1.0, batch_size=4, steps=3, infer_s=0.2, infer_cap_s=1.0)
    assert _val_image_s(p) == pytest.approx((1.0 + (VALIDATIONS - 1) * 0.2) / VALIDATIONS)
    assert _val_image_s(Probe(step_s=1.0, batch_size=4, steps=3, infer_s=0.2)) == 0.2
    assert _val_image_s(None) is None


# --- the command ------------------------------------------------------------------------------------------


def auto_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "experiment=auto", f"data.root={root}", f"paths.output_dir={out}", *extra]


def test_a_dry_run_prints_the_recipe_and_trains_nothing(synth_root, tmp_path, capsys):
    code = main(auto_args(synth_root, tmp_path, "recipe.dry_run=true", "recipe.probe=false", "budget=5"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "auto recipe: 24 train images" in out and "probe skipped: recipe.probe=false" in out
    # median object 21 px in 96 px images: below the band, upsampled 2x (the limit) to 42 px
    assert "model.net.min_size=192" in out and "trainer.max_time=00:00:05:00" in out
    assert "nothing trained" in out and not (tmp_path / "train").exists()


def test_experiment_auto_trains_prints_and_saves_a_recipe_that_runs_again(synth_root, tmp_path, capsys):
    extra = [
        "budget=10",
        "trainer.max_steps=2",
        "recipe.probe_steps=1",
        "data.limit_val=2",
        "test_after_fit=false",
        "model.net.box_detections_per_img=10",  # an untrained model fills its cap: cheap validations
        "model.net.min_size=96",  # the rule's 192 (see the dry run) costs 4x a step
    ]
    code = main(auto_args(synth_root, tmp_path, *extra))
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "probe: 1 step of 4 images" in out
    assert "model.net.box_detections_per_img=10" in out and "(your override); the rule: 100" in out
    assert "model.net.min_size=96" in out and "trainer.max_time=00:00:10:00" in out
    assert "model.net.max_size=96" in out  # from the user's min_size: 96 x 1 (square images)
    (run,) = (tmp_path / "train" / "auto").glob("*/")
    saved = run / "recipe.yaml"
    assert saved.is_file() and f"recipe saved: {saved}" in out
    text = saved.read_text()
    assert text.startswith("# @package _global_") and "override /data: synth" in text
    assert "min_size: 96  # your override" in text and "box_detections_per_img: 10  # your override" in text
    # a rule's key, with its reason
    assert re.search(r"anchor_sizes: \[\d+(, \d+){4}\]  # 5% object side", text)
    assert "recipe:\n  auto: false" in text
    # the saved recipe composes to the run's config, with the rules off
    again = compose("train", [f"experiment={saved}"])
    OmegaConf.resolve(again)
    ran = OmegaConf.load(run / "config.yaml")
    assert again.recipe.auto is False and again.name == "auto"
    for key in ("data", "model", "trainer"):
        assert OmegaConf.to_container(again[key]) == OmegaConf.to_container(ran[key]), key
    # and runs again without choosing anew
    code = main(["train", f"experiment={saved}", "recipe.dry_run=true"])
    out = capsys.readouterr().out
    assert code == 0 and "auto recipe" not in out and "recipe.auto=false" in out


# --- lightening: a budget that holds too few steps --------------------------------------------------------


def _slow(step_s: float) -> Machine:
    return Machine(cores=2, probe=Probe(step_s=step_s, batch_size=4, steps=3, infer_s=0.1))


def test_a_budget_of_too_few_steps_halves_the_rois_and_shrinks_the_crops():
    from segbench.recipe import MIN_STEPS, needs_lightening

    dsb = stats(size=(1000, 1300), objects=(6, 11, 17, 24, 43), per_image=(27, 137, 375))
    heavy = choose_recipe(dsb, _slow(10.0), budget_minutes=15)
    v = values(heavy)
    assert (
        v["model.net.keep_size"]
        and v["data.max_crop"] == 512
        and v["model.net.box_batch_size_per_image"] == 256
    )
    assert heavy.steps < MIN_STEPS and needs_lightening(heavy)
    one = values(choose_recipe(dsb, _slow(10.0), budget_minutes=15, lighten=1))
    assert one["model.net.box_batch_size_per_image"] == 128 and one["data.max_crop"] == 384
    assert one["data.batch_size"] == 4  # a 384 px crop is no longer a large image
    two = choose_recipe(dsb, _slow(10.0), budget_minutes=15, lighten=2)
    assert values(two)["model.net.box_batch_size_per_image"] == 64 and values(two)["data.max_crop"] == 256
    assert not needs_lightening(two)  # the last level
    assert values(choose_recipe(dsb, _slow(10.0), budget_minutes=15, lighten=9)) == values(two)
    assert "halved 2x from 256" in two.text() and "lightened 2x from 512" in two.text()
    fast = choose_recipe(dsb, _slow(0.5), budget_minutes=15)
    assert fast.steps >= MIN_STEPS and not needs_lightening(fast)


def test_lightening_keeps_the_scale_of_resized_images_the_floors_and_the_users_keys():
    synth = stats(size=(192, 192), objects=(14, 21, 28, 38, 49), per_image=(4, 8, 8))
    base = values(choose_recipe(synth, _slow(5.0), budget_minutes=15))
    light = values(choose_recipe(synth, _slow(5.0), budget_minutes=15, lighten=2))
    assert (
        base["model.net.box_batch_size_per_image"] == 64 and light["model.net.box_batch_size_per_image"] == 32
    )
    assert light["model.net.min_size"] == base["model.net.min_size"] and light.get("data.max_crop") is None
    few = stats(size=(192, 192), per_image=(1, 2, 3), objects=(14, 21, 28, 38, 49))
    assert values(choose_recipe(few, _slow(5.0), budget_minutes=15, lighten=2))[
        "model.net.box_batch_size_per_image"] == 32  # fmt: skip
    user = {"model.net.box_batch_size_per_image": "model.net.box_batch_size_per_image=200"}
    mine = choose_recipe(synth, _slow(5.0), budget_minutes=15, lighten=2, overrides=user,
                         current={"model.net.box_batch_size_per_image": 200})  # fmt: skip
    assert values(mine)["model.net.box_batch_size_per_image"] == 200
    gpu = Machine(
        cores=8, cuda=True, gpu_name="x", probe=Probe(step_s=5.0, batch_size=4, steps=3, device="cuda")
    )
    assert choose_recipe(synth, gpu, budget_minutes=15, lighten=2).lighten == 0  # epochs, not a clock


def test_the_command_reprobes_each_lighter_level(synth_root, monkeypatch):
    """choose_auto_recipe times each lighter level again and stops once enough steps fit."""
    import segbench.commands.train as train_cmd
    from segbench.cli import compose
    from segbench.recipe import MIN_STEPS

    timed = []

    def fake_probe(cfg, values, dm, machine, stats):
        rois = values["model.net.box_batch_size_per_image"]
        timed.append(rois)
        return Probe(step_s=8.0 if rois >= 64 else 0.5, batch_size=4, steps=3, infer_s=0.05)

    monkeypatch.setattr(train_cmd, "_probe", fake_probe)
    cfg = compose("train", [f"data.root={synth_root}", "experiment=auto"])
    recipe = train_cmd.choose_auto_recipe(cfg)
    assert timed == [64, 32]  # the first recipe, then one lighter level
    assert recipe.value("model.net.box_batch_size_per_image") == 32 and recipe.lighten == 1
    assert (
        f"lightened (fewer than {MIN_STEPS} steps fit the budget)" in recipe.text()
        and "64 RoIs" in recipe.text()
    )
