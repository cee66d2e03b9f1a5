"""The one checkpoint path: every command reads weights through ``segbench.models.checkpoint`` and
rebuilds the same network, whatever norm layer it was trained with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

import segbench
from segbench.models.checkpoint import build_kwargs, load_model, read_checkpoint, read_weights
from segbench.models.maskrcnn import build_maskrcnn
from segbench.models.module import MaskRCNNModule
from segbench.models.segmenter import MaskRCNNSegmenter
from segbench.training import save_checkpoint
from segbench.types import SegbenchError

NET = {"backbone": "resnet18_fpn", "min_size": 64, "max_size": 64, "box_detections_per_img": 10}
CATS = [{"id": 7, "name": "cell"}]


def _module(weights) -> MaskRCNNModule:
    torch.manual_seed(0)
    return MaskRCNNModule(
        net={**NET, "weights": weights}, num_classes=1, class_names=["cell"], categories=CATS,
        label_to_cat_id={1: 7},
    )  # fmt: skip


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[MaskRCNNModule, Path]:
    """A model started from a weights file (so frozen batch norm by default), saved as training does."""
    tmp = tmp_path_factory.mktemp("ckpt")
    start = tmp / "start.pth"
    torch.manual_seed(1)
    torch.save(build_maskrcnn(num_classes=1, weights=None, **NET).state_dict(), start)
    module = _module(str(start))
    return module, save_checkpoint(module, tmp / "finetuned.ckpt")


def test_a_finetuned_checkpoint_is_rebuilt_with_its_norm_layer(finetuned):
    module, path = finetuned
    assert any(isinstance(m, FrozenBatchNorm2d) for m in module.model.modules())
    model, card, build = load_model(path)
    assert build["norm_layer"] == "frozen_batchnorm" and build["weights"] is None
    assert card["class_names"] == ["cell"] and card["label_to_cat_id"] == {1: 7}
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == sum(
        isinstance(m, FrozenBatchNorm2d) for m in module.model.modules()
    )
    x = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(2))]
    reference = module.model.eval()
    with torch.inference_mode():
        a, b = (
            reference.backbone(reference.transform(x)[0].tensors),
            model.backbone(model.transform(x)[0].tensors),
        )
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_every_loader_gives_the_same_network(finetuned, tmp_path):
    """The segmenter (eval, compare, predict), the export and the weights loader read the same tensors."""
    _, path = finetuned
    model, _, _ = load_model(path)
    seg, card = MaskRCNNSegmenter.from_checkpoint(path)
    weights = read_weights(path)
    reference = model.state_dict()
    assert seg.model.state_dict().keys() == reference.keys() == weights.keys()
    for k, v in reference.items():
        assert torch.equal(seg.model.state_dict()[k], v) and torch.equal(weights[k], v), k
    assert seg.mask_threshold == card["mask_threshold"] == 0.5


def test_only_the_checkpoint_module_unpickles_weights():
    """One place reads weight files (``weights_only=True``): no other module calls ``torch.load``."""
    src = Path(segbench.__file__).parent
    users = sorted(
        str(p.relative_to(src)) for p in src.rglob("*.py") if "torch.load(" in p.read_text(encoding="utf-8")
    )
    assert users == ["models/checkpoint.py"]


def test_card_and_file_errors_name_the_fix(tmp_path, finetuned):
    plain = tmp_path / "plain.pth"
    torch.save(build_maskrcnn(num_classes=1, weights=None, **NET).state_dict(), plain)
    with pytest.raises(SegbenchError, match="not a segbench checkpoint.*model.net.weights="):
        read_checkpoint(plain)
    no_card = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, no_card)
    with pytest.raises(SegbenchError, match="no segbench metadata"):
        read_checkpoint(no_card)
    with pytest.raises(SegbenchError, match=r"nope\.ckpt.*ckpt_path="):
        read_checkpoint(tmp_path / "nope.ckpt")
    _, path = finetuned
    card = dict(read_checkpoint(path)["segbench"])
    with pytest.raises(SegbenchError, match=r"\['future_option'\]"):
        build_kwargs({**card, "net": {**card["net"], "future_option": 1}})
