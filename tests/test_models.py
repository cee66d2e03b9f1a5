"""Tests for segbench.models.maskrcnn: backbones, weights sources, safe loading, head replacement.

Everything runs on tiny 64 px images with ``weights=None`` models; downloads are faked or made to fail.
"""

from __future__ import annotations

import builtins
import logging
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models._api
from torch import nn
from torchvision.models import resnet18
from torchvision.ops.misc import FrozenBatchNorm2d

from segbench.models import (
    BACKBONES,
    build_maskrcnn,
    count_classes_in_state_dict,
)
from segbench.models.checkpoint import read_weights
from segbench.types import SegbenchError

# Small sizes so that a forward pass takes well under a second on one CPU core.
TINY = {
    "min_size": 64,
    "max_size": 64,
    "box_batch_size_per_image": 32,
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_detections_per_img": 10,
}
HEAD_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


def _target(n_objects: int = 1, size: int = 64) -> dict[str, torch.Tensor]:
    masks = torch.zeros(n_objects, size, size, dtype=torch.uint8)
    boxes = torch.zeros(n_objects, 4, dtype=torch.float32)
    for i in range(n_objects):
        masks[i, 10 + i : 40 + i, 12:50] = 1
        boxes[i] = torch.tensor([12.0, 10.0 + i, 50.0, 40.0 + i])
    return {"boxes": boxes, "labels": torch.ones(n_objects, dtype=torch.int64), "masks": masks}


