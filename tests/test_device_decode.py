"""Training JPEGs decoded on the device (``data.device_decode``), proved on CPU against the DataLoader path: the
same pixels within a measured bound, the same batches, the same errors; chosen only for CUDA."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mlic.data.device_decode as device_decode
from mlic.data.dataset import MultiLabelDataset
from mlic.data.device_decode import DeviceDecodedBatches, decode_stage, decodes_on_device, device_header
from mlic.data.loader import build_loader
from mlic.data.pixels import stage_loader
from mlic.data.records import Record
from mlic.data.sampler import EpochSampler
from mlic.data.transforms import Preprocessing, build_train_pipeline

SIZE = 32
CPU = torch.device("cpu")
# (max, mean) absolute difference in grey levels, measured on the files below (320x240 and 240x320 to 32 px;
# libjpeg-turbo in both Pillow and torchvision). Without draft decoding the pixels are identical (same IDCT, same
# fancy upsampling, same resize kernel): 1 level of slack for a differently built libjpeg. With draft on, Pillow
# decodes these files at 1/2 scale before the antialiased resize while the device path decodes them whole, a
# different downscale: measured at most 3 levels, mean at most 0.32 per image; 4 and 0.5 leave room for another
# libjpeg build. Each mistake checked below (mirrored, transposed, BGR) is off by 25 levels or more on average.
EXACT = (1, 0.05)
DRAFT = (4, 0.5)


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients, a texture, a little noise, and a red block top left: orientation and colours show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 9 + y / 13)], -1)
    pixels[: height // 4, : width // 5] = (230, 30, 40)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, orientation: int | None = None, mode: str = "RGB", **save) -> bytes:
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    buf = io.BytesIO()
    image.convert(mode).save(buf, "JPEG", quality=92, **save)
    return buf.getvalue()


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Each kind of file a training set holds; landscape 320x240 but for the portrait one."""
    good = jpeg_bytes(photo(320, 240, 3))
    made = {
        "plain.jpg": good,
        "rotated.jpg": jpeg_bytes(photo(320, 240, 1), orientation=6),  # stored landscape, upright portrait
        "portrait.jpg": jpeg_bytes(photo(240, 320, 2)),
        "turned.jpg": jpeg_bytes(photo(320, 240, 4), orientation=3),
        "grey.jpg": jpeg_bytes(photo(320, 240, 5), mode="L"),
        "cmyk.jpg": jpeg_bytes(photo(320, 240, 6), mode="CMYK"),  # Pillow's, in the worker
        "progressive.jpg": jpeg_bytes(photo(320, 240, 7), progressive=True),
        "truncated.jpg": good[: len(good) // 2],  # no end-of-image marker: Pillow's, in the worker
        # a marker no JPEG defines, inside the scan: the device decoder refuses it, Pillow says why (main process)
        "damaged.jpg": good[: len(good) // 2] + b"\xff\x4a" + good[len(good) // 2 :],
    }
    paths = {name: tmp_path / name for name in made}
    for name, data in made.items():
        paths[name].write_bytes(data)
    photo(200, 150, 8).save(tmp_path / "picture.png")
    paths["picture.png"] = tmp_path / "picture.png"
    return paths


def diff(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    d = (a.int() - b.int()).abs()
    return int(d.max()), float(d.float().mean())


def within(a: torch.Tensor, b: torch.Tensor, bound: tuple[int, float]) -> bool:
    top, mean = diff(a, b)
    return top <= bound[0] and mean <= bound[1]


@pytest.mark.parametrize("draft", [False, True])
def test_decoded_stage_matches_pillows_within_the_measured_bound(files, draft):
    pre = Preprocessing(image_size=SIZE, draft=draft)
    pipeline, loader = build_train_pipeline(pre, "none"), stage_loader(pre)
    datas = [p.read_bytes() for p in files.values()]
    images, reasons = decode_stage(datas, pipeline, CPU)
    assert images.shape == (len(datas), 3, SIZE, SIZE) and images.dtype == torch.uint8
    bound = DRAFT if draft else EXACT
    for (name, path), image, reason in zip(files.items(), images, reasons, strict=True):
        expected, expected_reason = loader.load_or_reason(path)
        assert reason == expected_reason, name
        if expected is None:
            assert name in ("truncated.jpg", "damaged.jpg") and not image.any()
            continue
        assert within(image, expected, bound), (name, diff(image, expected))
        # the bound is tight enough to catch a wrong orientation or colour order
        assert not within(image, expected.flip(-1), bound) and not within(image, expected.transpose(-2, -1), bound)
        if name != "grey.jpg":
            assert not within(image, expected.flip(0), bound), name  # BGR


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_upright_as_pillow_turns_it(tmp_path, orientation):
    pre = Preprocessing(image_size=SIZE, draft=False)
    data = jpeg_bytes(photo(96, 64, orientation), orientation=orientation)
    assert device_header(data).orientation == orientation
    images, _ = decode_stage([data], build_train_pipeline(pre, "none"), CPU)
    assert within(images[0], stage_loader(pre)(data), EXACT)


def test_files_the_device_should_not_decode_go_the_cpu_way(files):
    assert device_header(files["plain.jpg"].read_bytes()) is not None
    for name in ("cmyk.jpg", "truncated.jpg", "picture.png"):
        assert device_header(files[name].read_bytes()) is None, name
    data = files["plain.jpg"].read_bytes()
    assert device_header(data, max_pixels=320 * 240) is not None
    assert device_header(data, max_pixels=320 * 240 - 1) is None  # the CPU path then refuses it, as it says why
    _, reasons = decode_stage([data], build_train_pipeline(Preprocessing(image_size=SIZE), "none"), CPU,
                              max_pixels=1000)  # fmt: skip
    assert "above the limit" in reasons[0]


def test_a_jpeg_the_device_refuses_is_decoded_by_pillow_and_the_rest_stay_batched(files, monkeypatch):
    """As some nvjpeg versions refuse progressive JPEGs; and with calls of one image each (the pixel budget)."""
    real, calls = device_decode._decode_jpeg, []

    def refuses_progressive(encoded, device):
        calls.append(len(encoded))
        if any(b"\xff\xc2" in t.numpy().tobytes() for t in encoded):  # SOF2: a progressive frame
            raise RuntimeError("nvjpeg: unsupported")
        return real(encoded, device)

    monkeypatch.setattr(device_decode, "_decode_jpeg", refuses_progressive)
    pre = Preprocessing(image_size=SIZE, draft=False)
    names = ["plain.jpg", "progressive.jpg", "grey.jpg"]
    images, reasons = decode_stage([files[n].read_bytes() for n in names], build_train_pipeline(pre, "none"), CPU)
    assert calls == [3, 1, 1, 1] and reasons == [None, None, None]  # the failed call, then one image at a time
    for name, image in zip(names, images, strict=True):
        assert within(image, stage_loader(pre)(files[name]), EXACT), name
    calls.clear()
    monkeypatch.setattr(device_decode, "DECODE_PIXELS", 320 * 240)
    decode_stage([files[n].read_bytes() for n in ("plain.jpg", "grey.jpg")], build_train_pipeline(pre, "none"), CPU)
    assert calls == [1, 1]


def training_set(files: dict[str, Path], draft: bool, augment: str = "light") -> MultiLabelDataset:
    names = sorted(files)
    records = [Record(files[n], positives=(("cat",), ("dog",), ("cat", "dog"))[k % 3]) for k, n in enumerate(names)]
    pipeline = build_train_pipeline(Preprocessing(image_size=SIZE, draft=draft), augment)
    return MultiLabelDataset(records * 2, ["cat", "dog"], pipeline, seed=7)


@pytest.mark.parametrize("draft", [False, True])
def test_device_decoded_batches_equal_the_dataloaders(files, draft):
    ds = training_set(files, draft)
    reference_sampler, sampler = EpochSampler(ds, seed=3), EpochSampler(ds, seed=3)
    loader = build_loader(ds, batch_size=4, shuffle=False, num_workers=0, sampler=reference_sampler)
    device_batches = DeviceDecodedBatches(ds, sampler, 4, CPU, num_workers=0)
    bound = DRAFT if draft else EXACT
    errors = []
    for epoch, start in ((1, 0), (2, 0), (2, 5)):  # two epochs, and a resume 5 samples into one
        reference_sampler.set_position(epoch, start)
        sampler.set_position(epoch, start)
        expected, got = list(loader), list(device_batches)
        assert len(got) == len(expected) == len(device_batches)
        for a, b in zip(expected, got, strict=True):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.flips, b.flips)
            assert torch.equal(a.targets, b.targets) and torch.equal(a.masks, b.masks)
            assert a.errors == b.errors
            assert b.images.shape == a.images.shape and within(b.images, a.images, bound), diff(b.images, a.images)
            errors += b.errors
    assert {Path(p).name for p, _ in errors} == {"truncated.jpg", "damaged.jpg"}
    assert any("truncated" in reason for _, reason in errors)


def test_workers_hand_the_bytes_over(files):
    """The packed batch crosses a worker process as the in-process one does."""
    ds = training_set(files, draft=False)
    in_process = list(DeviceDecodedBatches(ds, EpochSampler(ds, seed=3), 5, CPU, num_workers=0))
    in_worker = list(DeviceDecodedBatches(ds, EpochSampler(ds, seed=3), 5, CPU, num_workers=1))
    for a, b in zip(in_process, in_worker, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices) and a.errors == b.errors


def test_decoding_on_the_device_is_chosen_only_for_cuda_file_sets_without_augmentation(files, tiny_shapes, tmp_path):
    ds = training_set(files, draft=True)
    cuda = torch.device("cuda")  # a device object only: nothing here touches CUDA
    assert decodes_on_device(ds, cuda) and not decodes_on_device(ds, CPU)
    assert not decodes_on_device(training_set(files, draft=True, augment="standard"), cuda)
    with pytest.raises(ValueError, match="augmentation"):
        DeviceDecodedBatches(training_set(files, True, "standard"), EpochSampler(ds), 4, CPU)

    from test_device_cache import cached_dataset

    assert not decodes_on_device(cached_dataset(tiny_shapes, tmp_path), cuda)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_prepare_data_decodes_on_the_device_for_cuda_only(tiny_shapes, device):
    from torch.utils.data import DataLoader

    from mlic.config import DataConfig
    from mlic.engine.data_setup import prepare_data
    from mlic.runtime.distributed import DistInfo

    d = DataConfig(train=str(tiny_shapes["train"]), val=str(tiny_shapes["val"]), image_size=SIZE, cache="off",
                   num_workers=0)  # fmt: skip
    data = prepare_data(d, seed=0, batch_size=8, progress=False, info=DistInfo(), device=torch.device(device))
    assert isinstance(data.train_loader, DeviceDecodedBatches if device == "cuda" else DataLoader)
    assert len(data.train_loader) == len(build_loader(data.train_ds, batch_size=8, shuffle=False, num_workers=0,
                                                      sampler=data.train_sampler))  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_decodes_as_the_cpu_path(files):
    # Not yet measured on a GPU: nvjpeg's IDCT and chroma upsampling, and the float antialiased resize CUDA runs
    # for uint8, may differ from libjpeg-turbo's by a few levels; tighten this to what a GPU run shows.
    pipeline = build_train_pipeline(Preprocessing(image_size=SIZE, draft=False), "none")
    datas = [p.read_bytes() for p in files.values()]
    on_cpu, cpu_reasons = decode_stage(datas, pipeline, CPU)
    on_gpu, gpu_reasons = decode_stage(datas, pipeline, torch.device("cuda"))
    assert on_gpu.device.type == "cuda" and [r is None for r in gpu_reasons] == [r is None for r in cpu_reasons]
    for name, a, b in zip(files, on_cpu, on_gpu.cpu(), strict=True):
        assert within(a, b, (8, 1.0)), (name, diff(a, b))
        assert not within(a, b.flip(-1), (8, 1.0)), name
