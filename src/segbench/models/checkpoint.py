"""The one path from a file on disk to a Mask R-CNN: read, check, rebuild.

Every command that loads weights — ``train`` (``model.net.weights=``, ``ckpt_path=``), ``eval``,
``compare``, ``predict`` and ``export`` — goes through this module:

* :func:`read_checkpoint` reads a segbench checkpoint (a Lightning checkpoint whose ``"segbench"``
  entry is the model card: architecture, classes, categories, mask threshold);
* :func:`read_weights` reads any weights file (a plain state_dict, a segbench / Lightning checkpoint, a
  torchvision-reference ``{"model": ...}`` file) as a bare-model state_dict;
* :func:`build_kwargs` turns a card into the exact :func:`~segbench.models.maskrcnn.build_maskrcnn`
  arguments, and :func:`load_model` rebuilds the trained network from a checkpoint.

Files are always read with ``torch.load(..., weights_only=True)``: only tensors and plain containers are
unpickled, so a file whose unpickling would run code is refused with a message that says so.

Why not Lightning's ``save_hyperparameters`` / ``load_from_checkpoint``: the hyperparameters hold the
optimizer factory (a ``functools.partial``), which ``weights_only=True`` refuses to unpickle, and
``load_from_checkpoint`` rebuilds the whole training module; the card kept here is plain data and
rebuilds only the network.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from segbench.types import SegbenchError

log = logging.getLogger(__name__)

#: Prefix of the network's entries in a checkpoint's ``state_dict`` (the module's ``self.model``).
MODEL_PREFIX = "model."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def torch_load(path: str | os.PathLike, *, key: str, what: str = "weights file") -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors a user can act on.

    Parameters
    ----------
    path
        The file.
    key
        The config key the path came from (``ckpt_path``, ``model.net.weights``), named in messages.
    what
        How the file is named in messages.

    Raises
    ------
    SegbenchError
        Missing file, a folder, unreadable bytes (truncated, not a torch file), or a pickle that would
        run code when loaded.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SegbenchError(f"{what} not found: {path} does not exist. Check the path given as {key}=...")
    if not path.is_file():
        raise SegbenchError(f"{what} {path} is not a file. Pass a .pth/.ckpt file as {key}=...")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # weights_only=True wraps *every* unpickling failure in "Weights only load failed": only a
        # forbidden global means code would run; anything else is a damaged or foreign file.
        found = re.search(r"GLOBAL (\S+) was not an allowed global|whose module (\S+) is blocked", text)
        if found or "Unsupported global" in text:
            culprit = f" (it references {found.group(1) or found.group(2)})" if found else ""
            raise SegbenchError(
                f"refusing to load {path} ({key}): it contains Python objects other than tensors{culprit}, "
                "and loading it would run code stored in the file. segbench loads only files that "
                "torch.load(..., weights_only=True) can read; if you trust the file, re-save just its weights "
                "(torch.save(model.state_dict(), 'clean.pth')) and pass that file instead."
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        raise SegbenchError(
            f"cannot read {what} {path} ({key}): it is not a plain file of tensors"
            + (f" ({detail.group(1).strip()[:300]})" if detail else "")
            + "; is it truncated, or not a .pth/.ckpt file?"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises KeyError/RuntimeError/EOFError... on garbage
        raise SegbenchError(
            f"cannot read {what} {path} ({key}) as a PyTorch file ({type(exc).__name__}: "
            f"{_first_line(exc)[:300]}); is it truncated, or not a .pth/.ckpt file?"
        ) from None


def read_checkpoint(path: str | os.PathLike, *, key: str = "ckpt_path") -> dict:
    """Read a checkpoint written by ``segbench train`` (safely) and check that it has its model card.

    Returns
    -------
    dict
        The checkpoint: ``state_dict`` (``model.<name>`` entries), ``segbench`` (the card), and
        Lightning's own entries.
    """
    ckpt = torch_load(path, key=key, what="checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise SegbenchError(
            f"{path} is not a segbench checkpoint (no 'state_dict'); for plain weights use model.net.weights="
        )
    if not isinstance(ckpt.get("segbench"), Mapping):
        raise SegbenchError(
            f"{path} has no segbench metadata (architecture, classes); it was not written by `segbench train`. "
            "Pass it as model.net.weights=FILE to fine-tune from it instead."
        )
    return ckpt


def model_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The network's entries of a LightningModule ``state_dict``, without the ``model.`` prefix.

    >>> model_state_dict({"model.backbone.w": 1, "ema.w": 2})
    {'backbone.w': 1}
    """
    return {k[len(MODEL_PREFIX) :]: v for k, v in state_dict.items() if str(k).startswith(MODEL_PREFIX)}


