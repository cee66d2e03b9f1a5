"""segbench.models.roi_pool: the gather RoIAlign gives torchvision's numbers and gradients, and a model built
with it predicts, trains, scripts and exports as one built with torchvision's kernel."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from segbench.models import build_maskrcnn
from segbench.models.roi_pool import FastMultiScaleRoIAlign, roi_align_levels, torchvision_roi_pools

TINY = {
    "min_size": 96,
    "max_size": 96,
    "box_batch_size_per_image": 32,
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_detections_per_img": 20,
}


def _rois(n: int, images: int, side: int, *, seed: int = 0) -> torch.Tensor:
    """RoIs of every kind torchvision's kernel treats apart: inside, across and beyond the border, below one
    feature cell, on the last row / column."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, images, (n,), generator=g).float()
    xy = torch.rand(n, 2, generator=g) * (side + 60) - 30
    wh = torch.rand(n, 2, generator=g) ** 2 * side * 0.6 + 0.1
    fixed = torch.tensor(
        [
            [0, 0.0, 0.0, 0.5, 0.5],  # below one cell
            [0, side - 2.0, side - 2.0, side + 0.0, side + 0.0],  # the last row and column
            [0, side + 10.0, side + 10.0, side + 40.0, side + 30.0],  # beyond the image: zeros
            [0, -50.0, -50.0, -10.0, -5.0],  # before it
            [0, -3.0, 5.0, side + 3.0, 9.0],  # across the whole width
        ]
    )
    return torch.cat([fixed, torch.cat([b[:, None], xy, xy + wh], 1)])


@pytest.mark.parametrize("out, ratio", [(7, 2), (14, 2), (5, 3)])
def test_one_level_equals_torchvision_values_and_gradients(out: int, ratio: int) -> None:
    torch.manual_seed(0)
    side = 128
    x = torch.randn(2, 6, side // 4, side // 4 + 3, dtype=torch.float64).float()
    rois = _rois(120, 2, side)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref = roi_align(a, rois, out, 0.25, ratio)
    got = roi_align_levels([b], rois, torch.zeros(len(rois), dtype=torch.long), [0.25], (out, out), ratio)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # float32, summed in another order
    assert float(ref[2].detach().abs().sum()) == float(got[2].detach().abs().sum()) == 0.0  # beyond the image
    grad = torch.randn_like(ref)
    (ref * grad).sum().backward()
    (got * grad).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4)  # sums in another order


def test_levels_equal_torchvision_multiscale_pooler_under_bfloat16_and_channels_last() -> None:
    torch.manual_seed(1)
    side = 256
    feats = {str(i): torch.randn(3, 8, side >> (2 + i), side >> (2 + i)) for i in range(4)}
    boxes = [_rois(60, 1, side, seed=s)[:, 1:].clamp(0, side) for s in range(3)]
    boxes = [b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] for b in boxes]
    shapes = [(side, side)] * 3
    tv = MultiScaleRoIAlign(list(feats), 7, 2)
    fast = MultiScaleRoIAlign(list(feats), 7, 2)
    fast.__class__ = FastMultiScaleRoIAlign
    ref = tv(feats, boxes, shapes)
    got = fast(feats, boxes, shapes)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # float32, summed in another order
    assert len({int(v) for v in tv.map_levels(boxes)}) > 1  # the RoIs really span several levels

    low = {k: v.bfloat16().contiguous(memory_format=torch.channels_last) for k, v in feats.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref16 = tv(low, boxes, shapes)
        got16 = fast(low, boxes, shapes)
    assert got16.dtype == ref16.dtype == torch.bfloat16
    torch.testing.assert_close(got16.float(), ref16.float(), rtol=1e-2, atol=1e-2)


def test_no_rois_gives_an_empty_batch_that_backpropagates() -> None:
    x = torch.randn(1, 4, 16, 16, requires_grad=True)
    out = roi_align_levels([x], torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), [0.25], (7, 7), 2)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_levels([x], torch.zeros(1, 5), torch.zeros(1, dtype=torch.long), [0.25], (7, 7), 0)


def test_model_with_the_gather_pools_predicts_trains_and_scripts_as_torchvisions() -> None:
    torch.manual_seed(0)
    fast = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", **TINY)
    torch.manual_seed(0)
    plain = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", fast_roi_align=False, **TINY)
    assert type(fast.roi_heads.box_roi_pool) is FastMultiScaleRoIAlign
    assert type(fast.roi_heads.mask_roi_pool) is FastMultiScaleRoIAlign
    assert type(plain.roi_heads.mask_roi_pool) is MultiScaleRoIAlign
    assert fast.state_dict().keys() == plain.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(fast.state_dict()[k], v), k

    images = [torch.rand(3, 96, 120), torch.rand(3, 80, 96)]
    target = {
        "boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 90.0, 40.0]]),
        "labels": torch.tensor([1, 2]),
        "masks": torch.zeros(2, 96, 120, dtype=torch.uint8),
    }
    target["masks"][0, 12:60, 10:50] = 1
    target["masks"][1, 20:40, 60:90] = 1
    target2 = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.long),
        "masks": torch.zeros(0, 80, 96, dtype=torch.uint8),
    }
    losses = {}
    for name, model in (("fast", fast), ("plain", plain)):
        model.train()
        torch.manual_seed(3)  # the same RoI sampling
        out = model(images, [target, target2])
        sum(out.values()).backward()
        losses[name] = out
    for k in losses["plain"]:
        torch.testing.assert_close(losses["fast"][k], losses["plain"][k], rtol=1e-4, atol=1e-5)
    grads_fast = dict(fast.named_parameters())
    for k, p in plain.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads_fast[k].grad, p.grad, rtol=1e-3, atol=1e-5)

    for model in (fast, plain):
        model.eval()
        model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        a, b = fast(images), plain(images)
        scripted = torch.jit.script(fast)
        s = scripted(images)[1]
    for da, db, ds in zip(a, b, s, strict=True):
        assert len(da["boxes"]) == len(db["boxes"]) > 0
        torch.testing.assert_close(da["masks"], db["masks"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ds["masks"], db["masks"])  # scripted: torchvision's op, exactly

    torchvision_roi_pools(fast)
    assert type(fast.roi_heads.box_roi_pool) is MultiScaleRoIAlign


def test_prediction_on_very_large_maps_keeps_torchvisions_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import segbench.models.roi_pool as rp

    def gather(*args, **kwargs):
        raise AssertionError("the gather pooling ran")

    monkeypatch.setattr(rp, "roi_align_levels", gather)
    monkeypatch.setattr(rp, "GATHER_MAX_VALUES_NO_GRAD", 1000)  # the maps below hold 4096 values
    feats = {"0": torch.randn(1, 4, 32, 32)}
    pool = MultiScaleRoIAlign(["0"], 7, 2)
    pool.__class__ = FastMultiScaleRoIAlign
    boxes, shapes = [torch.tensor([[4.0, 4.0, 60.0, 50.0]])], [(128, 128)]
    with torch.no_grad():
        out = pool(feats, boxes, shapes)  # torchvision's kernel: no copy of the maps
    torch.testing.assert_close(out, roi_align(feats["0"], [boxes[0]], 7, 0.25, 2))
    with pytest.raises(AssertionError, match="gather"):
        pool(feats, boxes, shapes)  # gradients enabled: the gather
