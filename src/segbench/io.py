"""File helpers every part of segbench may use: JSON in and out, and atomic writes.

A file written here appears whole or not at all: it is written to ``<name>.tmp`` beside the target and
renamed into place (``os.replace`` is atomic on one file system), so a process killed mid-write leaves
the previous version intact.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segbench.types import SegbenchError


def to_jsonable(x: Any) -> Any:
    """A JSON-safe copy of nested dicts / lists / numpy scalars: NaN and infinities become ``None``.

    >>> import numpy as np
    >>> to_jsonable({"ap": float("nan"), "n": np.int64(3), "xs": (1.5, float("inf"))})
    {'ap': None, 'n': 3, 'xs': [1.5, None]}
    """
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and hasattr(x, "dtype") and getattr(x, "ndim", 1) == 0:  # numpy scalar
        return to_jsonable(x.item())
    return x


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    The parent folder is created. For writers that need a file name (``torch.save``, ``Image.save``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (NaN/inf written as ``null``); returns the path.

    >>> import tempfile
    >>> p = write_json(Path(tempfile.mkdtemp()) / "m.json", {"ap": float("nan")})
    >>> p.read_text()
    '{\\n  "ap": null\\n}'
    """
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent))


def read_json(path: str | os.PathLike, *, what: str = "JSON file", hint: str = "") -> Any:
    """Read a JSON file, accepting a UTF-8 byte-order mark; a clear :class:`SegbenchError` otherwise.

    Parameters
    ----------
    path
        The file.
    what
        How the file is named in messages ("annotation file", "results file"...).
    hint
        Appended to the "not valid JSON" message: how to fix it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SegbenchError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise SegbenchError(f"{what} {path} is a folder, not a file") from None
    except OSError as e:
        raise SegbenchError(f"cannot read {what} {path}: {e}") from None
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise SegbenchError(f"{path} is not a UTF-8 text file ({e}); is it really a {what}?") from None
    except json.JSONDecodeError as e:
        raise SegbenchError(f"{path} is not valid JSON ({e}){'; ' + hint if hint else ''}") from None


def write_csv(path: str | os.PathLike, rows: list[dict], *, columns: list[str] | None = None) -> Path:
    """Write dict rows as CSV atomically (columns: ``columns`` or the first row's keys; ``None`` -> empty)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())
