"""Grad-CAM: maps follow the evidence, the model is left as it was, layers are found; `mlic explain` end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from mlic.checkpoint import save_checkpoint
from mlic.cli import main
from mlic.data.transforms import Preprocessing
from mlic.insight.gradcam import find_target_layer, gradcam
from mlic.models.seed_cnn import SeedCNN


class SpotNet(nn.Module):
    """Class k's logit is the mean of input channel k after a ReLU: its evidence is where channel k is bright."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0, 0, 0] = conv.weight[1, 1, 0, 0] = 1.0
        self.features = nn.Sequential(conv, nn.ReLU(inplace=True), nn.MaxPool2d(2))  # (B, 2, S/2, S/2)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def _two_spots(size: int = 32) -> torch.Tensor:
    """(1, 3, S, S): channel 0 bright in the top-left quarter, channel 1 in the bottom-right quarter."""
    x = torch.zeros(1, 3, size, size)
    h = size // 2
    x[0, 0, 2 : h - 2, 2 : h - 2] = 1.0
    x[0, 1, h + 2 : -2, h + 2 : -2] = 1.0
    return x


def _mass(cam: np.ndarray, box: tuple[int, int, int, int], dilate: int = 0) -> float:
    """Share of the map's total inside box (x0, y0, x1, y1), x1/y1 exclusive, grown by ``dilate`` pixels."""
    x0, y0, x1, y1 = box
    inside = cam[max(0, y0 - dilate) : y1 + dilate, max(0, x0 - dilate) : x1 + dilate].sum()
    return float(inside / max(cam.sum(), 1e-12))


def test_each_label_map_sits_on_its_own_evidence():
    maps = gradcam(SpotNet(), _two_spots(32), [0, 1])
    assert set(maps) == {0, 1}
    for cam in maps.values():
        assert cam.shape == (32, 32) and cam.dtype == np.float32
        assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    assert _mass(maps[0], (0, 0, 16, 16)) > 0.9
    assert _mass(maps[1], (16, 16, 32, 32)) > 0.9


def test_gradcam_leaves_the_model_and_input_untouched():
    model = SeedCNN(num_classes=3, widths=(8, 16), hidden=16).train()
    x = torch.randn(1, 3, 32, 32)
    x_before = x.clone()
    bn = model.features[0][1]
    running_before = bn.running_mean.clone()
    first = gradcam(model, x, [0, 2])
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: no .grad accumulated
    assert torch.equal(bn.running_mean, running_before)  # ran in eval mode: BatchNorm statistics unchanged
    assert torch.equal(x, x_before) and not x.requires_grad
    second = gradcam(model, x, [0, 2])
    for c in (0, 2):
        np.testing.assert_allclose(first[c], second[c], atol=1e-6)


def test_frozen_weights_still_give_maps():
    model = SpotNet()
    for p in model.parameters():
        p.requires_grad_(False)  # e.g. a frozen backbone, or a model prepared for inference
    maps = gradcam(model, _two_spots(32), [0])
    assert _mass(maps[0], (0, 0, 16, 16)) > 0.9


def test_target_layer_is_found_and_can_be_named():
    seed = SeedCNN(num_classes=2, widths=(8, 16, 32), hidden=16)
    assert find_target_layer(seed, torch.zeros(1, 3, 32, 32)) == "features.2"
    # a generic CNN: the last module with a 4-D output, found by a dry forward
    assert find_target_layer(SpotNet(), torch.zeros(1, 3, 32, 32)) == "features"
    # an earlier layer by name: full resolution (before the pooling), still on the right spot
    maps = gradcam(SpotNet(), _two_spots(32), [1], target_layer="features.1")
    assert _mass(maps[1], (16, 16, 32, 32)) > 0.9


def test_named_errors():
    model = SpotNet()
    with pytest.raises(ValueError, match="no module 'nope'.*features"):
        gradcam(model, _two_spots(), [0], target_layer="nope")
    with pytest.raises(ValueError, match="out of range"):
        gradcam(model, _two_spots(), [5])
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        gradcam(model, torch.zeros(2, 3, 32, 32), [0])

    class Flat(SpotNet):
        def forward_features(self, x):
            return super().forward_features(x).mean(dim=(2, 3))  # (B, C): no feature map

        def forward(self, x):
            return self.head(self.forward_features(x))

    with pytest.raises(ValueError, match="target-layer"):
        gradcam(Flat(), _two_spots(), [0])


def _import_timm():
    if os.environ.get("CI") == "true":
        import timm

        return timm
    return pytest.importorskip("timm")


def test_timm_cnn_gets_its_last_feature_map():
    _import_timm()
    from mlic.models import build_model

    model = build_model("resnet18", 3)
    nn.init.normal_(model.get_classifier().weight)  # a non-zero head, so the maps are not all zero
    x = torch.randn(1, 3, 64, 64)
    assert find_target_layer(model, x) == "layer4"
    maps = gradcam(model, x, [0, 1, 2])
    assert all(m.shape == (64, 64) for m in maps.values())
    assert any(m.max() == pytest.approx(1.0) for m in maps.values())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = SeedCNN(num_classes=3, widths=(8, 16), hidden=16)
    meta = {
        "model": {"name": "seed_cnn", "kwargs": {"widths": [8, 16], "hidden": 16, "drop_rate": 0.5}},
        "class_names": ["circle", "ring", "star"],
        "thresholds": [0.5, 0.5, 0.5],
        "preprocessing": Preprocessing(image_size=32).to_dict(),
    }
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", model, meta))


