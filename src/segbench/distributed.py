"""``segbench predict`` and ``segbench eval`` over several processes: Lightning's ``trainer.predict``.

``trainer=ddp_cpu trainer.devices=2`` (CPU processes, gloo) or ``trainer=ddp`` (one process per GPU) selects a
Lightning :class:`~pytorch_lightning.Trainer` with more than one process; the command then runs the
functions here instead of the one-process :func:`segbench.predict.predict_images` /
:func:`segbench.training.evaluate_checkpoint`, and writes the same files:

1. every rank lists the same images (sorted file names, or the dataset's order), cuts them into the batches
   one process would run (images ``0..B-1``, ``B..2B-1``, ...) and takes its share (:class:`WholeBatches`):
   rank ``r`` of ``W`` gets the batches ``r, r + W, r + 2W, ...``, each image exactly once, nothing padded;
2. each rank runs the model on its share in ``trainer.predict`` and a :class:`ShardWriter` (Lightning's
   :class:`~pytorch_lightning.callbacks.BasePredictionWriter`, ``write_interval="batch"``) appends each
   batch's per-image records to the rank's shard file ``shards/rank-<r>.pkl`` as soon as the batch is done;
   ``return_predictions=False``, so neither Lightning nor the writer keeps them: a rank holds one batch;
3. after a barrier, rank 0 merges the shards in image order into ``predictions.json`` / ``images.json`` /
   ``summary.json`` (streamed: one record at a time) or into the evaluator that writes ``metrics.json``,
   then removes the shards. The other ranks return ``None``.

Ranks started by Lightning run the whole command line again (its subprocess launcher), so each rank loads
its own model, on its own device (``trainer.strategy.root_device``).
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import pickle
import shutil
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Sampler

from segbench.io import atomic_path, to_jsonable, write_json
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

__all__ = [
    "ShardWriter",
    "WholeBatches",
    "evaluate_checkpoint_distributed",
    "predict_images_distributed",
    "processes",
    "read_shard",
    "trainer_options",
    "use_if_distributed",
]

#: The folder (inside the output folder) of the per-rank shards; removed once they are merged.
SHARDS_DIR = "shards"


# --------------------------------------------------------------------------------------------------
# The Trainer
# --------------------------------------------------------------------------------------------------
def trainer_options(trainer_cfg=None, *, progress: bool = True) -> dict:
    """The Trainer arguments that predict and eval set over whatever ``trainer=`` holds: no logger, no
    checkpoints, float32 (the model's precision is predict's own ``precision=`` key; a training preset's
    ``trainer.precision`` such as ddp's ``16-mixed`` would change the detections), every batch, and our own
    sampler (``use_distributed_sampler=False``; see :func:`_sharded_loader`)."""
    asked = None if trainer_cfg is None else trainer_cfg.get("precision")
    if asked not in (None, 32, "32", "32-true"):
        log.info(
            "trainer.precision=%s is for training; predict and eval run the model in float32 "
            "(predict's precision=bf16 asks for bfloat16)",
            asked,
        )
    return {
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": bool(progress),
        "use_distributed_sampler": False,
        "precision": "32-true",
        "limit_predict_batches": 1.0,
        "inference_mode": True,
        "callbacks": [],
    }


def processes(trainer: pl.Trainer) -> int:
    """How many processes ``trainer`` runs in all (nodes x devices per node); known before they start."""
    return int(trainer.num_nodes) * int(trainer.num_devices)


def use_if_distributed(trainer: pl.Trainer | None) -> pl.Trainer | None:
    """``trainer`` when it runs more than one process, else ``None`` (the one-process path runs)."""
    if trainer is None:
        return None
    if processes(trainer) <= 1:
        log.info("trainer runs one process on %s: the one-process path runs", trainer.strategy.root_device)
        return None
    return trainer


def _threads_per_process(trainer: pl.Trainer, num_threads: int | None) -> int | None:
    """``num_threads``, or for CPU processes the cores shared out between the processes of this node
    (torch's default is every core in every process: ``W`` processes would oversubscribe them ``W`` times)."""
    if num_threads is not None or trainer.strategy.root_device.type != "cpu":
        return num_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // max(int(trainer.num_devices), 1))
    log.info(
        "%d CPU process(es) on this machine, %d core(s): %d torch thread(s) each (num_threads= sets it)",
        trainer.num_devices,
        cores,
        share,
    )
    return share


# --------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------
def shard_path(folder: str | os.PathLike, rank: int) -> Path:
    return Path(folder) / f"rank-{rank}.pkl"


class ShardWriter(BasePredictionWriter):
    """Appends the records of each predicted batch to this rank's shard file, at the end of the batch.

    ``predict_step`` returns a list of picklable records (one per image, each with its ``index``); they are
    written with :mod:`pickle` one after the other and the file is flushed, so that a rank's memory holds
    one batch, whatever the number of images. The writer keeps only the open file and two counters.

    Pickle, not JSON: the records hold numpy arrays and match objects that must come back exactly (eval),
    and the files are this run's own, written and read by the same command, then deleted.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__(write_interval="batch")
        self.folder = Path(folder)
        self.path: Path | None = None
        self.records = 0
        self.batches = 0
        self._file = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = shard_path(self.folder, trainer.global_rank)
        self._file = open(self.path, "wb")  # noqa: SIM115 - open for the whole run, closed in teardown

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        for record in prediction:
            pickle.dump(record, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.flush()
        self.records += len(prediction)
        self.batches += 1

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_shard(path: str | os.PathLike) -> Iterator[dict]:
    """The records of one shard file, one at a time, in the order they were written."""
    with open(path, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def _in_order(paths: Sequence[Path], n: int) -> Iterator[dict]:
    """The records of all shards in image order (each shard is in order: a k-way merge, one record per
    shard in memory), checking that every index ``0..n-1`` comes exactly once."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SegbenchError(f"the shard {missing[0]} was not written; a process failed (see its log above)")
    expected = 0
    for record in heapq.merge(*(read_shard(p) for p in paths), key=lambda r: r["index"]):
        if record["index"] != expected:
            what = "twice" if record["index"] < expected else f"but not image {expected}"
            raise SegbenchError(
                f"the shards in {paths[0].parent} hold image {record['index']} {what}: each image must be "
                "predicted exactly once (a bug in segbench's sampler; please report it)"
            )
        expected += 1
        yield record
    if expected != n:
        raise SegbenchError(f"the shards in {paths[0].parent} hold {expected} of the {n} images")


# --------------------------------------------------------------------------------------------------
# The run over the processes
# --------------------------------------------------------------------------------------------------
def _as_list(batch: list) -> list:
    """The collate function: the batch as the list of its items (images of any size, no tensors)."""
    return batch


class _Failed:
    """The item a :class:`_Guarded` dataset gives for an item that raised a :class:`SegbenchError`."""

    def __init__(self, message: str) -> None:
        self.message = message


class _Guarded(Dataset):
    """``dataset``, with a :class:`_Failed` item in place of a :class:`SegbenchError` (picklable, so that
    DataLoader workers can hand it over)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return self.dataset[i]
        except SegbenchError as e:
            return _Failed(str(e))


def _stop_together(trainer: pl.Trainer, failure: str | None) -> None:
    """Every process learns whether any of them failed, and all stop with exit status 2 if one did.

    Each rank's failure (or ``None``) and pid are gathered (``all_gather_object``). Rank 0 raises at once,
    naming the first failing process and its message. The other ranks first wait (at most
    ``_RANK_ZERO_EXIT_WAIT`` s) for rank 0 to exit when rank 0 is their parent, i.e. when Lightning's
    subprocess launcher started them: rank 0 then watches them, and a child that exits with an error
    before rank 0 does gets rank 0 killed (SIGKILL, exit -9) before it prints why.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if failure is not None:
            raise SegbenchError(failure)
        return
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (failure, os.getpid()))
    failed = [(rank, msg) for rank, (msg, _) in enumerate(gathered) if msg is not None]
    if not failed:
        return
    rank = trainer.global_rank
    if rank != 0:
        rank_zero_pid = gathered[0][1]
        deadline = time.monotonic() + _RANK_ZERO_EXIT_WAIT
        while os.getppid() == rank_zero_pid and time.monotonic() < deadline:
            time.sleep(0.05)
    if failure is not None:
        raise SegbenchError(failure if rank == 0 else f"process {rank}: {failure}")
    first, message = failed[0]
    raise SegbenchError(f"process {rank}: another process of this run stopped: process {first}: {message}")


#: Seconds a rank started by rank 0 waits for rank 0 to exit before it exits itself (see _stop_together).
_RANK_ZERO_EXIT_WAIT = 60.0


class _ShardedPredict(pl.LightningModule):
    """Runs ``step`` on each batch of this rank's share of ``dataset``.

    The network is the one inside ``step`` (already on this rank's device), not a submodule, so Lightning
    neither moves nor wraps it; batches are lists of numpy images and stay as they are.
    """

    def __init__(self, dataset: Dataset, step: Callable[[list], list], *, batch_size: int, num_workers: int):
        super().__init__()
        self.dataset, self.step = _Guarded(dataset), step
        self.batch_size, self.num_workers = batch_size, num_workers
        self.failure: str | None = None

    def predict_dataloader(self) -> DataLoader:
        return _sharded_loader(
            self.dataset,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )

    def predict_step(self, batch: list, batch_idx: int, dataloader_idx: int = 0) -> list:
        # A user-facing failure (an unreadable image, ...) is kept, not raised: raised inside
        # trainer.predict, Lightning would kill the other processes (SIGKILL, from rank 0's observer of its
        # children) before they could say why. The rank skips its remaining batches and the failure is
        # shared after the loop (_stop_together).
        if self.failure is not None:
            return []
        failed = next((item for item in batch if isinstance(item, _Failed)), None)
        if failed is not None:
            self.failure = failed.message
            return []
        try:
            return self.step(batch)
        except SegbenchError as e:
            self.failure = str(e)
            return []

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch


class WholeBatches(Sampler[int]):
    """Rank ``rank``'s share of ``n`` items: the batches ``rank, rank + world_size, ...`` of the batches of
    ``batch_size`` consecutive items that one process runs, in order, unpadded.

    Written here rather than taken from torch or Lightning: torch's ``DistributedSampler`` (Lightning's
    choice for training loaders) pads every rank to the same length by repeating items, which would predict
    and count those images twice; Lightning's ``UnrepeatedDistributedSampler`` (its choice for predict) does
    not pad, but deals single items (``r, r + W, ...``), so an image would share its batch with other images
    than in one process, and a batched network call differs in the last bits of a score with the batch it
    runs in. Dealing whole batches keeps every batch as one process makes it, so the detections are the
    same bit for bit; the ranks' lengths differ by at most one batch (safe: predict makes no collective call
    per batch, and the barrier comes after the loop). Each rank's items are in order, so the merge reads the
    shards as sorted streams. Used with ``DataLoader(batch_size=batch_size)``: only the last batch of all can
    be short, and it is the last of its rank, so the loader cuts the same batches again.

    >>> [list(WholeBatches(7, batch_size=2, rank=r, world_size=2)) for r in (0, 1)]
    [[0, 1, 4, 5], [2, 3, 6]]
    """

    def __init__(self, n: int, *, batch_size: int, rank: int, world_size: int) -> None:
        batches = range(rank, -(-n // batch_size), world_size)
        self.indices = [i for b in batches for i in range(b * batch_size, min((b + 1) * batch_size, n))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _sharded_loader(
    dataset: Dataset, *, rank: int, world_size: int, batch_size: int, num_workers: int = 0
) -> DataLoader:
    """Rank ``rank``'s share of ``dataset`` (:class:`WholeBatches`) in batches of ``batch_size``."""
    sampler = WholeBatches(len(dataset), batch_size=batch_size, rank=rank, world_size=world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=_as_list, num_workers=num_workers
    )


def _predict_to_shards(
    trainer: pl.Trainer,
    dataset: Dataset,
    step: Callable[[list], list],
    shard_dir: Path,
    *,
    batch_size: int,
    num_threads: int | None,
    num_workers: int = 0,
) -> list[Path] | None:
    """Run ``step`` over ``dataset`` split between the trainer's processes, each writing its shard; after a
    barrier, rank 0 gets the shard paths (rank order) and the other ranks ``None``."""
    from segbench.predict import torch_threads

    world = processes(trainer)
    batches = -(-len(dataset) // batch_size)
    if batches < world:
        raise SegbenchError(
            f"{len(dataset)} image(s) in batches of {batch_size} make {batches} batch(es) for {world} processes: "
            f"each process needs one; pass a smaller batch_size= or trainer.devices={max(batches, 1)} "
            "(or drop trainer=)"
        )
    writer = ShardWriter(shard_dir)
    trainer.callbacks.append(writer)
    module = _ShardedPredict(dataset, step, batch_size=batch_size, num_workers=num_workers)
    with torch_threads(_threads_per_process(trainer, num_threads)):
        trainer.predict(module, return_predictions=False)
    _stop_together(trainer, module.failure)
    log.info("rank %d wrote %d record(s) to %s", trainer.global_rank, writer.records, writer.path)
    try:
        trainer.strategy.barrier("segbench-shards-written")
    except RuntimeError as e:  # gloo / nccl: a peer is gone
        raise SegbenchError(
            f"process {trainer.global_rank}: another process of this run stopped before writing its shard "
            f"(its error is printed above; {str(e).splitlines()[0][:200]})"
        ) from None
    if not trainer.is_global_zero:
        return None
    return [shard_path(shard_dir, r) for r in range(trainer.world_size)]


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------
class _ImageFiles(Dataset):
    """Item ``i``: ``(i, image, None)``, or ``(i, None, reason)`` for a file that cannot be read."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from segbench.data.coco import read_image

        try:
            return i, read_image(self.files[i]), None
        except SegbenchError as e:
            return i, None, str(e).split(". The file is")[0]


def _json_item(obj) -> str:
    """One item of a list as ``json.dumps(list, indent=2)`` writes it (so that the streamed
    ``predictions.json`` is the file :func:`segbench.io.write_json` would write)."""
    return textwrap.indent(json.dumps(obj, indent=2), "  ")


def predict_images_distributed(
    predictor,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    trainer: pl.Trainer,
    score_threshold: float | None = None,
    batch_size: int = 4,
    num_threads: int | None = None,
    save_overlays: bool = True,
    save_masks: bool = False,
    num_workers: int = 0,
) -> dict | None:
    """:func:`segbench.predict.predict_images` split over the processes of ``trainer``.

    Each process predicts its share of the images (:func:`_sharded_loader`), writes their overlays and
    masks, and streams their COCO results to its shard; rank 0 merges the shards into the same
    ``predictions.json``, ``images.json``, ``categories.json`` and ``summary.json`` as one process
    (image ids ``1..`` in file order, unreadable files skipped). ``summary.json`` adds ``processes``.

    Parameters
    ----------
    predictor : segbench.predict.Predictor
        Loaded by this process, on its device (``trainer.strategy.root_device``).
    trainer
        A Trainer with :func:`trainer_options`.
    num_threads
        torch's threads per process; ``None``: for CPU processes, this machine's cores shared out.
    num_workers
        DataLoader worker processes per rank that read the images (0: the rank reads them).

    Returns
    -------
    dict or None
        The summary on rank 0; ``None`` on the other ranks.
    """
    from PIL import Image

    from segbench.eval.metrics import instances_to_results
    from segbench.predict import _output_stems, _relative_name, _threshold_used, collect_images, draw_overlay

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SegbenchError(f"batch_size must be a positive integer, got {batch_size!r}")
    if score_threshold is not None and not 0.0 <= float(score_threshold) <= 1.0:
        raise SegbenchError(
            f"score_threshold must be in [0, 1] or null (calibrated), got {score_threshold!r}"
        )
    files, root = collect_images(source)
    names = [_relative_name(p, root) for p in files]
    stems = _output_stems(names)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for wanted, sub in ((save_overlays, "overlays"), (save_masks, "masks")):
        if wanted:
            (out / sub).mkdir(exist_ok=True)
    label_names = predictor.label_names()
    if trainer.is_global_zero:
        log.info(
            "predicting %d image(s) from %s with %s in %d processes",
            len(files),
            source,
            predictor.source,
            processes(trainer),
        )

    # the per-image work of predict_images (keep, results, overlay, masks); the COCO image id is given at
    # the merge, where the order of all images is known
    def step(batch: list) -> list[dict]:
        records = {}
        for i, _, reason in batch:
            if reason is not None:
                log.warning("skipped %s: %s", names[i], reason)
                records[i] = {"index": i, "name": names[i], "skipped": reason}
        readable = [(i, im) for i, im, reason in batch if reason is None]
        found = predictor.segment([im for _, im in readable]) if readable else []
        for (i, image), inst in zip(readable, found, strict=True):
            inst = predictor.keep(inst, score_threshold)
            if save_overlays:
                Image.fromarray(draw_overlay(image, inst, label_names)).save(
                    out / "overlays" / f"{stems[i]}.png"
                )
            if save_masks and len(inst):
                for k, m in enumerate(inst.get_masks()):
                    Image.fromarray(m.astype("uint8") * 255).save(out / "masks" / f"{stems[i]}_{k}.png")
            h, w = image.shape[:2]
            results = to_jsonable(instances_to_results(inst, 0, predictor.label_to_cat_id))
            records[i] = {"index": i, "name": names[i], "height": h, "width": w, "results": results}
        return [records[i] for i, _, _ in batch]

    shard_dir = out / SHARDS_DIR
    shards = _predict_to_shards(
        trainer,
        _ImageFiles(files),
        step,
        shard_dir,
        batch_size=batch_size,
        num_threads=num_threads,
        num_workers=num_workers,
    )
    if shards is None:
        return None

    images_index: dict[str, dict] = {}
    skipped: list[dict] = []
    detections = 0
    summary = {
        "source": predictor.source,
        "input": os.fspath(source),
        "processed": 0,
        "skipped": skipped,
        "detections": 0,
        "score_threshold": _threshold_used(predictor, score_threshold),
        "batch_size": batch_size,
        "num_threads": num_threads,
        "processes": len(shards),
        "predictions": str(out / "predictions.json"),
    }
    with atomic_path(out / "predictions.json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("[")
        for record in _in_order(shards, len(files)):
            if "skipped" in record:
                skipped.append({"file": record["name"], "reason": record["skipped"]})
                continue
            image_id = len(images_index) + 1
            images_index[record["name"]] = {
                "id": image_id,
                "height": record["height"],
                "width": record["width"],
            }
            for r in record["results"]:
                r["image_id"] = image_id
                f.write(("\n" if detections == 0 else ",\n") + _json_item(r))
                detections += 1
        f.write("\n]" if detections else "]")
        summary.update(processed=len(images_index), detections=detections)
        if not images_index:  # inside the block: the streamed predictions.json is not kept
            write_json(out / "summary.json", summary)
            raise SegbenchError(
                f"none of the {len(files)} image(s) could be read: "
                + "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5])
            )
    write_json(out / "images.json", images_index)
    write_json(out / "categories.json", predictor.categories)
    write_json(out / "summary.json", summary)
    shutil.rmtree(shard_dir, ignore_errors=True)
    return summary


# --------------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------------
class _DatasetImages(Dataset):
    """Item ``i``: ``(i, dataset[i])`` (the image and its ground truth) for the first ``n`` images."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset, self.n = dataset, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return i, self.dataset[i]


def evaluate_checkpoint_distributed(
    ckpt_path: str | os.PathLike,
    dataset,
    *,
    trainer: pl.Trainer,
    out_dir: str | os.PathLike,
    max_dets: int | None = None,
    score_threshold: float | None = 0.5,
    limit: int | None = None,
    store_thresholds: bool = False,
    label_errors: bool = False,
    num_threads: int | None = None,
    num_workers: int = 0,
) -> dict | None:
    """:func:`segbench.training.evaluate_checkpoint` split over the processes of ``trainer``.

    Each process runs the model on its share of the images, one image per call as the one-process
    evaluation does (:func:`segbench.eval.runner.evaluate_segmenter`), matches each image's detections to
    its ground truth (:class:`~segbench.eval.metrics.Evaluator`) and streams the per-image evaluator state
    to its shard. Rank 0 merges the states in dataset order (:meth:`Evaluator.from_states`), scores them
    and writes the same ``metrics.json``, ``results.json``, ``per_image.csv`` (...) as one process
    (:func:`segbench.training.write_evaluation`). COCO AP needs every result at once, so rank 0 holds them
    all for the scoring, as one process does; no rank holds more than one batch while predicting.

    Returns
    -------
    dict or None
        The metrics on rank 0; ``None`` on the other ranks.
    """
    from segbench.eval.metrics import Evaluator
    from segbench.models.checkpoint import check_classes
    from segbench.models.segmenter import MaskRCNNSegmenter
    from segbench.training import write_evaluation

    seg, card = MaskRCNNSegmenter.from_checkpoint(ckpt_path, device=str(trainer.strategy.root_device))
    check_classes(card, dataset, source=ckpt_path, action="evaluate")
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    options = {
        "categories": dataset.categories,
        "label_to_cat_id": dataset.label_to_cat_id,
        "max_dets": max_dets,
        "score_threshold": score_threshold,
    }
    ev = Evaluator(**options)

    def step(batch: list) -> list[dict]:
        records = []
        for i, sample in batch:
            t0 = time.perf_counter()
            pred = seg(sample.image)
            seconds = time.perf_counter() - t0
            ev.reset()  # one image's state per record: the rank keeps nothing between images
            ev.update(sample.instances, pred, image_id=sample.image_id, file_name=sample.file_name)
            records.append({"index": i, "seconds": seconds, "state": ev.state()})
        return records

    out = Path(out_dir)
    shard_dir = out / SHARDS_DIR
    shards = _predict_to_shards(
        trainer,
        _DatasetImages(dataset, n),
        step,
        shard_dir,
        batch_size=1,  # the model sees one image per call, as in evaluate_segmenter
        num_threads=num_threads,
        num_workers=num_workers,
    )
    if shards is None:
        return None
    states, seconds = [], 0.0
    for record in _in_order(shards, n):
        states.append(record["state"])
        seconds += record["seconds"]
    merged = Evaluator.from_states(states, **options)
    metrics = merged.compute()
    metrics["ms_per_image"] = 1000 * seconds / max(n, 1)
    metrics = to_jsonable(metrics)
    metrics["processes"] = len(shards)
    result = write_evaluation(
        ckpt_path,
        dataset,
        metrics,
        merged,
        out_dir=out,
        score_threshold=score_threshold,
        store_thresholds=store_thresholds,
        label_errors=label_errors,
    )
    shutil.rmtree(shard_dir, ignore_errors=True)
    return result