@pytest.fixture(scope="module")
def r18_three_classes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    """A from-scratch resnet18 Mask R-CNN with 3 classes, its state_dict and the file it is saved in."""
    torch.manual_seed(0)
    model = build_maskrcnn(num_classes=3, backbone="resnet18_fpn", **TINY)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "r18_3cls.pth"
    torch.save(state, path)
    return state, path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every torch.hub / torchvision download raises URLError, as on a machine without network."""

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"[Errno -3] Temporary failure in name resolution ({url})")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)


def _fake_download(monkeypatch: pytest.MonkeyPatch, state: dict[str, torch.Tensor]) -> list[str]:
    urls: list[str] = []

    def fake(url: str, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        urls.append(url)
        return {k: v.clone() for k, v in state.items()}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake)
    return urls


# ---------------------------------------------------------------------------------------------- building


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_predicts_and_trains(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_maskrcnn(num_classes=2, backbone=backbone, **TINY)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3

    model.eval()
    with torch.no_grad():
        (pred,) = model([torch.rand(3, 64, 64)])
    assert set(pred) == {"boxes", "labels", "scores", "masks"}
    n = len(pred["boxes"])
    assert pred["boxes"].shape == (n, 4) and pred["labels"].dtype == torch.int64
    assert pred["masks"].shape == (n, 1, 64, 64)

    model.train()
    losses = model([torch.rand(3, 64, 64)], [_target()])
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(
        losses
    )
    assert all(torch.isfinite(v) for v in losses.values())


def test_image_without_objects_trains() -> None:
    torch.manual_seed(0)
    model = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", **TINY)
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [_target(0), _target(2)])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()  # the empty image must not break the graph
    empty_only = model([torch.rand(3, 64, 64)], [_target(0)])
    assert empty_only["loss_mask"].item() == 0.0


@pytest.mark.parametrize("backbone", ["resnet18_fpn", "resnet50_fpn_v2"])
def test_lighter_mask_head(backbone: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_maskrcnn(num_classes=2, backbone=backbone, mask_head_layers=[32, 16], **TINY)
    convs = [m for m in model.roi_heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(256, 32), (32, 16)]
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 16
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.roi_heads.mask_head.modules())
    assert has_bn == (backbone == "resnet50_fpn_v2")  # v2 keeps its normalised heads
    losses = model([torch.rand(3, 64, 64)], [_target()])
    sum(losses.values()).backward()
    assert torch.isfinite(losses["loss_mask"])
    # a file trained with that head loads into the same build, and is refused by the default one
    path = tmp_path / "light.pth"
    torch.save(model.state_dict(), path)
    again = build_maskrcnn(num_classes=2, backbone=backbone, mask_head_layers=[32, 16], weights=path, **TINY)
    assert torch.equal(again.roi_heads.mask_head[0][0].weight, model.roi_heads.mask_head[0][0].weight)
    with pytest.raises(SegbenchError, match="mask_head"):
        build_maskrcnn(num_classes=2, backbone=backbone, weights=path, **TINY)
    with pytest.raises(ValueError, match="mask_head_layers"):
        build_maskrcnn(num_classes=2, backbone=backbone, mask_head_layers=[64, 0], **TINY)


def test_unknown_backbone_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="backbone") as err:
        build_maskrcnn(num_classes=2, backbone="resnet101_fpn")
    assert all(name in str(err.value) for name in BACKBONES)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_num_classes_must_be_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_maskrcnn(num_classes=bad, backbone="resnet18_fpn")  # type: ignore[arg-type]


def test_groupnorm_backbone() -> None:
    model = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", norm_layer="groupnorm", **TINY)
    body = list(model.backbone.body.modules())
    group_norms = [m for m in body if isinstance(m, nn.GroupNorm)]
    assert group_norms and all(m.num_groups == 32 for m in group_norms)
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in body)
    losses = model([torch.rand(3, 64, 64)], [_target()])
    assert torch.isfinite(losses["loss_mask"])


def test_groupnorm_mobilenet_uses_fewer_groups_where_needed() -> None:
    model = build_maskrcnn(num_classes=2, backbone="mobilenet_v3_large_fpn", norm_layer="groupnorm", **TINY)
    norms = [m for m in model.backbone.body.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 for m in norms)
    assert {m.num_groups for m in norms} >= {16, 32}  # 16-channel stem, 960-channel last stage


def test_default_norm_layers() -> None:
    scratch = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", **TINY)
    assert isinstance(scratch.backbone.body.bn1, nn.BatchNorm2d)
    frozen = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", norm_layer="frozen_batchnorm", **TINY)
    assert isinstance(frozen.backbone.body.bn1, FrozenBatchNorm2d)


def test_invalid_norm_layer_options() -> None:
    with pytest.raises(ValueError, match="norm_layer"):
        build_maskrcnn(num_classes=2, backbone="resnet18_fpn", norm_layer="layernorm")
    with pytest.raises(ValueError, match="norm_layer"):
        build_maskrcnn(num_classes=2, backbone="resnet50_fpn", weights="coco", norm_layer="groupnorm")


def test_anchor_sizes_one_per_fpn_level() -> None:
    model = build_maskrcnn(
        num_classes=2, backbone="resnet18_fpn", anchor_sizes=[16, 32, 64, 128, 256], **TINY
    )
    assert model.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert model.rpn.anchor_generator.aspect_ratios[0] == (0.5, 1.0, 2.0)
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_maskrcnn(num_classes=2, backbone="resnet18_fpn", anchor_sizes=[16, 32, 64])


def test_mobilenet_anchors_cover_its_three_feature_maps() -> None:
    model = build_maskrcnn(num_classes=2, backbone="mobilenet_v3_large_fpn", anchor_sizes=[16, 64], **TINY)
    assert model.rpn.anchor_generator.sizes == ((16, 64),) * 3
    assert model.rpn.head.cls_logits.out_channels == 6  # 2 sizes x 3 aspect ratios
    losses = model([torch.rand(3, 64, 64)], [_target()])
    assert torch.isfinite(losses["loss_objectness"])


def test_trainable_backbone_layers(r18_three_classes, caplog: pytest.LogCaptureFixture) -> None:
    _, path = r18_three_classes

    def trainable(model: nn.Module) -> set[str]:
        return {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad}

    common = {"num_classes": 3, "backbone": "resnet18_fpn", "weights": str(path), **TINY}
    assert trainable(build_maskrcnn(trainable_backbone_layers=0, **common)) == set()
    assert trainable(build_maskrcnn(trainable_backbone_layers=2, **common)) == {"layer3", "layer4"}
    assert trainable(build_maskrcnn(**common)) == {"layer2", "layer3", "layer4"}  # default 3
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        build_maskrcnn(trainable_backbone_layers=6, **common)

    with caplog.at_level(logging.WARNING, logger="segbench.models.maskrcnn"):
        scratch = build_maskrcnn(num_classes=3, backbone="resnet18_fpn", trainable_backbone_layers=1, **TINY)
    assert all(p.requires_grad for p in scratch.backbone.body.parameters())
    assert "trainable_backbone_layers=1 ignored" in caplog.text


# ---------------------------------------------------------------------------------------------- weights files


def test_state_dict_file_loads_exactly(r18_three_classes) -> None:
    state, path = r18_three_classes
    model = build_maskrcnn(num_classes=3, backbone="resnet18_fpn", weights=str(path), **TINY)
    loaded = model.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_other_class_count_swaps_only_the_class_heads(
    r18_three_classes, caplog: pytest.LogCaptureFixture
) -> None:
    state, path = r18_three_classes
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="segbench.models.maskrcnn"):
        model = build_maskrcnn(num_classes=5, backbone="resnet18_fpn", weights=path, **TINY)
    heads = model.roi_heads
    assert heads.box_predictor.cls_score.out_features == 6
    assert heads.box_predictor.bbox_pred.out_features == 24
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 6
    for key, value in model.state_dict().items():
        if not key.startswith(HEAD_PREFIXES):
            assert torch.equal(value, state[key]), key  # backbone, FPN, RPN, box head, conv5_mask
    assert "Replaced the box and mask predictor heads" in caplog.text
    assert "has 3 classes" in caplog.text and "built for 5 classes" in caplog.text


def test_lightning_checkpoint_loads(r18_three_classes, tmp_path: Path) -> None:
    state, _ = r18_three_classes
    ckpt = tmp_path / "epoch=3.ckpt"
    torch.save(
        {"epoch": 3, "global_step": 10, "state_dict": {"model." + k: v for k, v in state.items()}}, ckpt
    )
    assert read_weights(ckpt).keys() == state.keys()
    model = build_maskrcnn(num_classes=3, backbone="resnet18_fpn", weights=str(ckpt), **TINY)
    assert torch.equal(model.backbone.body.conv1.weight, state["backbone.body.conv1.weight"])
    assert torch.equal(
        model.roi_heads.box_predictor.cls_score.bias, state["roi_heads.box_predictor.cls_score.bias"]
    )


def test_backbone_only_classifier_file_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = resnet18(weights=None).state_dict()  # like torchvision's ImageNet resnet18-*.pth
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(classifier, path)
    model = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", weights=path, **TINY)
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, classifier["layer4.1.conv2.weight"])
    assert torch.equal(model.backbone.body.bn1.running_var, classifier["bn1.running_var"])


def test_unsafe_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (builtins.open, (str(marker), "w"))  # unpickling would create the marker file

    saved_by_torch = tmp_path / "evil.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(1), "x": Payload()}, saved_by_torch)
    plain_pickle = tmp_path / "evil.pkl"
    with plain_pickle.open("wb") as f:
        pickle.dump({"state_dict": Payload()}, f, protocol=2)

    for path in (saved_by_torch, plain_pickle):
        with pytest.raises(SegbenchError, match="would run code") as err:
            build_maskrcnn(num_classes=2, backbone="resnet18_fpn", weights=str(path), **TINY)
        assert str(path) in str(err.value)
        assert not marker.exists()

    # Control: the payload is live, so the assertions above can fail.
    with plain_pickle.open("rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_other_architecture_is_refused(r18_three_classes) -> None:
    _, path = r18_three_classes
    with pytest.raises(SegbenchError) as err:
        build_maskrcnn(num_classes=3, backbone="resnet34_fpn", weights=str(path), **TINY)
    message = str(err.value)
    assert str(path) in message and "resnet34_fpn" in message
    assert "missing" in message and "backbone.body.layer" in message


def test_groupnorm_file_into_batchnorm_model_is_refused(tmp_path: Path) -> None:
    model = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", norm_layer="groupnorm", **TINY)
    path = tmp_path / "gn.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(SegbenchError, match="norm_layer"):
        build_maskrcnn(num_classes=2, backbone="resnet18_fpn", weights=path, **TINY)
    reloaded = build_maskrcnn(
        num_classes=2, backbone="resnet18_fpn", weights=path, norm_layer="groupnorm", **TINY
    )
    assert torch.equal(reloaded.backbone.body.bn1.weight, model.backbone.body.bn1.weight)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model.pth"
    with pytest.raises(SegbenchError, match="not exist") as err:
        build_maskrcnn(num_classes=2, backbone="resnet18_fpn", weights=str(missing))
    assert str(missing) in str(err.value)


def test_unreadable_and_non_state_dict_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a torch file")
    with pytest.raises(SegbenchError, match="not a plain file of tensors") as err:
        read_weights(garbage)
    assert str(garbage) in str(err.value)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(b"")
    with pytest.raises(SegbenchError, match="truncated.pth"):
        read_weights(truncated)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(SegbenchError, match="not a state_dict"):
        read_weights(a_list)


def test_unknown_weights_string_lists_choices() -> None:
    with pytest.raises(SegbenchError) as err:
        build_maskrcnn(num_classes=2, backbone="resnet18_fpn", weights="imagnet")
    message = str(err.value)
    assert "'imagnet'" in message and "'coco'" in message and "'imagenet'" in message and "path" in message


def test_count_classes_in_state_dict(r18_three_classes) -> None:
    state, _ = r18_three_classes
    assert count_classes_in_state_dict(state) == 3
    with pytest.raises(ValueError, match="cls_score"):
        count_classes_in_state_dict({"backbone.body.conv1.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------- torchvision weights


@pytest.mark.parametrize(
    ("backbone", "weights", "filename"),
    [
        ("resnet50_fpn", "coco", "maskrcnn_resnet50_fpn_coco"),
        ("resnet50_fpn_v2", "coco", "maskrcnn_resnet50_fpn_v2_coco"),
        ("resnet18_fpn", "imagenet", "resnet18-"),
        ("mobilenet_v3_large_fpn", "imagenet", "mobilenet_v3_large-"),
    ],
)
@pytest.mark.usefixtures("offline")
def test_offline_download_says_to_pass_a_local_file(backbone: str, weights: str, filename: str) -> None:
    with pytest.raises(SegbenchError, match="Could not download") as err:
        build_maskrcnn(num_classes=2, backbone=backbone, weights=weights, **TINY)
    message = str(err.value)
    assert "model.net.weights=/path/" in message and filename in message


def test_coco_only_for_resnet50_backbones() -> None:
    with pytest.raises(SegbenchError, match="no COCO") as err:
        build_maskrcnn(num_classes=2, backbone="resnet18_fpn", weights="coco")
    assert "resnet50_fpn" in str(err.value) and "resnet50_fpn_v2" in str(err.value)


def test_coco_weights_get_new_heads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    coco = build_maskrcnn(num_classes=90, backbone="resnet50_fpn", **TINY).state_dict()
    urls = _fake_download(monkeypatch, coco)
    with caplog.at_level(logging.INFO, logger="segbench.models.maskrcnn"):
        model = build_maskrcnn(num_classes=4, backbone="resnet50_fpn", weights="coco", **TINY)
    assert urls and "maskrcnn_resnet50_fpn_coco" in urls[0]
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5
    assert torch.equal(
        model.backbone.body.layer3[0].conv1.weight, coco["backbone.body.layer3.0.conv1.weight"]
    )
    assert "has 90 classes" in caplog.text and "built for 4 classes" in caplog.text

    same = build_maskrcnn(num_classes=90, backbone="resnet50_fpn", weights="coco", **TINY)
    assert torch.equal(
        same.roi_heads.box_predictor.cls_score.weight, coco["roi_heads.box_predictor.cls_score.weight"]
    )


def test_imagenet_weights_load_into_the_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    imagenet = resnet18(weights=None).state_dict()
    urls = _fake_download(monkeypatch, imagenet)
    model = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", weights="imagenet", **TINY)
    assert urls and "resnet18" in urls[0]
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert torch.equal(model.backbone.body.layer2[0].conv1.weight, imagenet["layer2.0.conv1.weight"])
    assert not model.backbone.body.conv1.weight.requires_grad  # default: 3 trainable layers


def test_mask_resolution_56_predicts_finer_masks_and_trains() -> None:
    torch.manual_seed(0)
    model = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", mask_resolution=56, **TINY)
    assert model.roi_heads.mask_roi_pool.output_size == (28, 28)
    seen = []
    model.roi_heads.mask_predictor.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    losses = model([torch.rand(3, 64, 64)], [_target()])
    assert torch.isfinite(losses["loss_mask"]) and seen == [(56, 56)]
    model.eval()
    with torch.inference_mode():
        model([torch.rand(3, 64, 64)])
    assert seen[-1] == (56, 56) or len(seen) == 1  # no detection: the mask head does not run
    default = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", **TINY)
    assert default.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert model.state_dict().keys() == default.state_dict().keys()  # the same weights fit both
    for bad in (27, 8):
        with pytest.raises(ValueError, match="mask_resolution"):
            build_maskrcnn(num_classes=2, backbone="resnet18_fpn", mask_resolution=bad, **TINY)


def test_bf16_autocast_keeps_box_coordinates_in_float32() -> None:
    """Under bfloat16 autocast the convolutions run in bfloat16 but the anchors, the proposals and the
    detected boxes stay float32: in bfloat16 a coordinate from 256 px on is rounded to 2 px (a thin
    proposal near 384 px then had zero height, a NaN box loss on dsb2018's 384 px crops)."""
    torch.manual_seed(0)
    model = build_maskrcnn(num_classes=2, backbone="resnet18_fpn", keep_size=True, **TINY).eval()
    image = torch.rand(3, 448, 448)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        image_list, _ = model.transform([image])
        features = model.backbone(image_list.tensors)
        anchors = model.rpn.anchor_generator(image_list, list(features.values()))
        proposals, _ = model.rpn(image_list, features)
        detections = model([image])
    assert next(iter(features.values())).dtype == torch.bfloat16
    with torch.no_grad():
        fp32_anchors = model.rpn.anchor_generator(image_list, [f.float() for f in features.values()])
    assert anchors[0].dtype == torch.float32 and torch.equal(anchors[0], fp32_anchors[0])
    far = proposals[0][proposals[0] >= 256]
    assert proposals[0].dtype == torch.float32 and far.numel() > 100
    assert (far % 2 != 0).float().mean() > 0.5  # not bfloat16's 2 px grid
    assert detections[0]["boxes"].dtype == torch.float32
    # the same modules, parameters and state_dict keys as torchvision's heads
    assert isinstance(model.rpn.head, torchvision.models.detection.rpn.RPNHead)
    assert {k for k in model.state_dict() if k.startswith("rpn.head.")} == {
        "rpn.head.conv.0.0.weight", "rpn.head.conv.0.0.bias", "rpn.head.cls_logits.weight",
        "rpn.head.cls_logits.bias", "rpn.head.bbox_pred.weight", "rpn.head.bbox_pred.bias",
    }  # fmt: skip