def read_weights(path: str | os.PathLike, *, key: str = "model.net.weights") -> dict[str, Tensor]:
    """Read any weights file as a flat ``{name: tensor}`` state_dict of the bare model, on the CPU.

    Accepted layouts: a plain state_dict (``model.state_dict()``); a Lightning / segbench checkpoint
    ``{"state_dict": {"model.<key>": tensor, ...}}`` (the prefix is stripped, other entries dropped); a
    torchvision-reference checkpoint ``{"model": state_dict, ...}``.
    """
    obj = torch_load(path, key=key)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        inner = obj["state_dict"]
        obj = model_state_dict(inner) if any(str(k).startswith(MODEL_PREFIX) for k in inner) else inner
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise SegbenchError(
            f"weights file {path} ({key}) holds a {type(obj).__name__}, not a state_dict (a dict of tensors) or "
            "a checkpoint with a 'state_dict' entry."
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise SegbenchError(
            f"weights file {path} ({key}) is not a state_dict: entries {bad[:3]} are not tensors. Save the "
            "weights with torch.save(model.state_dict(), path)."
        )
    return dict(obj)


def build_kwargs(card: Mapping) -> dict:
    """Every keyword argument of :func:`~segbench.models.maskrcnn.build_maskrcnn` for the network a
    checkpoint's card records.

    ``weights`` becomes ``None`` (the weights come from the file) and ``norm_layer`` is made explicit
    (``None`` meant batch norm when trained from scratch, frozen batch norm when started from weights),
    so that ``build_maskrcnn(**kwargs)`` rebuilds exactly the trained layers. ``trainable_backbone_layers``
    (which only sets ``requires_grad``) goes back to its default.
    """
    from segbench.models.maskrcnn import build_maskrcnn

    params = inspect.signature(build_maskrcnn).parameters
    kwargs = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    net = dict(card.get("net") or {})
    unknown = sorted(set(net) - set(params))
    if unknown:
        raise SegbenchError(
            f"the checkpoint records model options {unknown} that this segbench's build_maskrcnn does not "
            "know; use the segbench version that trained it"
        )
    kwargs.update(net)
    if kwargs.get("norm_layer") is None:
        kwargs["norm_layer"] = "batchnorm" if kwargs.get("weights") is None else "frozen_batchnorm"
    kwargs["weights"] = None
    kwargs["trainable_backbone_layers"] = None
    kwargs["num_classes"] = int(card["num_classes"])
    return _plain(kwargs)


def _plain(obj):
    """Tuples -> lists, paths -> str: JSON-ready build arguments."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def build_from_state_dict(build: Mapping, state_dict: Mapping[str, Tensor], *, where: str) -> torch.nn.Module:
    """``build_maskrcnn(**build)`` with ``state_dict`` loaded strictly, in eval mode, RoI pool scales set."""
    from segbench.models.maskrcnn import build_maskrcnn
    from segbench.models.transforms import fix_roi_pool_scales

    model = build_maskrcnn(**build)
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        raise SegbenchError(
            f"{where}: the weights do not fit the recorded architecture {build.get('backbone')}: "
            f"{_first_line(e)[:300]}"
        ) from None
    return fix_roi_pool_scales(model.eval())


def load_model(path: str | os.PathLike, *, key: str = "ckpt_path") -> tuple[torch.nn.Module, dict, dict]:
    """Rebuild the trained Mask R-CNN of a segbench checkpoint (eval mode, CPU, RoI pool scales set).

    Returns
    -------
    model, card, build
        The torchvision ``MaskRCNN``, the checkpoint's card (``segbench`` entry) and the
        :func:`build_kwargs` that rebuild it.
    """
    ckpt = read_checkpoint(path, key=key)
    card = dict(ckpt["segbench"])
    build = build_kwargs(card)
    model = build_from_state_dict(build, model_state_dict(ckpt["state_dict"]), where=str(path))
    return model, card, build


def check_classes(card: Mapping, dataset, *, source: str | os.PathLike, action: str = "evaluate") -> None:
    """Refuse to score a model on a dataset whose categories differ from the ones it was trained on."""
    if list(card["class_names"]) != list(dataset.class_names):
        raise SegbenchError(
            f"{source} was trained on classes {list(card['class_names'])} but {dataset.ann_file} has "
            f"{dataset.class_names}; {action} on a dataset with the same categories"
        )


def update_card(path: str | os.PathLike, **fields) -> None:
    """Add ``fields`` to the model card of a segbench checkpoint, in place and atomically (e.g. the score
    thresholds calibrated after training)."""
    from segbench.io import atomic_path

    ckpt = read_checkpoint(path)
    ckpt["segbench"] = {**ckpt["segbench"], **fields}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def newest_readable_checkpoint(paths, *, key: str = "resume") -> tuple[Path, int, list[tuple[Path, str]]]:
    """The checkpoint with the highest ``global_step`` among ``paths`` that :func:`read_checkpoint` reads.

    For resuming a run whose ``last.ckpt`` may be truncated or damaged (a full disk, a copy cut short):
    every candidate is read (one at a time), the unreadable ones are skipped and reported; on equal steps
    the earlier path in ``paths`` wins (pass ``last.ckpt`` first).

    Parameters
    ----------
    paths
        Candidate checkpoint files, e.g. every ``*.ckpt`` of a run's ``checkpoints/``.
    key
        How the files were chosen, named in messages (``resume``).

    Returns
    -------
    path, global_step, skipped
        The chosen file, its step, and ``(file, reason)`` for each unreadable candidate.

    Raises
    ------
    SegbenchError
        No candidate, or none readable: the message names every file and why it was refused.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise SegbenchError(f"no checkpoint to {key} from (no .ckpt file given)")
    best: tuple[int, int, Path] | None = None
    skipped: list[tuple[Path, str]] = []
    for order, path in enumerate(paths):
        try:
            ckpt = read_checkpoint(path, key=key)
        except SegbenchError as e:
            skipped.append((path, str(e)))
            continue
        step = int(ckpt.get("global_step") or 0)
        del ckpt
        if best is None or (step, -order) > (best[0], best[1]):
            best = (step, -order, path)
    if best is None:
        raise SegbenchError(
            f"cannot {key}: none of the {len(paths)} checkpoint(s) is readable: "
            + "; ".join(f"{p.name}: {why}" for p, why in skipped)
            + ". Start a new run (without resume=true) or pass a good file as ckpt_path=FILE."
        )
    return best[2], best[0], skipped
