"""Leaks between splits: the same image, or nearly the same, in train and in val or test.

A test image that is a copy of a training image measures memory, not generalisation. Exact copies are found
by content hash (SHA-256 of the file); near copies (re-encoded, resized, lightly cropped or recoloured) by a
perceptual hash: ``imagehash.phash`` (the ``audit`` extra), 64 bits from the low frequencies of the image's
DCT, where two versions of one picture differ in a few bits. Pairs within ``max_distance`` bits are near
duplicates (4 of 64: about what JPEG re-encoding and resizing change).

Comparing every pair costs train x test; instead each hash is cut into ``max_distance + 1`` bands, and two
hashes within ``max_distance`` bits must agree exactly on at least one band (pigeonhole), so only hashes
sharing a band are compared: near-linear in the number of images.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlic.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from mlic.data.records import Record
from mlic.errors import MissingExtraError
from mlic.runtime.console import progress_bar

MAX_DISTANCE = 4


@dataclass(frozen=True)
class Leak:
    kind: str  # "exact" or "near"
    split_a: str
    path_a: str
    split_b: str
    path_b: str
    distance: int  # differing hash bits (0 for exact copies)


def find_leaks(
    splits: Mapping[str, Sequence[Record]],
    *,
    max_distance: int = MAX_DISTANCE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> list[Leak]:
    """Every exact or near-duplicate image pair across different splits (``{"train": records, "val": ...}``)."""
    try:
        import imagehash
    except ImportError as exc:
        extra = "pip install 'mlic[audit]'"
        raise MissingExtraError(f"finding near-duplicate images needs the audit extra: {extra}") from exc
    entries = [(split, str(r.path)) for split, records in splits.items() for r in records]
    digests, hashes = [], []
    for _, path in progress_bar(entries, progress=progress, desc="hash images", unit="img", leave=False):
        digest, bits = _hashes(path, imagehash, max_pixels)
        digests.append(digest)
        hashes.append(bits)
    leaks = _exact(entries, digests)
    exact_pairs = {(leak.path_a, leak.path_b) for leak in leaks}
    for i, j, distance in _near_pairs(hashes, max_distance):
        (split_i, path_i), (split_j, path_j) = entries[i], entries[j]
        if split_i != split_j and (path_i, path_j) not in exact_pairs and (path_j, path_i) not in exact_pairs:
            leaks.append(Leak("near", split_i, path_i, split_j, path_j, distance))
    return leaks


def _hashes(path: str, imagehash, max_pixels: int) -> tuple[str | None, int | None]:
    """(SHA-256 of the file, 64-bit perceptual hash), None for what cannot be read."""
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()  # streamed: a poster scan is not read whole
    except OSError:
        return None, None
    try:
        image = decode_image(path, max_pixels=max_pixels, draft_size=(64, 64))
    except ImageDecodeError:
        return digest, None
    bits = imagehash.phash(image).hash.flatten()
    return digest, int("".join("1" if b else "0" for b in bits), 2)


def _exact(entries: list[tuple[str, str]], digests: list[str | None]) -> list[Leak]:
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        if digest is not None:
            by_digest[digest].append(i)
    leaks = []
    for members in by_digest.values():
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                (split_a, path_a), (split_b, path_b) = entries[a], entries[b]
                if split_a != split_b:
                    leaks.append(Leak("exact", split_a, path_a, split_b, path_b, 0))
    return leaks


def _near_pairs(hashes: list[int | None], max_distance: int):
    """(i, j, distance) of hashes within ``max_distance`` bits, i < j, each pair once."""
    bands = max_distance + 1
    edges = [int(e) for e in np.linspace(0, 64, bands + 1)]  # Python ints: 64-bit hashes overflow int64
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        if h is None:
            continue
        for b in range(bands):
            width = edges[b + 1] - edges[b]
            buckets[b, (h >> edges[b]) & ((1 << width) - 1)].append(i)
    seen = set()
    for members in buckets.values():
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                if (a, b) in seen:
                    continue
                distance = (hashes[a] ^ hashes[b]).bit_count()
                if distance <= max_distance:
                    seen.add((a, b))
                    yield a, b, distance
