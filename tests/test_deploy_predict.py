"""Inference speed without changing the kept detections: bf16 autocast + channels_last, masks only for the
boxes kept (one threshold or one per class), the RPN proposal count, the stage profile, batches, threads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.models import segmenter as S
from segbench.models.maskrcnn import build_maskrcnn
from segbench.models.segmenter import (
    MaskRCNNSegmenter,
    predict_instances,
    prepare_model,
    proposals_for,
)
from segbench.predict import Predictor, load_predictor, predict_images, torch_threads
from segbench.types import SegbenchError


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(
        num_classes=3,
        backbone="resnet18_fpn",
        min_size=64,
        max_size=64,
        box_score_thresh=0.0,
        box_detections_per_img=20,
        rpn_post_nms_top_n_test=150,
    )
    args.update(kw)
    return build_maskrcnn(**args).eval()


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 64, 64, generator=g), torch.rand(3, 50, 64, generator=g)]


def _assert_same(a, b, *, box_atol=1e-4, score_atol=1e-6) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=box_atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=score_atol)
    assert [r["counts"] for r in a.rles] == [r["counts"] for r in b.rles]


# --------------------------------------------------------------------------------------------------
# bf16 + channels_last
# --------------------------------------------------------------------------------------------------
def test_bf16_runs_under_autocast_with_channels_last_and_returns_float32(monkeypatch):
    monkeypatch.setattr(S, "cpu_has_bf16", lambda: True)  # no warning here; the speed is not tested
    model = prepare_model(_model(box_detections_per_img=3), "bf16")
    conv1 = model.backbone.body.conv1
    assert conv1.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    conv1.register_forward_hook(
        lambda m, i, o: seen.append((i[0].is_contiguous(memory_format=torch.channels_last), o.dtype))
    )
    (out,) = predict_instances(model, _images()[:1], precision="bf16")
    assert seen == [(True, torch.bfloat16)]  # NHWC input, bfloat16 convolution
    assert out.boxes.dtype == np.float32 and out.scores.dtype == np.float32 and len(out) == 3
    seen.clear()
    prepare_model(model, "fp32")
    assert conv1.weight.is_contiguous()
    predict_instances(model, _images()[:1])
    assert seen == [(False, torch.float32)]


def test_bf16_on_a_cpu_without_the_instructions_warns_naming_the_key(monkeypatch, caplog):
    monkeypatch.setattr(S, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="segbench.models.segmenter"):
        S.check_precision("bf16")
    assert "precision=bf16" in caplog.text and "SLOWER" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segbench.models.segmenter"):
        S.check_precision("fp32")
    assert caplog.text == ""
    with pytest.raises(SegbenchError, match="precision='fp16' is not valid"):
        S.check_precision("fp16")
    with pytest.raises(SegbenchError, match="precision"):
        predict_instances(_model(), _images(), precision="half")


def test_precision_and_proposals_are_refused_for_a_baseline():
    with pytest.raises(SegbenchError, match=r"precision=bf16 applies to a checkpoint"):
        load_predictor(method="threshold", precision="bf16")
    with pytest.raises(SegbenchError, match=r"proposals=auto applies to a checkpoint"):
        load_predictor(method="threshold", proposals="auto")


# --------------------------------------------------------------------------------------------------
# Work that is thrown away is not done
# --------------------------------------------------------------------------------------------------
def _mask_rois(model) -> list[int]:
    rois: list[int] = []
    model.roi_heads.mask_head.register_forward_hook(lambda m, i, o: rois.append(int(o.shape[0])))
    return rois


def test_per_class_thresholds_drop_boxes_before_the_mask_head_and_keep_the_rest_identical():
    model = _model()
    rois = _mask_rois(model)
    everything = predict_instances(model, _images())
    assert sum(rois) == sum(len(p) for p in everything)
    scores = np.concatenate([p.scores for p in everything])
    labels = np.concatenate([p.labels for p in everything])
    assert len(set(labels.tolist())) >= 2  # the test needs two classes
    cuts = {1: float(np.median(scores[labels == 1])) if (labels == 1).any() else 0.0, 2: 1.0}
    floor = 0.0  # labels without a threshold (3) keep everything
    rois.clear()
    kept = predict_instances(model, _images(), score_threshold=floor, class_thresholds=cuts)
    assert sum(rois) == sum(len(k) for k in kept) < sum(len(p) for p in everything)
    for full, k in zip(everything, kept, strict=True):
        cut = np.array([cuts.get(int(lbl), floor) for lbl in full.labels])
        _assert_same(k, full.select(full.scores >= cut))
        assert 2 not in k.labels.tolist()


def test_proposals_rule():
    model = _model(rpn_post_nms_top_n_test=150, box_detections_per_img=50)
    assert proposals_for(model, None) is None
    assert proposals_for(model, "auto") == 100  # 2 per detection the model may report
    assert proposals_for(model, "auto", max_objects=8) == S.MIN_PROPOSALS  # 2 x 8 = 16 -> the floor, 64
    assert proposals_for(model, "auto", max_objects=40) == 80
    assert proposals_for(_model(rpn_post_nms_top_n_test=50), "auto") == 50  # never more than the model's
    assert proposals_for(model, 30) == 30
    for bad in (0, -3, "many", 2.5, True):
        with pytest.raises(SegbenchError, match="proposals must be auto"):
            proposals_for(model, bad)


def test_fewer_proposals_run_the_box_head_on_fewer_rois_and_enough_give_identical_output():
    model = _model()
    box_rois: list[int] = []
    model.roi_heads.box_head.register_forward_hook(lambda m, i, o: box_rois.append(int(o.shape[0])))
    made: list[int] = []
    model.rpn.register_forward_hook(lambda m, i, o: made.extend(len(p) for p in o[0]))
    ref = predict_instances(model, _images())
    assert model.rpn._post_nms_top_n["testing"] == 150  # restored after each call
    most = max(made)
    assert most <= 150
    box_rois.clear()
    small = predict_instances(model, _images(), proposals=7)
    assert box_rois == [7, 7]  # one call per image size, 7 proposals each
    assert all(len(p) <= 7 * 3 for p in small)  # one box per class and proposal at most
    # as many proposals as the RPN made: nothing is dropped, so the detections are the same
    for a, b in zip(predict_instances(model, _images(), proposals=most), ref, strict=True):
        _assert_same(a, b)
    assert model.rpn._post_nms_top_n["testing"] == 150


# --------------------------------------------------------------------------------------------------
# Batches, threads, profile
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Four images: three 64 x 64, one 48 x 64 (a batch with two sizes)."""
    from segbench.data.synthetic import SynthConfig, make_image

    d = tmp_path_factory.mktemp("deploy_images")
    for i in range(3):
        Image.fromarray(make_image(i, SynthConfig(image_size=64))[0]).save(d / f"im{i}.png")
    Image.fromarray(make_image(5, SynthConfig(image_size=64))[0][:48]).save(d / "im3_small.png")
    return d


