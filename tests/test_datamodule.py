"""Training items: augmentations keep masks, boxes and labels in sync; crowd regions are never targets."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch

from segbench.data.coco import CocoDataset
from segbench.data.datamodule import CocoDataModule, TrainDataset, collate
from segbench.types import masks_to_boxes, masks_to_rles
from tests.conftest import write_coco


def _dataset(tmp_path):
    h, w = 40, 60
    masks = np.zeros((4, h, w), bool)
    masks[0, 2:10, 2:12] = True  # top-left: cropped away by the crop below
    masks[1, 20:30, 30:45] = True
    masks[2, 25:38, 45:58] = True
    masks[3, 0:40, 0:60] = True  # crowd
    rles = masks_to_rles(masks)
    anns = [
        {
            "id": k + 1,
            "image_id": 1,
            "category_id": [5, 9, 5, 9][k],
            "segmentation": rles[k],
            "iscrowd": int(k == 3),
        }
        for k in range(4)
    ]
    p = write_coco(
        tmp_path,
        [("a.png", np.full((h, w, 3), 90, np.uint8))],
        anns,
        [{"id": 5, "name": "x"}, {"id": 9, "name": "y"}],
    )
    return CocoDataset(p), masks


def test_crop_drops_instances_and_keeps_boxes_labels_in_sync(tmp_path):
    ds, masks = _dataset(tmp_path)
    crop = A.Compose([A.Crop(x_min=20, y_min=15, x_max=60, y_max=40), A.HorizontalFlip(p=1.0)])
    img, t = TrainDataset(ds, crop)[0]
    assert img.shape == (3, 25, 40) and img.dtype == torch.float32 and float(img.max()) <= 1
    # instance 0 is cropped away, the crowd region is never a target
    assert t["labels"].tolist() == [2, 1]
    expected = masks[[1, 2], 15:40, 20:60][:, :, ::-1]
    assert (t["masks"].numpy().astype(bool) == expected).all()
    assert torch.equal(t["boxes"], torch.from_numpy(masks_to_boxes(expected)))
    assert t["masks"].dtype == torch.uint8 and t["boxes"].dtype == torch.float32


def test_random_augmentation_is_consistent_and_seeded(tmp_path):
    ds, _ = _dataset(tmp_path)
    tf = A.Compose([A.Affine(scale=(0.5, 1.5), translate_percent=(-0.3, 0.3), p=1.0), A.ColorJitter(p=1.0)])
    item = TrainDataset(ds, tf)
    for seed in range(10):
        torch.manual_seed(seed)
        _, t = item[0]
        m = t["masks"].numpy().astype(bool)
        assert len(m) == len(t["boxes"]) == len(t["labels"])
        assert (m.reshape(len(m), -1).sum(1) >= item.min_area).all()
        assert torch.equal(t["boxes"], torch.from_numpy(masks_to_boxes(m)))
        torch.manual_seed(seed)
        _, again = item[0]
        assert torch.equal(again["masks"], t["masks"])


def test_max_crop_decodes_within_the_window(tmp_path):
    ds, masks = _dataset(tmp_path)
    torch.manual_seed(0)
    img, t = TrainDataset(ds, None, max_crop=24)[0]
    assert img.shape[1:] == (24, 24)
    assert t["masks"].shape[1:] == (24, 24)


def test_datamodule_loaders(synth_root):
    dm = CocoDataModule(root=str(synth_root), batch_size=3, val_batch_size=2, num_workers=0)
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 3
    images, metas = next(iter(dm.val_dataloader()))
    assert len(images) == 2 and metas[0]["gt"].image_size == tuple(images[0].shape[1:])
    assert dm.num_classes == 3 and dm.class_names == ["circle", "square", "triangle"]
    assert collate([(1, "a"), (2, "b")]) == ((1, 2), ("a", "b"))


def _two_splits(tmp_path, train_cats: list[int], val_cats: list[int]):
    """train and val of one image each; one square object per category id listed; categories 1, 2, 3."""
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    for split, used in (("train", train_cats), ("val", val_cats)):
        masks = np.zeros((len(used), 32, 48), bool)
        for k in range(len(used)):
            masks[k, 2:8, 2 + 10 * k : 8 + 10 * k] = True
        rles = masks_to_rles(masks)
        anns = [
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": c,
                "segmentation": rles[k],
                "iscrowd": 0,
                "area": 36.0,
            }
            for k, c in enumerate(used)
        ]
        write_coco(tmp_path, [(f"{split}.png", np.full((32, 48, 3), 90, np.uint8))], anns, cats, split=split)
    return tmp_path


def test_val_uses_the_train_classes(tmp_path):
    # train has no 'c' (not a class); val has no 'b' but keeps it; val's 'c' object is dropped, counted
    root = _two_splits(tmp_path, [1, 2], [1, 3])
    dm = CocoDataModule(root=str(root), num_workers=0)
    dm.setup("fit")
    assert dm.class_names == ["a", "b"] and dm.val_coco.class_names == ["a", "b"]
    assert dm.val_coco.label_to_cat_id == dm.train_coco.label_to_cat_id == {1: 1, 2: 2}
    assert dict(dm.val_coco.dropped.by_reason) == {"untrained_category": [2]}
    assert dm.val_coco.load_instances(0).labels.tolist() == [1]
    # eval / compare open a split the same way (commands/_common.py)
    from omegaconf import OmegaConf

    from segbench.commands._common import open_data_split

    data = OmegaConf.create({"root": str(root), "train_split": "train", "keep_empty_classes": False})
    assert open_data_split(data, "val").class_names == ["a", "b"]


def test_keep_empty_classes_trains_every_category(tmp_path):
    root = _two_splits(tmp_path, [1, 2], [1, 3])
    dm = CocoDataModule(root=str(root), num_workers=0, keep_empty_classes=True)
    dm.setup("fit")
    assert dm.class_names == ["a", "b", "c"] and dm.val_coco.class_names == ["a", "b", "c"]
    assert dm.val_coco.load_instances(0).labels.tolist() == [1, 3]
    assert not dm.val_coco.dropped.total


class _WorkerProbe(torch.utils.data.Dataset):
    """What a loader worker sees: its SIGTERM handler and a draw of numpy's global generator."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        import signal

        blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        return blocked or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, float(np.random.rand())