def test_explain_writes_one_overlay_per_label(checkpoint, tiny_shapes, tmp_path, capsys):
    from PIL import Image

    from mlic.inference.predictor import Predictor

    image = str(tiny_shapes["test"].parent / "images" / "test" / "00000.png")
    out = tmp_path / "maps"
    assert main(["explain", checkpoint, image, "--label", "star", "--label", "ring", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert [os.path.basename(p) for p in printed] == ["00000_star.png", "00000_ring.png"]
    for path in printed:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 256

    # no --label: one map per predicted label, or the top-1 label when none is predicted
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    predicted = predictor.predict_image(image).labels
    assert main(["explain", checkpoint, image, "--output-dir", str(tmp_path / "auto"), "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.split()) == max(1, len(predicted))


def test_explain_names_bad_labels_and_layers(checkpoint, tiny_shapes, tmp_path, capsys):
    image = str(tiny_shapes["test"].parent / "images" / "test" / "00000.png")
    assert main(["explain", checkpoint, image, "--label", "hexagon", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "hexagon" in err and "circle, ring, star" in err
    assert main(["explain", checkpoint, image, "--target-layer", "features.9", "--output-dir", str(tmp_path)]) == 2
    assert "features.9" in capsys.readouterr().err


# --- acceptance: a seed_cnn trained on demo scenes looks at the right object for each label ---------


def _load_split(root, boxes, split, transform, names):
    from mlic.data.images import decode_image

    records = [b for b in boxes if b["image"].startswith(f"images/{split}/")]
    x = torch.stack([transform(decode_image(root / r["image"])) for r in records])
    y = torch.zeros(len(records), len(names))
    for i, r in enumerate(records):
        for obj in r["objects"]:
            y[i, names.index(obj["label"])] = 1.0
    return records, x, y


def _train_seed_cnn(x: torch.Tensor, y: torch.Tensor, epochs: int) -> SeedCNN:
    """The default seed_cnn, Adam + one-cycle, horizontal flips; channels_last, the fast CPU layout for convs."""
    torch.manual_seed(0)
    model = SeedCNN(num_classes=y.shape[1]).to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    batch = 32
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * -(-len(x) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch):
            rows = order[start : start + batch]
            flip = (torch.rand(len(rows), generator=g) < 0.5)[:, None, None, None]
            images = torch.where(flip, x[rows].flip(-1), x[rows])
            loss = nn.functional.binary_cross_entropy_with_logits(model(images), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@pytest.mark.slow
def test_gradcam_finds_each_object_on_trained_demo_scenes(tmp_path):
    """On test scenes with two objects that the model recognises (both p >= 0.5), each label's map puts most of
    its mass on that object's box, and more than on the other object's box.

    Boxes are grown by one cell of the 6x6 feature map (6 px): Grad-CAM cannot place evidence more finely.
    A map shows the model's evidence, which can be wrong where the model is: in a typical run 1 map in 30
    sits on the neighbouring object (a triangle scored from a square's straight edges), so 90% must hit.
    """
    from mlic.data.builders.synthetic import CLASSES, make_shapes_dataset
    from mlic.data.transforms import build_eval_transform

    size = 48
    files = make_shapes_dataset(tmp_path, num_train=2500, num_val=0, num_test=60, image_size=size, seed=3)
    boxes = [json.loads(line) for line in files["boxes"].read_text().splitlines()]
    names, transform = list(CLASSES), build_eval_transform(Preprocessing(image_size=size))
    _, x_train, y_train = _load_split(tmp_path, boxes, "train", transform, names)
    records, x_test, y_test = _load_split(tmp_path, boxes, "test", transform, names)
    model = _train_seed_cnn(x_train, y_train, epochs=12)
    with torch.no_grad():
        probs = torch.sigmoid(model(x_test))

    masses = []
    for i, record in enumerate(records):
        labels = [names.index(obj["label"]) for obj in record["objects"]]
        if len(labels) != 2 or probs[i, labels].min() < 0.5:
            continue
        maps = gradcam(model, x_test[i : i + 1], labels)
        for obj, other, c in zip(record["objects"], record["objects"][::-1], labels, strict=True):
            own, elsewhere = (_mass(maps[c], o["box"], dilate=size // 8) for o in (obj, other))
            masses.append((record["image"], obj["label"], own, elsewhere))
    assert len(masses) >= 20, f"too few recognised two-object scenes: {len(masses) // 2}"
    misses = [m for m in masses if not (m[2] > 0.5 and m[2] > m[3])]
    assert len(misses) <= 0.1 * len(masses), f"{len(misses)} of {len(masses)} maps off their object: {misses}"
    assert np.median([m[2] for m in masses]) > 0.75