def _predictor(model) -> Predictor:
    seg = MaskRCNNSegmenter(model)
    cats = [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]
    return Predictor(seg.predict_batch, cats, {1: 1, 2: 2, 3: 3}, "test model")


def test_batch_of_3_gives_the_predictions_of_batch_1(folder, tmp_path):
    pred = _predictor(_model(box_detections_per_img=6))
    kw = dict(score_threshold=0.0, save_overlays=False, progress=False)
    predict_images(pred, folder, tmp_path / "b1", batch_size=1, **kw)
    predict_images(pred, folder, tmp_path / "b3", batch_size=3, **kw)
    one = json.loads((tmp_path / "b1" / "predictions.json").read_text())
    three = json.loads((tmp_path / "b3" / "predictions.json").read_text())
    assert len(one) == len(three) > 0
    for a, b in zip(one, three, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["segmentation"] == b["segmentation"]
        # a batched matrix product sums in another order: float32 rounding only
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
        assert abs(a["score"] - b["score"]) < 1e-5


def test_profile_times_every_stage_and_threads_are_restored(folder, tmp_path):
    before = torch.get_num_threads()
    pred = _predictor(_model(box_detections_per_img=6))
    s = predict_images(
        pred, folder, tmp_path / "p", batch_size=2, num_threads=1, progress=False, profile=True
    )
    assert torch.get_num_threads() == before
    stages = s["profile"]["stages"]
    want = {"decode", "preprocess", "backbone", "rpn", "box_head", "mask_head", "paste", "rle", "write"}
    assert set(stages) == want
    assert all(v["ms_per_image"] > 0 for v in stages.values())
    assert abs(sum(v["percent"] for v in stages.values()) - 100) < 1e-6
    assert s["profile"]["images"] == 4 and s["num_threads"] == 1
    assert "profile" not in predict_images(pred, folder, tmp_path / "q", progress=False, save_overlays=False)
    with pytest.raises(SegbenchError, match="num_threads must be a positive integer"):
        predict_images(pred, folder, tmp_path / "r", num_threads=0)
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_predict_profile_prints_the_split(folder, tmp_path, capsys):
    from segbench.cli import main

    code = main(
        [
            "predict",
            "method=threshold",
            f"input={folder}",
            f"output={tmp_path}",
            "profile=true",
            "progress=false",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "time per stage" in out
    for stage in ("decode", "run", "write", "wall time"):
        assert stage in out
