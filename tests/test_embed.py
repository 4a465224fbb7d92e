"""Embeddings: ``mlic embed`` and ``Predictor.embed`` give the model's pooled features, in input order, streamed;
the ONNX export's optional ``embedding`` output gives the same vectors."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from peak_memory import PEAK_KIB_SOURCE
from PIL import Image
from test_predict_scale import CLASSES, make_checkpoint

from mlic.checkpoint import load_checkpoint, save_checkpoint
from mlic.cli import main
from mlic.data.images import ImageDecodeError, decode_image
from mlic.data.transforms import Preprocessing, build_eval_transform
from mlic.inference import embed as embed_module
from mlic.inference.predictor import Predictor
from mlic.models import build_model

pq = pytest.importorskip("pyarrow.parquet")

# Names whose sorted order, creation order and the order they are given in all differ.
NAMES = ["q7f3", "a91c", "zz04", "m2k8", "b000", "x5e1", "c3d9", "k8a2", "f4f4", "t0b7", "e6c5"]
GIVEN = [5, 0, 9, 2, 10, 7, 1, 4, 8, 3, 6]  # the input order on the command line


def make_timm_checkpoint(path: Path, image_size: int = 40) -> Path:
    """timm's tiny test_resnet with random weights and trained BatchNorm statistics."""
    torch.manual_seed(0)
    model = build_model("test_resnet", len(CLASSES))
    model.train()
    model(torch.randn(8, 3, image_size, image_size))
    meta = {
        "model": {"name": "test_resnet", "kwargs": {}},
        "class_names": CLASSES,
        "thresholds": [0.5] * len(CLASSES),
        "preprocessing": {"image_size": image_size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    return save_checkpoint(path, model.eval(), meta)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(3)
    folder = root / "images"
    folder.mkdir()
    images = []
    for i, name in enumerate(NAMES):
        path = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 31 - i, 3), dtype=np.uint8)).save(path)
        images.append(path)
    broken = folder / "broken.png"
    broken.write_text("not an image")
    return {
        "root": root,
        "seed": make_checkpoint(root / "seed"),
        "timm": make_timm_checkpoint(root / "timm") if importlib.util.find_spec("timm") else None,  # extra zoo
        "images": [images[i] for i in GIVEN],
        "broken": broken,
    }


@torch.no_grad()
def direct_features(checkpoint: Path, paths: list[Path]) -> np.ndarray:
    """The pooled features computed by hand: the checkpoint's model (not folded), its eval transform."""
    model, meta = load_checkpoint(checkpoint)
    transform = build_eval_transform(Preprocessing.from_dict(meta["preprocessing"]))
    x = torch.stack([transform(decode_image(p)) for p in paths])
    feats = model.forward_features(x)
    if meta["model"]["name"] == "seed_cnn":  # the global-average-pooled map, before the hidden layer
        return model.pool(feats).flatten(1).numpy()
    return model.forward_head(feats, pre_logits=True).numpy()  # timm: after global pooling, before the classifier


def read_output(out: Path) -> tuple[list[str], np.ndarray]:
    if out.suffix == ".npy":
        return out.with_suffix(".paths.txt").read_text().splitlines(), np.load(out)
    table = pq.read_table(out)
    assert table.schema.field("embedding").type.value_type == "float"
    return table.column("path").to_pylist(), np.asarray(table.column("embedding").to_pylist(), np.float32)


def embed(*args: str) -> int:
    return main(["embed", *map(str, args), "--device", "cpu", "--no-progress"])


@pytest.mark.parametrize("model", ["seed", "timm"])
@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_embed_writes_the_pooled_features_in_input_order(setup, tmp_path, model, suffix):
    if setup[model] is None:
        pytest.skip("timm (the zoo extra) is not installed")
    out = tmp_path / f"emb{suffix}"
    assert embed(setup[model], *setup["images"], "--output", out, "--batch-size", "4") == 0
    paths, vectors = read_output(out)
    assert paths == [str(p) for p in setup["images"]]
    expected = direct_features(setup[model], setup["images"])
    assert vectors.dtype == np.float32 and vectors.shape == expected.shape
    assert expected.shape[1] == (16 if model == "seed" else 96)  # seed: the last width; test_resnet: its features
    assert np.abs(vectors - expected).max() <= 1e-5
    assert not list(tmp_path.glob("*.partial"))


