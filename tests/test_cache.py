"""The decoded-image cache: used instead of decoding, equal to decoding, rebuilt when images or preprocessing
change, never half-written, and kept out of the user's image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mlic.data.pixels as pixels_module
from mlic.cli import main
from mlic.data import cache as cache_module
from mlic.data.cache import CacheUnavailable, ensure_cache, open_cache
from mlic.data.dataset import MultiLabelDataset
from mlic.data.labels import build_vocabulary
from mlic.data.sources import load_records
from mlic.data.transforms import Preprocessing, build_eval_pipeline, build_train_pipeline


@pytest.fixture
def shapes(tmp_path):
    """A private copy of a tiny dataset (these tests edit image files)."""
    from mlic.data.builders.synthetic import make_shapes_dataset

    return make_shapes_dataset(tmp_path / "data", num_train=40, num_val=10, num_test=0, image_size=32, seed=2)


def _samples(ds: MultiLabelDataset, epoch: int = 1) -> list[dict]:
    return [ds[(epoch, i)] for i in range(len(ds))]


@pytest.mark.parametrize("augment", ["light", "standard", "strong"])
def test_cached_samples_equal_decoded_ones_and_need_no_decoding(shapes, tmp_path, monkeypatch, augment):
    records = load_records(shapes["train"])
    names = build_vocabulary(records)
    pipeline = build_train_pipeline(Preprocessing(image_size=24), augment)
    cache, built = ensure_cache(records, pipeline, root=tmp_path / "cache", progress=False)
    assert built and cache.shape == (40, 3, pipeline.stage_size, pipeline.stage_size)
    decoded = _samples(MultiLabelDataset(records, names, pipeline, seed=5))
    cached_ds = MultiLabelDataset(records, names, pipeline, cache=cache, seed=5)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the image")

    monkeypatch.setattr(pixels_module, "decode_image", no_decoding)
    cached = _samples(cached_ds)
    for a, b in zip(decoded, cached, strict=True):
        assert a["image"].dtype == torch.uint8 and torch.equal(a["image"], b["image"]) and a["flip"] == b["flip"]
    assert any(s["flip"] for s in cached) and not all(s["flip"] for s in cached)


def test_cache_is_outside_the_image_folder_and_reused(shapes, tmp_path):
    records = load_records(shapes["train"])
    pipeline = build_eval_pipeline(Preprocessing(image_size=24))
    before = sorted(p for p in shapes["train"].parent.rglob("*"))
    cache, built = ensure_cache(records, pipeline, root=tmp_path / "cache", progress=False)
    assert built and cache.folder.is_relative_to(tmp_path / "cache")
    assert sorted(p for p in shapes["train"].parent.rglob("*")) == before  # nothing written beside the images
    again, built_again = ensure_cache(records, pipeline, root=tmp_path / "cache", progress=False)
    assert not built_again and again.folder == cache.folder
    assert [p.name for p in (tmp_path / "cache" / "decoded").iterdir()] == [cache.folder.name]  # no leftovers


def test_changed_image_or_preprocessing_rebuilds(shapes, tmp_path):
    records = load_records(shapes["train"])
    root = tmp_path / "cache"
    pre = Preprocessing(image_size=24)
    first, _ = ensure_cache(records, build_eval_pipeline(pre), root=root, progress=False)

    # an edited image: a new key, and the new pixels in the rebuilt cache
    path = Path(records[3].path)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    assert open_cache(records, build_eval_pipeline(pre), root=root) is None
    second, built = ensure_cache(records, build_eval_pipeline(pre), root=root, progress=False)
    assert built and second.folder != first.folder
    red = second.image(3)
    assert red[0].float().mean() > 250 and red[1:].float().mean() < 5
    assert torch.equal(second.image(4), first.image(4))  # the others are the same pixels

    # other preprocessing: another size, a cropping preset's larger stage, reduced-size decoding off
    for pipeline in (
        build_eval_pipeline(Preprocessing(image_size=20)),
        build_train_pipeline(pre, "standard"),
        build_eval_pipeline(Preprocessing(image_size=24, draft=False)),
    ):
        assert open_cache(records, pipeline, root=root) is None
    # and a removed image
    assert open_cache(records[:-1], build_eval_pipeline(pre), root=root) is None


def test_unreadable_image_is_a_row_error_not_a_crash(shapes, tmp_path):
    records = load_records(shapes["train"])
    Path(records[5].path).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)  # a PNG signature, then nothing
    pipeline = build_eval_pipeline(Preprocessing(image_size=24))
    cache, _ = ensure_cache(records, pipeline, root=tmp_path / "cache", progress=False)
    assert list(cache.errors) == [5]
    ds = MultiLabelDataset(records, build_vocabulary(records), pipeline, cache=cache)
    batch = ds.collate([ds[i] for i in range(8)])
    assert len(batch) == 7 and batch.errors[0][0] == str(records[5].path)


def test_interrupted_build_leaves_no_cache(shapes, tmp_path, monkeypatch):
    records = load_records(shapes["train"])
    pipeline = build_eval_pipeline(Preprocessing(image_size=24))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_decode_into", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_cache(records, pipeline, root=tmp_path / "cache", progress=False)
    assert open_cache(records, pipeline, root=tmp_path / "cache") is None
    assert list((tmp_path / "cache" / "decoded").iterdir()) == []  # the half-written folder is gone too


def test_no_room_means_no_cache_and_training_reads_files(shapes, tmp_path, monkeypatch, capsys):
    class Full:
        free = 10

    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: Full())
    records = load_records(shapes["train"])
    with pytest.raises(CacheUnavailable, match="GB are free"):
        ensure_cache(records, build_eval_pipeline(Preprocessing(image_size=24)), root=tmp_path / "c", progress=False)
    args = ["train", str(shapes["train"]), "--val", str(shapes["val"]), "--image-size", "24", "--epochs", "1",
            "--output-dir", str(tmp_path / "runs"), "--name", "r", "--no-progress", "--no-report", "--device", "cpu",
            "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    assert main(args) == 0
    assert "warning: no decoded-image cache for the train images" in capsys.readouterr().out


def test_train_builds_then_reuses_and_data_cache_prebuilds(shapes, tmp_path, capsys):
    root = tmp_path / "c"
    common = [str(shapes["train"]), "--val", str(shapes["val"]), "--image-size", "24", "--cache-dir", str(root)]
    assert main(["data", "cache", *common, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cache: train 40 images at 24px, built" in out and "cache: validation 10 images at 24px, built" in out
    train = ["train", *common, "--epochs", "1", "--output-dir", str(tmp_path / "runs"), "--no-progress",
             "--no-report", "--device", "cpu"]  # fmt: skip
    assert main([*train, "--name", "a"]) == 0
    out = capsys.readouterr().out
    assert "cache: train 40 images at 24px, reused" in out and "cache: validation 10 images at 24px, reused" in out
    assert main([*train, "--name", "b", "--cache", "off"]) == 0
    assert "cache:" not in capsys.readouterr().out
    # the cached and the uncached run trained on the same pixels, in the same order: the same weights
    a = np.load(tmp_path / "runs" / "a" / "predictions" / "val.npz")["probs"]
    b = np.load(tmp_path / "runs" / "b" / "predictions" / "val.npz")["probs"]
    assert np.array_equal(a, b)
    assert len(os.listdir(root / "decoded")) == 2  # train and validation; nothing new from the second run
    assert main(["data", "cache", "--clear", "--cache-dir", str(root)]) == 0
    assert not (root / "decoded").exists()


# ---- at scale: pixel files of bounded size, a disk budget -----------------------------------------------------


def test_pixels_are_split_into_files_of_bounded_size(shapes, tmp_path, monkeypatch):
    records = load_records(shapes["train"])
    pipeline = build_train_pipeline(Preprocessing(image_size=24), "light")
    row = 3 * pipeline.stage_size**2
    monkeypatch.setattr(cache_module, "CACHE_FILE_BYTES", 7 * row + 5)  # 7 images a file: 40 = 5 x 7 + 5
    cache, _ = ensure_cache(records, pipeline, root=tmp_path / "cache", progress=False)
    files = sorted(cache.folder.glob("pixels-*.u8"))
    assert [f.stat().st_size // row for f in files] == [7, 7, 7, 7, 7, 5]
    names = build_vocabulary(records)
    decoded = _samples(MultiLabelDataset(records, names, pipeline, seed=5))
    cached = _samples(MultiLabelDataset(records, names, pipeline, cache=cache, seed=5))
    for a, b in zip(decoded, cached, strict=True):
        assert ("image" in a) == ("image" in b)
        if "image" in a:
            assert torch.equal(a["image"], b["image"])
    files[3].unlink()  # a file gone: the cache is incomplete, not trusted
    assert open_cache(records, pipeline, root=tmp_path / "cache") is None


def _age(cache, seconds: float) -> None:
    """Make ``cache`` look last used ``seconds`` ago."""
    meta = cache.folder / "meta.json"
    then = meta.stat().st_mtime - seconds
    os.utime(meta, (then, then))


def test_the_budget_evicts_the_least_recently_used_caches(shapes, tmp_path):
    records = load_records(shapes["train"])
    root = tmp_path / "cache"
    sizes = {}
    caches = {}
    for size in (16, 20, 24):
        pipeline = build_eval_pipeline(Preprocessing(image_size=size))
        caches[size], _ = ensure_cache(records, pipeline, root=root, progress=False)
        sizes[size] = sum(f.stat().st_size for f in caches[size].folder.iterdir())
    _age(caches[16], 3 * 86400)
    _age(caches[20], 2 * 86400)
    _age(caches[24], 1 * 86400)
    new = build_eval_pipeline(Preprocessing(image_size=28))
    needed = 40 * 3 * new.stage_size**2
    budget = sizes[20] + sizes[24] + needed + 1000  # room for the two most recent ones and the new one
    cache, built = ensure_cache(records, new, root=root, progress=False, max_bytes=budget)
    assert built
    assert not caches[16].folder.exists() and caches[20].folder.exists() and caches[24].folder.exists()
    assert cache.folder.exists() and sum(c[1] for c in cache_module.cache_sizes(root / "decoded")) <= budget


def test_caches_in_use_are_never_evicted_and_too_big_is_no_cache(shapes, tmp_path):
    records = load_records(shapes["train"])
    root = tmp_path / "cache"
    in_use, _ = ensure_cache(records, build_eval_pipeline(Preprocessing(image_size=24)), root=root, progress=False)
    other = build_eval_pipeline(Preprocessing(image_size=20))
    needed = 40 * 3 * other.stage_size**2
    with pytest.raises(CacheUnavailable, match="used in the last hour already take"):
        ensure_cache(records, other, root=root, progress=False, max_bytes=needed + 10)
    assert in_use.folder.exists()
    with pytest.raises(CacheUnavailable, match="above the cache budget"):
        ensure_cache(records, other, root=root, progress=False, max_bytes=needed - 1)


def test_crashed_builds_are_cleaned_up_after_a_day(shapes, tmp_path):
    records = load_records(shapes["train"])
    decoded = tmp_path / "cache" / "decoded"
    stale, fresh = decoded / "abc.tmp-1", decoded / "abd.tmp-2"
    for folder, age in ((stale, 2 * 86400), (fresh, 60)):
        folder.mkdir(parents=True)
        (folder / "pixels-00000.u8").write_bytes(b"\0" * 100)
        then = folder.stat().st_mtime - age
        os.utime(folder, (then, then))
    ensure_cache(records, build_eval_pipeline(Preprocessing(image_size=16)), root=tmp_path / "cache", progress=False)
    assert not stale.exists() and fresh.exists()


def test_train_over_the_budget_reads_the_files(shapes, tmp_path, capsys):
    args = ["train", str(shapes["train"]), "--val", str(shapes["val"]), "--image-size", "24", "--epochs", "1",
            "--output-dir", str(tmp_path / "runs"), "--name", "r", "--no-progress", "--no-report", "--device", "cpu",
            "--cache-dir", str(tmp_path / "c"), "--cache-max-gb", "0.00001"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "warning: no decoded-image cache for the train images" in out and "above the cache budget" in out