def _probe(dm) -> list:
    return [(bool(a[0]), float(b[0])) for a, b in dm._loader(_WorkerProbe(), batch_size=1, shuffle=False)]


def test_loader_workers_leave_sigterm_to_the_main_process_and_stay_seeded(synth_root, monkeypatch):
    """SLURM signals every process of a preempted job: a worker must not die of it before the main process
    checkpoints. A worker_init_fn of our own must keep Lightning's worker seeding (seed_everything)."""
    dm = CocoDataModule(root=str(synth_root), num_workers=1)
    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    torch.manual_seed(5)
    first = _probe(dm)
    torch.manual_seed(5)
    assert _probe(dm) == first  # seeded from torch's seed, as Lightning's own worker init does
    assert all(ignored for ignored, _ in first) and first[0][1] != first[1][1]
    assert (
        CocoDataModule(root=str(synth_root), num_workers=0)
        ._loader(_WorkerProbe(), batch_size=1, shuffle=False)
        .worker_init_fn
        is None
    )


class _Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, i  # an (image, target) pair, as the loader's collate takes


def test_a_worker_ignores_a_foreign_sigterm_but_ends_on_its_parents(synth_root):
    """A scheduler's SIGTERM (another process) leaves the worker serving batches; the parent's own SIGTERM
    (what multiprocessing sends its daemonic children at interpreter exit, before joining them) ends it, so
    a loader whose iterator was never shut down cannot hang the exit."""
    import os
    import signal
    import subprocess
    import time

    dm = CocoDataModule(root=str(synth_root), num_workers=1)
    it = iter(dm._loader(_Numbers(), batch_size=1, shuffle=False))
    try:
        assert int(next(it)[0][0]) == 0
        (worker,) = it._workers
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # sent by another process
        time.sleep(1.0)
        assert worker.is_alive() and int(next(it)[0][0]) == 1
        os.kill(worker.pid, signal.SIGTERM)  # sent by the parent
        worker.join(timeout=20)
        assert not worker.is_alive() and worker.exitcode == 0
    finally:
        it._shutdown_workers()
