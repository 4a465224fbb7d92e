from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mlic.data.labels import build_vocabulary, decode, encode
from mlic.data.records import Record
from mlic.data.splits import holdout_split
from mlic.losses import build_loss


def test_vocabulary_sorted_and_encoding_with_masks():
    records = [
        Record(Path("/a.png"), ("dog", "cat")),
        Record(Path("/b.png"), ("bird",), unknown=("cat",)),
        Record(Path("/c.png"), ("cat",), negatives=("dog",)),
    ]
    names = build_vocabulary(records)
    assert names == ["bird", "cat", "dog"]
    index = {n: i for i, n in enumerate(names)}
    t, m = encode(records[0], index)
    assert t.tolist() == [0, 1, 1] and m.tolist() == [1, 1, 1]
    t, m = encode(records[1], index)
    assert t.tolist() == [1, 0, 0] and m.tolist() == [1, 0, 1]
    t, m = encode(records[2], index)  # only cat (positive) and dog (verified negative) are known
    assert t.tolist() == [0, 1, 0] and m.tolist() == [0, 1, 1]
    assert decode([True, False, True], names) == ["bird", "dog"]


def test_masked_bce_equals_bce_on_known_entries():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), (torch.rand(6, 4) > 0.5).float()
    mask = (torch.rand(6, 4) > 0.3).float()
    loss = build_loss("bce")(logits, targets, mask)
    known = mask.bool()
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits[known], targets[known]))
    assert torch.allclose(build_loss("bce")(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))
    assert build_loss("bce")(logits, targets, torch.zeros_like(mask)).item() == 0.0


def test_holdout_split_is_deterministic_and_disjoint():
    records = [Record(Path(f"/{i}.png"), ("a",)) for i in range(50)]
    train1, val1 = holdout_split(records, 0.2, seed=3)
    train2, val2 = holdout_split(records, 0.2, seed=3)
    assert val1 == val2 and len(val1) == 10 and len(train1) == 40
    assert not {r.path for r in train1} & {r.path for r in val1}
    assert holdout_split(records, 0.2, seed=4)[1] != val1
    assert np.isclose(len(holdout_split(records[:3], 0.1, seed=0)[1]), 1)
