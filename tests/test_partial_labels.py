"""Unknown labels end to end: the loss and the training step ignore them exactly."""

import csv

import torch
import torch.nn.functional as F
from training import run_epoch

from mlic.data.dataset import MultiLabelDataset
from mlic.data.labels import build_vocabulary
from mlic.data.loader import build_loader
from mlic.data.records import Record
from mlic.data.transforms import Preprocessing, batch_inputs, build_eval_pipeline
from mlic.engine.loop import Span
from mlic.losses import build_loss
from mlic.models import build_model


def _records(tiny_shapes, unknown_as):
    """Records from the demo CSV; every third image has 'circle' unknown, the labels behind it set to ``unknown_as``."""
    root = tiny_shapes["train"].parent
    out = []
    with open(tiny_shapes["train"], newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            labels = set(row["labels"].split())
            if i % 3 == 0:
                hidden = {"circle"} if unknown_as == "positive" else set()
                out.append(
                    Record(root / row["image"], tuple(sorted((labels - {"circle"}) | hidden)), unknown=("circle",))
                )
            else:
                out.append(Record(root / row["image"], tuple(sorted(labels))))
    return out


def _train(records, class_names, steps=3):
    torch.manual_seed(0)
    model = build_model("seed_cnn", len(class_names), widths=[8, 8, 16, 16], hidden=16, drop_rate=0.0)
    ds = MultiLabelDataset(records, class_names, build_eval_pipeline(Preprocessing(image_size=32)))
    loader = build_loader(ds, batch_size=16, shuffle=False, num_workers=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = run_epoch(model, loader, opt, span=Span(0, steps, len(loader)), pre=ds.pipeline.pre)
    return model, stats, ds


def test_unknown_entries_do_not_change_training(tiny_shapes):
    as_pos = _records(tiny_shapes, "positive")
    as_neg = _records(tiny_shapes, "negative")
    names = build_vocabulary(as_pos)
    model_pos, stats_pos, ds = _train(as_pos, names)
    model_neg, stats_neg, _ = _train(as_neg, names)
    assert ds.labels.known_counts()[names.index("circle")] < len(ds)  # the test has unknowns at all
    # whatever hides behind an unknown entry, training is bit-for-bit the same
    assert stats_pos.loss == stats_neg.loss
    for a, b in zip(model_pos.state_dict().values(), model_neg.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_masked_loss_equals_loss_on_known_entries_only(tiny_shapes):
    records = _records(tiny_shapes, "positive")
    names = build_vocabulary(records)
    ds = MultiLabelDataset(records, names, build_eval_pipeline(Preprocessing(image_size=32)))
    batch = next(iter(build_loader(ds, batch_size=24, shuffle=False, num_workers=0)))
    torch.manual_seed(0)
    model = build_model("seed_cnn", len(names), widths=[8, 8, 16, 16], hidden=16).eval()
    with torch.no_grad():
        logits = model(batch_inputs(batch.images, None, Preprocessing(), torch.device("cpu")))
    known = batch.masks.bool()
    assert not known.all()
    expected = F.binary_cross_entropy_with_logits(logits[known], batch.targets[known])
    assert torch.allclose(build_loss("bce")(logits, batch.targets, batch.masks), expected)
    assert not torch.allclose(F.binary_cross_entropy_with_logits(logits, batch.targets), expected)


def test_known_cells_without_a_dense_row_agree_with_dense():
    import numpy as np

    from mlic.data.labels import LabelTable

    names = [f"c{j}" for j in range(7)]
    rng = np.random.default_rng(3)
    records = []
    for i in range(60):
        shuffled = list(rng.permutation(names))
        pos, neg, unk = shuffled[:2], shuffled[2:4], shuffled[4:5]
        if i % 3 == 0:  # partially labelled: only positives and verified negatives are known
            records.append(Record(path=f"{i}.png", positives=tuple(pos), negatives=tuple(neg)))
        else:  # fully labelled, one label unknown (and one image lists a positive as unknown: unknown wins)
            records.append(Record(path=f"{i}.png", positives=tuple(pos), unknown=tuple(unk + pos[:1] * (i == 1))))
    table = LabelTable.from_records(records, names)
    rows = rng.integers(0, 60, 500)  # repeated images too
    cols = rng.integers(0, 7, 500)
    _, masks = table.dense(rows)
    np.testing.assert_array_equal(table.known(rows, cols), masks[np.arange(500), cols] > 0)