def test_unreadable_images_are_named_left_out_and_counted(setup, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    inputs = [*setup["images"][:3], setup["broken"], tmp_path / "missing.png", *setup["images"][3:5]]
    assert embed(setup["seed"], *inputs, "--output", out) == 0
    err = capsys.readouterr().err
    assert f"warning: {setup['broken']}:" in err and f"warning: {tmp_path / 'missing.png'}:" in err
    assert "5 image(s) embedded" in err and "2 unreadable, left out" in err
    paths, vectors = read_output(out)
    kept = [*setup["images"][:3], *setup["images"][3:5]]
    assert paths == [str(p) for p in kept] and vectors.shape == (5, 16)
    assert np.abs(vectors - direct_features(setup["seed"], kept)).max() <= 1e-5


def test_folders_lists_and_row_groups_stream_in_order(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(embed_module, "ROW_GROUP_BYTES", 1)  # the smallest row groups, 64 rows: several here
    images = [*setup["images"]] * 12  # 132 rows
    listed, out = tmp_path / "list.txt", tmp_path / "emb.parquet"
    listed.write_text("".join(f"{p}\n" for p in images))
    assert embed(setup["seed"], "--list", listed, "--output", out, "--batch-size", "5") == 0
    assert pq.ParquetFile(out).metadata.num_row_groups == 3
    paths, vectors = read_output(out)
    assert paths == [str(p) for p in images]
    assert np.abs(vectors - np.tile(direct_features(setup["seed"], setup["images"]), (12, 1))).max() <= 1e-5
    folder_out = tmp_path / "folder.npy"
    assert embed(setup["seed"], setup["broken"].parent, "--output", folder_out) == 0
    assert read_output(folder_out)[0] == sorted(str(p) for p in setup["images"])  # folders: sorted, as predict


def test_existing_output_is_kept_unless_overwrite(setup, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    out.write_bytes(b"keep")
    assert embed(setup["seed"], setup["images"][0], "--output", out) == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err and out.read_bytes() == b"keep"
    names = tmp_path / "other.paths.txt"
    names.write_text("keep\n")
    assert embed(setup["seed"], setup["images"][0], "--output", tmp_path / "other.npy") == 2
    assert "the list of row paths written beside" in capsys.readouterr().err
    assert embed(setup["seed"], setup["images"][0], "--output", out, "--overwrite") == 0
    assert np.load(out).shape == (1, 16)


def test_a_failed_run_leaves_no_partial_files_and_the_old_output(setup, tmp_path, capsys):
    """A glob that matches the output itself stops the run mid-way: nothing half-written stays behind."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in setup["images"][:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    out = folder / "zzz.npy"
    out.write_bytes(b"old")
    out.with_suffix(".paths.txt").write_text("old\n")
    assert embed(setup["seed"], str(folder / "*"), "--output", out, "--overwrite", "--batch-size", "1") == 2
    assert "is also an input" in capsys.readouterr().err
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([*(p.name for p in setup["images"][:3]), "zzz.npy", "zzz.paths.txt"])
    assert out.read_bytes() == b"old"


def test_predictor_embed_api(setup):
    predictor = Predictor.from_checkpoint(setup["seed"], device="cpu")
    paths = setup["images"]
    vectors = predictor.embed(paths)
    assert vectors.dtype == np.float32 and vectors.shape == (len(paths), predictor.embedding_dim()) == (11, 16)
    assert np.abs(vectors - direct_features(setup["seed"], paths)).max() <= 1e-5
    as_bytes = predictor.embed([paths[0].read_bytes(), Image.open(paths[1]), str(paths[2])], batch_size=2)
    assert np.abs(as_bytes - vectors[:3]).max() <= 1e-5
    streamed = list(predictor.embed_paths(iter(paths), batch_size=4))
    assert [p for b in streamed for p in b.paths] == [str(p) for p in paths]
    assert np.abs(np.concatenate([b.vectors for b in streamed]) - vectors).max() <= 1e-5
    assert predictor.embed([]).shape == (0, 16)
    with pytest.raises(ImageDecodeError):
        predictor.embed([paths[0], setup["broken"]])
    probs = predictor.predict_image(paths[0]).probabilities  # predictions unchanged by embedding
    assert list(probs) == CLASSES


def test_inputs_are_consumed_lazily(setup):
    """A batch is embedded before later inputs are even asked for: paths stream, as in predict."""
    predictor = Predictor.from_checkpoint(setup["seed"], device="cpu")
    asked = []

    def paths():
        for p in setup["images"]:
            asked.append(p)
            yield p

    batches = predictor.embed_paths(paths(), batch_size=2)
    first = next(batches)
    assert len(first.paths) == 2 and len(asked) <= 3
    assert len(list(batches)) == 5 and len(asked) == len(setup["images"])


def test_onnx_embedding_output_equals_predictor_embed(setup, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx

    from mlic.inference.onnx_predictor import OnnxPredictor

    with_embedding = tmp_path / "emb.onnx"  # the default export, without it, is tested in test_export.py
    assert main(["export", str(setup["seed"]), str(with_embedding), "--embedding"]) == 0
    assert "embedding ['batch', 16]" in capsys.readouterr().out
    assert [o.name for o in onnx.load(str(with_embedding)).graph.output] == ["probabilities", "embedding"]
    onnx_predictor = OnnxPredictor.from_file(with_embedding)
    assert onnx_predictor.meta["embedding"]["shape"] == ["batch", 16]
    reference = Predictor.from_checkpoint(setup["seed"], device="cpu")
    assert np.abs(onnx_predictor.embed(setup["images"]) - reference.embed(setup["images"])).max() <= 1e-4
    ref_probs = [p.probabilities for p in reference.predict_paths(setup["images"])]
    got_probs = [p.probabilities for p in onnx_predictor.predict_paths(setup["images"])]  # the extra output ignored
    assert max(abs(g[n] - r[n]) for g, r in zip(got_probs, ref_probs, strict=True) for n in CLASSES) <= 1e-4
    out = tmp_path / "onnx.npy"
    assert embed(with_embedding, *setup["images"], "--output", out) == 0
    assert np.abs(np.load(out) - reference.embed(setup["images"])).max() <= 1e-4


def test_npy_header_holds_any_shape():
    for rows, dim in ((0, 1), (10_000, 16), (10**15, 1 << 20)):
        header = embed_module._npy_header(rows, dim)
        f = io.BytesIO(header)
        assert np.lib.format.read_magic(f) == (1, 0) and len(header) == embed_module.NPY_HEADER_BYTES
        assert np.lib.format.read_array_header_1_0(f) == ((rows, dim), False, np.dtype("<f4"))
        assert f.tell() == len(header)


MEMORY_SCRIPT = PEAK_KIB_SOURCE + textwrap.dedent(
    """
    import sys, time
    from mlic.cli import main
    t = time.perf_counter()
    code = main(["embed", sys.argv[1], sys.argv[2], "--output", sys.argv[3], "--batch-size", "64", "--device", "cpu",
                 "--workers", "0", "--no-progress"])
    print(peak_kib(), time.perf_counter() - t, code)
    """
)


@pytest.mark.slow
def test_peak_memory_stays_flat_over_10000_images(tmp_path):
    """Peak RSS of one process per format and input size.

    Vectors of 2048 floats (8 KB): hoarding those of 8,000 more images would add 64 MB. --workers 0: every
    image is decoded in the measured process, so hoarding anything would show there; worker hand-offs only add
    timing noise to its peak.
    """
    torch.manual_seed(0)
    kwargs = {"widths": [8, 8, 16, 2048], "hidden": 8}
    model = build_model("seed_cnn", len(CLASSES), **kwargs).eval()  # 3 pools: 8 -> 1 pixel, cheap at any width
    meta = {"model": {"name": "seed_cnn", "kwargs": kwargs}, "class_names": CLASSES,
            "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.25] * 3}}  # fmt: skip
    ckpt = save_checkpoint(tmp_path / "ckpt", model, meta)
    pixels = np.random.default_rng(0).integers(0, 256, (10_000, 8, 8, 3), dtype=np.uint8)
    counts = {"small": 2_000, "big": 10_000}
    for name, n in counts.items():
        for i in range(n):  # 8x8 PNGs, 500 per subfolder
            sub = tmp_path / name / f"{i // 500:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).save(sub / f"{i:05d}.png", compress_level=1)
    peaks = {}
    for suffix in (".parquet", ".npy"):
        for name, n in counts.items():
            out = tmp_path / f"{name}{suffix}"
            result = subprocess.run(
                [sys.executable, "-c", MEMORY_SCRIPT, str(ckpt), str(tmp_path / name), str(out)],
                capture_output=True,
                text=True,
                check=True,
            )
            peak_kib, seconds, code = result.stdout.split()
            paths, vectors = read_output(out)
            assert code == "0" and len(paths) == n and vectors.shape == (n, 2048)
            peaks[n] = int(peak_kib) / 1024
            print(f"{n} images, {suffix}: peak RSS {peaks[n]:.1f} MB, {float(seconds):.1f} s")
        growth = peaks[10_000] - peaks[2_000]
        print(f"{suffix}: peak RSS growth from 2,000 to 10,000 images {growth:+.1f} MB (hoarded vectors: +64 MB)")
        assert growth < 30
