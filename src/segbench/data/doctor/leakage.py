"""Leakage across splits: the same picture in train and in an evaluation split (val, test).

A model scored on images it was trained on scores too well. :func:`check_leakage` compares every image
of the reference split (train) with every image of the others, by three fingerprints taken once per image
(:func:`fingerprint_image`):

* ``leak_same_file`` — the SHA-256 of the file's bytes is equal (the same file, or a byte-for-byte copy);
* ``leak_same_pixels`` — the SHA-256 of the decoded pixels (RGB uint8, as the loader gives them to the
  model; EXIF orientation not applied) is equal: the same picture under another name or format (PNG and
  BMP, a re-saved PNG);
* ``leak_near_duplicate`` — the perceptual hashes (``imagehash.phash``: 64 bits from the DCT of a 32 x 32
  greyscale thumbnail) differ in at most :data:`NEAR_DUPLICATE_DISTANCE` bits: a JPEG-recompressed,
  resized or brightened copy, or the next frame of one scene.

The comparison is one Hamming-distance matrix computed with numpy (XOR and popcount over 64-bit hashes,
in blocks of rows), fast for tens of thousands of images per split. Each pair is one warning that names
both files and the inflated split.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from segbench.data.annotations import KINDS, WARNING
from segbench.data.coco import resolve_image_path, to_rgb_uint8
from segbench.data.doctor.report import CheckReport, Issue
from segbench.io import read_json

#: Two images whose 64-bit perceptual hashes (:func:`perceptual_hash`) differ in at most this many bits
#: are near-duplicates. Measured on the shared datasets (60 val images each, `perceptual_hash` as
#: below): a JPEG quality-75 copy, a copy brightened by 15 % and a half-size copy of a dsb2018 image are
#: 0-2 bits from the original (one half-size copy: 4); the one dsb2018 train/val pair that shows the same
#: embryo twice (two time points) is 4 bits apart; distinct images are >= 10 bits apart (the nearest
#: distinct pair in dsb2018's train split, two sparse dark images: 10; the next train/val pair: 12;
#: nuts: >= 18). 6 leaves 2 bits of margin above the copies and 4 below the distinct images.
NEAR_DUPLICATE_DISTANCE = 6

PHASH_BITS = 64
#: images are shrunk to a short side of at least this many pixels before their perceptual hash
HASH_SIDE = 128


@dataclass(frozen=True)
class Fingerprint:
    """What leakage is judged by, for one image file: hex SHA-256 of the file and of its decoded pixels,
    and the 64-bit perceptual hash as an int (None where not computed)."""

    file_sha256: str | None = None
    pixel_sha256: str | None = None
    phash: int | None = None


def fingerprint_image(im: Image.Image, file_sha256: str | None = None) -> Fingerprint:
    """The fingerprint of a loaded PIL image (pixels as the loader reads them: :func:`to_rgb_uint8`).

    >>> a = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    >>> fa, fb = fingerprint_image(a), fingerprint_image(a.convert("RGBA"))
    >>> fa.pixel_sha256 == fb.pixel_sha256, fa.phash == fb.phash  # alpha dropped: the same pixels
    (True, True)
    """
    rgb = to_rgb_uint8(im)
    h = hashlib.sha256(f"{rgb.shape}".encode())
    h.update(rgb.tobytes())
    return Fingerprint(file_sha256, h.hexdigest(), perceptual_hash(rgb))


def perceptual_hash(rgb: np.ndarray) -> int:
    """``imagehash.phash`` of an ``(H, W, 3) uint8`` image as a 64-bit int, from a greyscale copy first
    shrunk by an integer factor (box filter) to a short side of at least :data:`HASH_SIDE` px: the phash
    itself only looks at a 32 x 32 thumbnail, and shrinking first halves its time on large images.

    >>> yy, xx = np.mgrid[:256, :256]
    >>> x = np.repeat((100 + 60 * np.sin(xx / 20) * np.cos(yy / 30))[..., None], 3, axis=2).astype(np.uint8)
    >>> brighter = (x.astype(int) + 12).astype(np.uint8)
    >>> bin(perceptual_hash(x) ^ perceptual_hash(brighter)).count("1") <= 2, 0 <= perceptual_hash(x) < 2**64
    (True, True)
    """
    grey = Image.fromarray(rgb).convert("L")
    k = min(grey.size) // HASH_SIDE
    if k > 1:
        grey = grey.reduce(k)
    bits = imagehash.phash(grey).hash.reshape(-1)
    return int("".join("1" if b else "0" for b in bits), 2)


def fingerprint_file(path: str | os.PathLike, *, pixels: bool = True) -> Fingerprint | None:
    """The fingerprint of an image file (``pixels=False``: the file's SHA-256 only); None when it cannot
    be read (the check reports such files)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    sha = hashlib.sha256(data).hexdigest()
    if not pixels:
        return Fingerprint(sha)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return fingerprint_image(im, sha)
    except Exception:  # noqa: BLE001 - an unreadable image has no pixels to compare
        return Fingerprint(sha)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    b = x.view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(b, axis=-1).sum(axis=(-1, -2), dtype=np.uint8)


def hamming_pairs(
    a: np.ndarray, b: np.ndarray, max_distance: int, *, block: int = 2048
) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` of every pair of 64-bit hashes ``a[i]``, ``b[j]`` at most ``max_distance``
    bits apart (numpy, in blocks of rows of ``a``).

    >>> hamming_pairs(np.array([0b1011, 0], np.uint64), np.array([0b0011, 0xFF], np.uint64), 1)
    [(0, 0, 1)]
    """
    a, b = np.asarray(a, np.uint64), np.asarray(b, np.uint64)
    out: list[tuple[int, int, int]] = []
    for s in range(0, len(a), block):
        d = _popcount(a[s : s + block, None] ^ b[None, :])
        ii, jj = np.nonzero(d <= max_distance)
        out += [(int(i) + s, int(j), int(d[i, j])) for i, j in zip(ii, jj, strict=True)]
    return out


@dataclass
class ImageRef:
    """One image of a split, for the comparison."""

    image_id: Any
    file_name: str
    fingerprint: Fingerprint | None


@dataclass
class LeakageReport:
    """What :func:`check_leakage` found: one issue per pair, the threshold and the time it took."""

    reference: str
    splits: list[str]
    threshold: int
    pixels: bool = True
    issues: list[Issue] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    images: int = 0
    hash_seconds: float = 0.0
    compare_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.hash_seconds + self.compare_seconds

    @property
    def warnings(self) -> int:
        return len(self.issues)

    def counts(self) -> dict[str, int]:
        """Pairs per kind (every leakage kind, zeros included)."""
        c = {k: 0 for k in ("leak_same_file", "leak_same_pixels", "leak_near_duplicate")}
        for i in self.issues:
            c[i.kind] += 1
        return c

    def format(self, *, max_examples: int = 5) -> str:
        """As ``segbench data check`` prints it: the threshold and time first, then the pairs by kind."""
        others = [s for s in self.splits if s != self.reference]
        what = (
            f"near-duplicate threshold: phash Hamming distance <= {self.threshold} of {PHASH_BITS} bits"
            if self.pixels
            else "file bytes only (read_images=false: no pixels, no perceptual hash)"
        )
        lines = [
            f"[leakage] {self.reference} vs {', '.join(others) or 'nothing'}: {self.images} images, {what}; "
            f"{self.seconds:.2f} s (hashing {self.hash_seconds:.2f} s, comparing {self.compare_seconds:.2f} s; "
            "images decoded once, for the check)"
        ]
        if not others:
            lines.append(f"  only the {self.reference} split: nothing to compare")
        elif not self.issues:
            lines.append("  no leakage found")
        by_kind: dict[str, list[Issue]] = defaultdict(list)
        for i in self.issues:
            by_kind[i.kind].append(i)
        for kind, issues in by_kind.items():
            k = KINDS[kind]
            lines.append(f"  {k.severity.upper():7} {kind} ({len(issues)}): {k.title}")
            lines.append(f"          fix: {k.hint}")
            lines += [f"          - {i.message}" for i in issues[:max_examples]]
            if len(issues) > max_examples:
                lines.append(f"          ... and {len(issues) - max_examples} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "splits": self.splits,
            "threshold": self.threshold,
            "pixels": self.pixels,
            "images": self.images,
            "seconds": round(self.seconds, 4),
            "hash_seconds": round(self.hash_seconds, 4),
            "compare_seconds": round(self.compare_seconds, 4),
            "counts": self.counts(),
            "pairs": self.pairs,
            "issues": [asdict(i) for i in self.issues],
        }


SplitSpec = CheckReport | tuple


def _refs(spec: SplitSpec, *, pixels: bool) -> tuple[list[ImageRef], float]:
    """The images of one split with their fingerprints, and the seconds spent hashing them here."""
    t0 = time.perf_counter()
    refs: list[ImageRef] = []
    if isinstance(spec, CheckReport):
        for f in spec.image_facts:
            if f.status in ("malformed", "unsafe") or f.path is None:
                continue
            fp = f.fingerprint if f.fingerprint is not None else fingerprint_file(f.path, pixels=pixels)
            refs.append(ImageRef(f.image_id, f.file_name, fp))
        return refs, spec.fingerprint_seconds + (time.perf_counter() - t0)
    ann_file, image_root, *rest = spec
    root = rest[0] if rest else None
    data = read_json(ann_file, what="COCO annotation file")
    seen: set = set()
    for im in data.get("images", []) if isinstance(data, dict) else []:
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or im.get("id") in seen:
            continue
        seen.add(im.get("id"))
        look = resolve_image_path(im["file_name"], image_root, ann_dir=Path(ann_file).parent, root=root)
        if look.found:
            refs.append(ImageRef(im.get("id"), im["file_name"], fingerprint_file(look.path, pixels=pixels)))
    return refs, time.perf_counter() - t0


def check_leakage(
    splits: Mapping[str, SplitSpec],
    *,
    reference: str = "train",
    max_distance: int = NEAR_DUPLICATE_DISTANCE,
    pixels: bool = True,
) -> LeakageReport:
    """Images of ``reference`` (train) found again in the other splits: the same file, the same pixels,
    or a near-duplicate; one warning per pair, naming both files and the inflated split.

    Parameters
    ----------
    splits : mapping
        Split name -> the :class:`CheckReport` of its JSON (its fingerprints, taken while checking, are
        reused) or ``(ann_file, image_root[, root])``.
    reference : str
        The training split; the others are the evaluation splits whose scores leakage inflates. Without
        it, nothing is compared.
    max_distance : int
        Near-duplicate threshold in bits of the 64-bit perceptual hash (:data:`NEAR_DUPLICATE_DISTANCE`).
    pixels : bool
        Compare decoded pixels and perceptual hashes; False: file bytes only.

    Returns
    -------
    LeakageReport
        ``issues`` (kinds ``leak_same_file``, ``leak_same_pixels``, ``leak_near_duplicate``), ``pairs``,
        ``threshold`` and ``seconds`` (hashing + comparing).
    """
    if (
        not isinstance(max_distance, int)
        or isinstance(max_distance, bool)
        or not 0 <= max_distance < PHASH_BITS
    ):
        raise ValueError(
            f"max_distance must be an integer in 0..{PHASH_BITS - 1} (bits), got {max_distance!r}"
        )
    rep = LeakageReport(reference, list(splits), max_distance, pixels)
    refs: dict[str, list[ImageRef]] = {}
    for name, spec in splits.items():
        refs[name], secs = _refs(spec, pixels=pixels)
        rep.hash_seconds += secs
        rep.images += len(refs[name])
    if reference not in refs:
        return rep
    t0 = time.perf_counter()
    train = [r for r in refs[reference] if r.fingerprint is not None]
    by_file: dict[str, list[int]] = defaultdict(list)
    by_pixels: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(train):
        if r.fingerprint.file_sha256:
            by_file[r.fingerprint.file_sha256].append(i)
        if r.fingerprint.pixel_sha256:
            by_pixels[r.fingerprint.pixel_sha256].append(i)
    with_hash = [i for i, r in enumerate(train) if r.fingerprint.phash is not None]
    train_hashes = np.array([train[i].fingerprint.phash for i in with_hash], np.uint64)

    for split, items in refs.items():
        if split == reference:
            continue
        items = [r for r in items if r.fingerprint is not None]
        exact: set[tuple[int, int]] = set()

        def add(
            kind: str, j: int, i: int, how: str, distance: int | None = None, split=split, items=items
        ) -> None:
            s, t = items[j], train[i]
            rep.issues.append(
                Issue(
                    kind,
                    WARNING,
                    f"{split} image {s.image_id} {s.file_name!r} and {reference} image {t.image_id} "
                    f"{t.file_name!r}: {how}; {split} scores are inflated",
                    image_id=s.image_id,
                    file_name=s.file_name,
                )
            )
            rep.pairs.append(
                {
                    "kind": kind,
                    "split": split,
                    "image_id": s.image_id,
                    "file_name": s.file_name,
                    f"{reference}_image_id": t.image_id,
                    f"{reference}_file_name": t.file_name,
                    "distance": distance,
                }
            )

        for j, r in enumerate(items):
            for i in by_file.get(r.fingerprint.file_sha256 or "", []):
                exact.add((i, j))
                add("leak_same_file", j, i, "the same file (identical bytes)", 0)
            for i in by_pixels.get(r.fingerprint.pixel_sha256 or "", []):
                if (i, j) not in exact:
                    exact.add((i, j))
                    add("leak_same_pixels", j, i, "the same pixels in another file", 0)
        if not pixels or not len(train_hashes):
            continue
        js = [j for j, r in enumerate(items) if r.fingerprint.phash is not None]
        hashes = np.array([items[j].fingerprint.phash for j in js], np.uint64)
        for a, b, d in hamming_pairs(train_hashes, hashes, max_distance):
            i, j = with_hash[a], js[b]
            if (i, j) not in exact:
                add(
                    "leak_near_duplicate",
                    j,
                    i,
                    f"near-duplicates (phash distance {d} <= {max_distance} of {PHASH_BITS} bits)",
                    d,
                )
    rep.compare_seconds = time.perf_counter() - t0
    return rep
