"""Fashion-MNIST collages: a real-image multi-label dataset built from the standard IDX files.

Each collage is an RGB canvas split into a 2x2 grid; 1 to 4 garments sit in distinct cells, each
resized to 60-100% of its cell, jittered inside it and tinted (the garment's grayscale intensity is
the alpha mask over a random colour) on a random background with enough contrast to stay visible.
The labels are the set of garment classes present (two garments of one class give one label).

Garments never leak across splits: train and val collages use the official train split only, from
disjoint garment pools (a stratified, seeded hold-out of the train split feeds val), and test
collages use the official test split only. Every collage is written with its provenance:

    out/images/{train,val,test}/00000.png
    out/train.csv, out/val.csv, out/test.csv   # image (relative to out), labels (space-separated, sorted)
    out/sources.jsonl                           # per image: source split, and index, class and box per garment
    out/manifest.json                           # the parameters; written last, so it marks a complete dataset
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mlic.data.builders.generated import begin_build, check_build_args, finish_build, is_complete, write_tag_csv
from mlic.data.records import DataError

# Fashion-MNIST's label order, written as CSV-safe tags (no spaces or slashes): "T-shirt/top" -> tshirt_top.
FASHION_CLASSES: tuple[str, ...] = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

SPLITS: tuple[str, ...] = ("train", "val", "test")
SOURCES_NAME = "sources.jsonl"
# Bump when the drawing changes, so folders written by an older generator are regenerated.
GENERATOR_VERSION = 1
MIN_IMAGE_SIZE = 32  # 16 px cells; smaller garments stop being recognisable
GRID = 2
MAX_GARMENTS = GRID * GRID
SCALE_RANGE = (0.6, 1.0)  # garment side as a fraction of its cell side
VAL_GARMENT_FRACTION = 1 / 6  # of each class of the train split, held out for val collages (10,000 of 60,000)
MIN_LUMA_CONTRAST = 80.0  # 0..255; garment colour vs. background, so no garment is near-invisible
COLOUR_TRIES = 32

# IDX type codes (http://yann.lecun.com/exdb/mnist/): data is big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_STEMS = {
    "train_images": "train-images",
    "train_labels": "train-labels",
    "test_images": "t10k-images",
    "test_labels": "t10k-labels",
}
_COLLAGE_PNG = re.compile(r"\d{5,}\.png")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX file (gzipped or plain, told apart by content) as an array of its declared shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut-off stream is an EOFError
        raise DataError(f"{path}: cannot read gzip data ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions declared)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        problem = "truncated" if len(raw) - header < expected else "has trailing bytes"
        raise DataError(f"{path}: {problem}: shape {shape} needs {expected} data bytes, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_fashion_mnist(idx_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The four IDX files under ``idx_dir``: keys train_images, train_labels, test_images, test_labels.

    Accepts the standard names with or without the ``-idx3-ubyte`` / ``.gz`` suffixes, and torchvision's
    ``FashionMNIST/raw/`` layout below ``idx_dir``. A plain file wins over a gzipped one.
    """
    root = Path(idx_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected the Fashion-MNIST IDX files in it)")
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw"):
        found = {key: _find_idx(folder, stem) for key, stem in _IDX_STEMS.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    missing = [stem for stem in _IDX_STEMS.values() if _find_idx(root, stem) is None]
    raise DataError(f"{root}: missing Fashion-MNIST file(s) {', '.join(missing)} (e.g. train-images-idx3-ubyte.gz)")


def _find_idx(folder: Path, stem: str) -> Path | None:
    ndim = 3 if stem.endswith("images") else 1
    for suffix in (f"-idx{ndim}-ubyte", f".idx{ndim}-ubyte", ""):
        for gz in ("", ".gz"):
            candidate = folder / f"{stem}{suffix}{gz}"
            if candidate.is_file():
                return candidate
    return None


def load_fashion_mnist(idx_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The four arrays, checked: images (N, 28, 28) uint8 and labels (N,) in 0..9 with matching N."""
    files = find_fashion_mnist(idx_dir)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = files[f"{split}_images"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{where}: expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
        if labels.shape != (len(images),):
            raise DataError(f"{files[f'{split}_labels']}: {labels.shape} labels for {len(images)} images")
        if labels.size and int(labels.max()) >= len(FASHION_CLASSES):
            raise DataError(f"{files[f'{split}_labels']}: label {int(labels.max())} outside 0..9")
    return arrays


@dataclass(frozen=True)
class _Garment:
    index: int  # into the source split's arrays
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 on the canvas (x1, y1 exclusive)
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class _Collage:
    background: tuple[int, int, int]
    garments: tuple[_Garment, ...]


def _garment_colours(candidates: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(K, 3): per garment, the first of its (K, T, 3) candidate colours whose luminance stands out from the
    background's; black or white (whichever is further) where none does."""
    luma = np.array([0.299, 0.587, 0.114])
    ok = np.abs(candidates @ luma - background @ luma) >= MIN_LUMA_CONTRAST  # (K, T)
    colours = candidates[np.arange(len(candidates)), ok.argmax(axis=1)]
    colours[~ok.any(axis=1)] = 0.0 if background @ luma > 127.5 else 255.0
    return colours


def _garment_stream(pool: np.ndarray, rng: np.random.Generator):
    """Pool indices in seeded shuffled passes, so every garment is used once before any is reused."""
    while True:
        yield from rng.permutation(pool).tolist()


def _tail_stream(pool: np.ndarray, rng: np.random.Generator, classes: np.ndarray, ranking: np.ndarray, tail: float):
    """A long tail: each garment first draws its class, the k-th of ``ranking`` with weight k ** -tail (Zipf-like),
    then takes the next of that class's own shuffled passes over the pool (``classes``: each source image's)."""
    ranked = [int(c) for c in ranking if np.any(classes[pool] == c)]
    weights = np.arange(1, len(ranked) + 1, dtype=np.float64) ** -tail
    streams = {c: _garment_stream(pool[classes[pool] == c], rng) for c in ranked}
    while True:
        yield next(streams[ranked[int(rng.choice(len(ranked), p=weights / weights.sum()))]])


def _plan_split(
    pool: np.ndarray, count: int, image_size: int, seed: int, split_id: int, tail: tuple | None = None
) -> list[_Collage]:
    """Layouts, colours and garment indices of one split's collages; cheap, so done before any drawing.

    Collage i draws its layout from its own stream seeded by (seed, split, i) and its garments from the
    split's shuffled pool in order, so the first n collages are the same whatever the split's size.
    ``tail``: (classes of the source images, class ranking, exponent) for long-tailed label frequencies.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, split_id]))
    stream = _garment_stream(pool, rng) if tail is None else _tail_stream(pool, rng, *tail)
    cell = image_size // GRID
    plans = []
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0, split_id, i]))
        k = int(rng.integers(1, MAX_GARMENTS + 1))
        cells = rng.permutation(MAX_GARMENTS)[:k].tolist()  # distinct cells, so garments never overlap
        background = rng.uniform(0.0, 255.0, size=3)
        u = rng.random((k, 3))  # per garment: size, x jitter, y jitter, as fractions of their ranges
        colours = np.rint(_garment_colours(rng.uniform(0.0, 255.0, size=(k, COLOUR_TRIES, 3)), background))
        indices: list[int] = []
        while len(indices) < k:
            index = next(stream)
            if index not in indices or len(pool) < k:  # distinct garments within a collage when the pool allows
                indices.append(index)
        garments = []
        for j in range(k):
            side = round((SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[j, 0]) * cell)
            x0 = (cells[j] % GRID) * cell + int(u[j, 1] * (cell - side + 1))
            y0 = (cells[j] // GRID) * cell + int(u[j, 2] * (cell - side + 1))
            colour = tuple(int(c) for c in colours[j])
            garments.append(_Garment(indices[j], (x0, y0, x0 + side, y0 + side), colour))  # type: ignore[arg-type]
        plans.append(_Collage(tuple(int(c) for c in np.rint(background)), tuple(garments)))  # type: ignore[arg-type]
    return plans


def _render(plan: _Collage, images: np.ndarray, image_size: int) -> Image.Image:
    """The background, then each garment's intensity as alpha over its colour (PIL's paste does the blend)."""
    canvas = Image.new("RGB", (image_size, image_size), plan.background)
    for g in plan.garments:
        x0, y0, x1, y1 = g.box
        source = images[g.index]  # (28, 28) uint8, 0 = empty
        peak = int(source.max())
        if 0 < peak < 255:  # stretch a faint garment to full opacity, so it is as visible as the others
            source = (source.astype(np.uint16) * 255 // peak).astype(np.uint8)
        mask = Image.fromarray(source).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
        canvas.paste(g.colour, g.box, mask)
    return canvas


def _split_pools(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train pool, val pool): a seeded hold-out of VAL_GARMENT_FRACTION of every class; disjoint by construction."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    train, val = [], []
    for c in range(len(FASHION_CLASSES)):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(1, round(len(members) * VAL_GARMENT_FRACTION)), len(members) - 1) if len(members) > 1 else 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _image_rel(split: str, index: int) -> str:
    return f"images/{split}/{index:05d}.png"


def _fingerprint(train_labels: np.ndarray, test_labels: np.ndarray) -> dict:
    """Identifies the source files cheaply (labels only), so another IDX folder (MNIST digits, say) is not reused."""
    digest = hashlib.sha256(train_labels.tobytes() + test_labels.tobytes()).hexdigest()
    return {"train_images": len(train_labels), "test_images": len(test_labels), "labels_sha256": digest}


def _is_complete(root: Path, manifest: dict) -> bool:
    """True if root holds a finished dataset written with exactly these parameters."""
    needed = [root / f"{split}.csv" for split in SPLITS] + [root / SOURCES_NAME]
    needed += [root / _image_rel(split, i) for split in SPLITS for i in range(manifest["counts"][split])]
    return is_complete(root, manifest, needed)


def _write_split(root: Path, split: str, plans: list[_Collage], images, labels, image_size: int, progress: bool):
    """Draw and save one split's collages; returns its CSV rows and sources.jsonl lines."""
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():  # PNGs of an earlier, larger run; only our own NNNNN.png names
        if entry.is_file() and _COLLAGE_PNG.fullmatch(entry.name):
            entry.unlink()
    source = "test" if split == "test" else "train"
    rows, lines = [], []
    for i, plan in enumerate(plans):
        rel = _image_rel(split, i)
        _render(plan, images, image_size).save(root / rel, format="PNG", compress_level=1)
        garments = [
            {"index": g.index, "label": FASHION_CLASSES[labels[g.index]], "box": list(g.box)} for g in plan.garments
        ]
        rows.append((rel, " ".join(sorted({g["label"] for g in garments}))))  # a class drawn twice is one label
        lines.append(json.dumps({"image": rel, "source_split": source, "garments": garments}, separators=(",", ":")))
        if progress and ((i + 1) % 2000 == 0 or i + 1 == len(plans)):
            print(f"mlic: fashion collages, {split}: {i + 1}/{len(plans)} images", file=sys.stderr)
    return rows, lines


# What a collage set is made of, with its defaults: each is a keyword of make_fashion_collages and a field of
# the manifest (so a set built with other values is never reused for these).
COLLAGE_DEFAULTS = {"num_train": 20000, "num_val": 2000, "num_test": 4000, "image_size": 96, "seed": 0,
                    "long_tail": 0.0}  # fmt: skip


def make_fashion_collages(
    idx_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, progress: bool = True, **spec: float
) -> dict[str, Path]:
    """Write Fashion-MNIST collages under ``out_dir``, or reuse them if complete with these parameters.

    ``spec``: any of COLLAGE_DEFAULTS (num_train, num_val, num_test, image_size, seed, long_tail). Returns the
    paths of the train/val/test CSVs and of sources.jsonl. Deterministic in ``seed``. ``long_tail`` > 0 makes
    garment class frequencies Zipf-like (the k-th most frequent class, in a seeded order shared by all splits,
    drawn with weight k ** -long_tail); 0 keeps every class equally frequent.
    """
    unknown = sorted(set(spec) - set(COLLAGE_DEFAULTS))
    if unknown:
        raise TypeError(f"make_fashion_collages() got unknown keyword(s): {', '.join(unknown)}")
    values = COLLAGE_DEFAULTS | spec
    num_train, num_val, num_test = (values[k] for k in ("num_train", "num_val", "num_test"))
    image_size, seed, long_tail = values["image_size"], values["seed"], float(values["long_tail"])
    if not 0 <= long_tail <= 10:
        raise ValueError(f"long_tail must lie in [0, 10], got {long_tail}")
    root = Path(out_dir)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    check_build_args(counts, image_size, seed, MIN_IMAGE_SIZE)
    files = find_fashion_mnist(idx_dir)
    paths = {split: root / f"{split}.csv" for split in SPLITS} | {"sources": root / SOURCES_NAME}
    manifest = {
        "dataset": "mlic-fashion-collage",
        "generator_version": GENERATOR_VERSION,
        "classes": list(FASHION_CLASSES),
        "counts": counts,
        "image_size": image_size,
        "seed": seed,
        "val_garment_fraction": VAL_GARMENT_FRACTION,
        **({"long_tail": long_tail} if long_tail else {}),  # absent when 0: earlier builds stay reusable
        "source": _fingerprint(read_idx(files["train_labels"]), read_idx(files["test_labels"])),
    }
    if _is_complete(root, manifest):
        return paths
    _build(root, load_fashion_mnist(idx_dir), manifest, paths, progress)
    return paths


def _build(root: Path, data: dict[str, np.ndarray], manifest: dict, paths: dict[str, Path], progress: bool) -> None:
    """Write every split, sources.jsonl and, last, the manifest."""
    counts, image_size, seed = manifest["counts"], manifest["image_size"], manifest["seed"]
    train_pool, val_pool = _split_pools(data["train_labels"], seed)
    pools = {"train": train_pool, "val": val_pool, "test": np.arange(len(data["test_labels"]))}
    for split, pool in pools.items():
        if counts[split] and not len(pool):
            raise DataError(f"no garments for {split} collages: the IDX files hold too few images")
    begin_build(root)
    source_lines: list[str] = []
    ranking = np.random.default_rng(np.random.SeedSequence([seed, 3])).permutation(len(FASHION_CLASSES))
    for split_id, split in enumerate(SPLITS):
        source = "test" if split == "test" else "train"
        images, labels = data[f"{source}_images"], data[f"{source}_labels"]
        tail = (labels, ranking, manifest["long_tail"]) if manifest.get("long_tail") else None
        plans = _plan_split(pools[split], counts[split], image_size, seed, split_id, tail)
        rows, lines = _write_split(root, split, plans, images, labels, image_size, progress)
        source_lines += lines
        write_tag_csv(paths[split], rows)
    paths["sources"].write_text("".join(line + "\n" for line in source_lines), encoding="utf-8")
    finish_build(root, manifest)
