"""Mask pasting/encoding equals torchvision's paste + threshold."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from segbench.models.maskrcnn import build_maskrcnn
from segbench.models.segmenter import paste_masks_to_rles, predict_instances
from segbench.types import rles_to_masks


def test_paste_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    n, h, w = 40, 57, 83
    probs = torch.rand(n, 1, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 2, h - 2])
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    # detections are clipped to the image (as the model does); the expansion then reaches outside it
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], dim=1)
    ref = paste_masks_in_image(probs, boxes, (h, w), padding=1)[:, 0] > 0.5
    ours = rles_to_masks(paste_masks_to_rles(probs, boxes, (h, w)), (h, w))
    assert ours.shape == ref.shape
    assert (ours == ref.numpy()).all()


def test_predict_instances_equals_model_forward():
    torch.manual_seed(0)
    model = build_maskrcnn(
        num_classes=2, backbone="resnet18_fpn", min_size=64, max_size=96, box_score_thresh=0.0
    )
    model.eval()
    images = [torch.rand(3, 70, 90), torch.rand(3, 50, 64)]
    with torch.inference_mode():
        ref = model(images)
    ours = predict_instances(model, images)
    for r, o in zip(ref, ours, strict=True):
        assert len(o) == len(r["boxes"]) > 0
        assert np.allclose(o.boxes, r["boxes"].numpy(), atol=1e-4)
        assert np.allclose(o.scores, r["scores"].numpy(), atol=1e-6)
        prob = r["masks"][:, 0].numpy()
        differ = o.get_masks() != (prob > 0.5)
        # the two paste paths round differently: only a pixel whose probability ties the 0.5 cut may differ
        assert not differ[np.abs(prob - 0.5) > 1e-4].any()
        assert differ.sum() <= 2


def test_boxes_below_the_threshold_get_no_mask_and_the_kept_ones_are_unchanged():
    torch.manual_seed(0)
    model = build_maskrcnn(
        num_classes=2, backbone="resnet18_fpn", min_size=64, max_size=96, box_score_thresh=0.0,
        box_detections_per_img=50,
    )  # fmt: skip
    model.eval()
    images = [torch.rand(3, 70, 90), torch.rand(3, 50, 64)]
    rois = []
    model.roi_heads.mask_head.register_forward_hook(lambda m, i, o: rois.append(int(o.shape[0])))
    everything = predict_instances(model, images)
    all_rois = sum(rois)
    cut = float(np.median(np.concatenate([p.scores for p in everything])))  # half the detections
    rois.clear()
    kept = predict_instances(model, images, score_threshold=cut)
    assert sum(rois) < all_rois and sum(rois) == sum(len(k) for k in kept)  # masks only for the kept boxes
    assert model.roi_heads.score_thresh == 0.0  # restored after the call
    for full, k in zip(everything, kept, strict=True):
        ref = full.select(full.scores >= cut)
        assert len(k) == len(ref)
        np.testing.assert_allclose(k.boxes, ref.boxes, atol=1e-4)
        np.testing.assert_allclose(k.scores, ref.scores, atol=1e-6)
        assert (k.get_masks() == ref.get_masks()).all()
