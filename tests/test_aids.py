"""Training aids: copy-paste, repeat-factor sampling, weight EMA (answers known by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segbench.data.aids import RepeatFactorSampler, paste_instances, repeat_factors
from segbench.types import SegbenchError


def _square(h, w, y0, x0, size):
    m = np.zeros((h, w), np.uint8)
    m[y0 : y0 + size, x0 : x0 + size] = 1
    return m


# --- copy-paste ----------------------------------------------------------------------------------------
def test_paste_moves_pixels_masks_and_labels_together():
    image = np.full((20, 20, 3), 10, np.uint8)
    own = _square(20, 20, 2, 2, 8)[None]  # rows/cols 2..9
    src = np.zeros((20, 20, 3), np.uint8)
    src_mask = _square(20, 20, 6, 6, 6)  # 6..11: covers part of the image's own object
    src[src_mask.astype(bool)] = 200
    out, masks, labels = paste_instances(
        image, own, np.array([1]), src, src_mask[None], np.array([3]), np.random.default_rng(0)
    )
    assert labels.tolist() == [1, 3] and masks.shape == (2, 20, 20) and masks.dtype == np.uint8
    assert (masks[1] == src_mask).all()  # same size: the source lands where it was
    assert (out[src_mask.astype(bool)] == 200).all() and (out[~src_mask.astype(bool)] == 10).all()
    assert (masks[0] == own[0] & ~src_mask.astype(bool)).all()  # the covered part is cut away
    assert masks[0].sum() == 64 - 16
    assert (image == 10).all() and own[0].sum() == 64  # inputs untouched


def test_paste_takes_a_window_of_a_larger_source_and_places_a_smaller_one():
    rng = np.random.default_rng(1)
    image = np.zeros((16, 16, 3), np.uint8)
    big = np.zeros((64, 64, 3), np.uint8)
    big_masks = np.stack([_square(64, 64, y, x, 4) for y in range(0, 64, 8) for x in range(0, 64, 8)])
    big[big_masks.any(0).astype(bool)] = 255
    out, masks, labels = paste_instances(
        image, np.zeros((0, 16, 16), np.uint8), np.zeros(0, np.int64), big, big_masks,
        np.arange(len(big_masks)), rng,
    )  # fmt: skip
    assert masks.shape[1:] == (16, 16) and len(masks) == len(labels) >= 1
    assert all(m.sum() > 0 for m in masks)
    assert ((out[..., 0] == 255) == masks.any(0).astype(bool)).all()
    small = np.full((4, 4, 3), 99, np.uint8)
    out, masks, labels = paste_instances(
        image, np.zeros((0, 16, 16), np.uint8), np.zeros(0, np.int64), small, np.ones((1, 4, 4), np.uint8),
        np.array([2]), rng,
    )  # fmt: skip
    assert labels.tolist() == [2] and masks[0].sum() == 16 and (out[masks[0].astype(bool)] == 99).all()


def test_paste_respects_max_objects_and_an_empty_source():
    image = np.zeros((32, 32, 3), np.uint8)
    src_masks = np.stack([_square(32, 32, 4 * k, 4 * k, 3) for k in range(6)])
    none = np.zeros((0, 32, 32), np.uint8)
    for seed in range(10):
        _, masks, _ = paste_instances(
            image, none, np.zeros(0, np.int64), image, src_masks, np.ones(6, np.int64),
            np.random.default_rng(seed), max_objects=2,
        )  # fmt: skip
        assert 1 <= len(masks) <= 2
    out, masks, labels = paste_instances(
        image, none, np.zeros(0, np.int64), image, none, np.zeros(0), np.random.default_rng(0)
    )
    assert len(masks) == 0 and out is image


def test_train_items_with_copy_paste_keep_boxes_masks_and_labels_in_sync(synth_root, monkeypatch):
    from segbench.data.coco import open_split
    from segbench.data.datamodule import TrainDataset

    coco = open_split(synth_root, "train")
    read = []
    original = coco.load_image
    monkeypatch.setattr(coco, "load_image", lambda i: read.append(i) or original(i))
    plain = TrainDataset(coco)
    pasted = TrainDataset(coco, copy_paste=1.0, sources=[0, 1, 2])
    more = 0
    for i in range(3):
        torch.manual_seed(i)
        _, t0 = plain[i]
        torch.manual_seed(i)
        img, t = pasted[i]
        n = len(t["labels"])
        assert t["masks"].shape == (n, *img.shape[1:]) and t["boxes"].shape == (n, 4)
        for m, b in zip(t["masks"], t["boxes"], strict=True):
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert b.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        more += n - len(t0["labels"])
    assert more > 0  # objects were added (a few of the image's own may be hidden)
    assert set(read) <= {0, 1, 2}  # pasted only from the allowed sources


def test_copy_paste_options_are_checked(synth_root):
    from segbench.data.datamodule import CocoDataModule

    with pytest.raises(SegbenchError, match="data.copy_paste is a probability"):
        CocoDataModule(root=str(synth_root), copy_paste=2)
    with pytest.raises(SegbenchError, match="data.repeat_factor_threshold"):
        CocoDataModule(root=str(synth_root), repeat_factor_threshold=0)


# --- repeat-factor sampling ------------------------------------------------------------------------------
def test_repeat_factors_follow_the_lvis_rule():
    # class 1 in all 4 images, class 2 in 1 of 4: r_2 = sqrt(0.5 / 0.25) = sqrt(2); an image takes its largest
    f = repeat_factors([[1], [1, 2], [1], []], threshold=0.5)
    assert f.tolist() == pytest.approx([1.0, 2**0.5, 1.0, 1.0])
    assert repeat_factors([[1], [2]], threshold=0.1).tolist() == [1.0, 1.0]  # no class rarer than t
    with pytest.raises(SegbenchError, match="repeat_factor_threshold"):
        repeat_factors([[1]], threshold=0)


def test_repeat_sampler_draws_each_image_floor_or_ceil_times():
    s = RepeatFactorSampler([1.0, 2.5, 1.0], seed=3)
    counts = []
    for epoch in range(400):
        s.set_epoch(epoch)
        drawn = list(s)
        assert len(drawn) == len(s)
        c = np.bincount(drawn, minlength=3)
        assert c[0] == c[2] == 1 and c[1] in (2, 3)
        counts.append(c[1])
    assert np.mean(counts) == pytest.approx(2.5, abs=0.1)
    s.set_epoch(7)
    a = list(s)
    s.set_epoch(7)
    assert list(s) == a  # the epoch and the seed decide
    free = RepeatFactorSampler([1.0, 2.5, 1.0], seed=3)  # nobody sets the epoch: each pass is the next one
    first, second = list(free), list(free)
    assert free.epoch == 2
    for epoch, drawn in ((0, first), (1, second)):
        s.set_epoch(epoch)
        assert list(s) == drawn


def test_the_datamodule_samples_by_repeat_factor(synth_root):
    from segbench.data.aids import RepeatFactorSampler as S
    from segbench.data.datamodule import CocoDataModule

    dm = CocoDataModule(root=str(synth_root), num_workers=0, repeat_factor_threshold=1.0, limit_train=10)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, S) and len(loader.sampler.factors) == 10
    assert (loader.sampler.factors >= 1).all()
    assert max(loader.sampler) < 10
    # no class rarer than the threshold: nothing to repeat, the plain shuffle (a run equal to one without)
    dm = CocoDataModule(root=str(synth_root), num_workers=0, repeat_factor_threshold=0.01, limit_train=10)
    dm.setup("fit")
    assert not isinstance(dm.train_dataloader().sampler, S)


# --- weight EMA ---------------------------------------------------------------------------------------
def test_ema_ramps_its_decay():
    from segbench.callbacks import _ramped_ema

    a, c = torch.tensor(0.0), torch.tensor(1.0)
    assert float(_ramped_ema(a, c, 1, decay=0.999)) == pytest.approx(1 - 2 / 11)  # min(0.999, 2/11)
    assert float(_ramped_ema(a, c, 10**6, decay=0.9)) == pytest.approx(0.1)  # the cap


def test_ema_callback_validates_and_saves_the_averaged_weights(tmp_path):
    import pytorch_lightning as pl

    from segbench.callbacks import EMA

    seen = []

    class Toy(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            return -self.w.sum()  # gradient -1: SGD at lr 1 adds 1 to w each step

        def validation_step(self, batch, _):
            seen.append(float(self.w))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1.0)

    data = torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=1)
    trainer = pl.Trainer(
        max_steps=4, callbacks=[EMA(decay=0.999)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    model = Toy()
    trainer.fit(model, data, data)
    # raw weights 1, 2, 3, 4; the average: 1, then d(n) = (1+n)/(10+n) for n = 1, 2, 3
    avg = 1.0
    for n, w in ((1, 2.0), (2, 3.0), (3, 4.0)):
        d = (1 + n) / (10 + n)
        avg = d * avg + (1 - d) * w
    assert seen[-1] == pytest.approx(avg)  # validation ran on the averaged weights
    assert float(model.w.detach()) == pytest.approx(avg)  # and training ends with them
    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert float(ckpt["state_dict"]["w"]) == pytest.approx(avg)


def test_a_callback_entry_can_be_switched_off():
    from omegaconf import OmegaConf

    from segbench.callbacks import EMA
    from segbench.commands.train import _instantiate_all

    group = OmegaConf.create(
        {"ema": {"_target_": "segbench.callbacks.EMA", "enabled": False, "decay": 0.9}, "none": None}
    )
    assert _instantiate_all(group) == []
    group.ema.enabled = True
    (cb,) = _instantiate_all(group)
    assert isinstance(cb, EMA) and cb.decay == 0.9
    with pytest.raises(SegbenchError, match="callbacks.ema.decay"):
        EMA(decay=1.5)
