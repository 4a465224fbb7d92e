"""Label audit: confident learning never flags an unknown cell and finds injected errors; folds; applying
fixes in the input's format; leaks between splits; the review page; the whole path through the CLI."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlic.cli import main
from mlic.data.builders.noise import inject_label_noise
from mlic.data.convert import write_records
from mlic.data.fixes import apply_fixes, read_audit
from mlic.data.records import DataError, Record
from mlic.data.sources import load_records
from mlic.data.splits import fold_assignment
from mlic.evaluation.cells import Cells
from mlic.evaluation.confident import find_label_issues


def _noisy_cells(rng, n=3000, c=6, flip_missing=0.05, flip_spurious=0.02, unknown=0.05):
    """Out-of-fold-like probabilities of a good model on the true labels, then noisy given labels.

    Returns (cells over the known cells only, the (row, col) of every wrong given label, the unknown cells)."""
    truth = rng.random((n, c)) < 0.3
    logits = np.where(truth, 2.5, -2.5) + rng.normal(0, 1.2, (n, c))
    p = 1 / (1 + np.exp(-logits))
    given = truth.copy()
    missing = truth & (rng.random((n, c)) < flip_missing)
    spurious = ~truth & (rng.random((n, c)) < flip_spurious)
    given[missing], given[spurious] = False, True
    known = rng.random((n, c)) >= unknown
    rows, cols = np.nonzero(known)
    cells = Cells.from_coo(n, c, rows, cols, p[rows, cols], given[rows, cols])
    wrong = {(int(i), int(j)) for i, j in zip(*np.nonzero((missing | spurious) & known), strict=True)}
    unknown_cells = {(int(i), int(j)) for i, j in zip(*np.nonzero(~known), strict=True)}
    return cells, wrong, unknown_cells


def _flagged(cells, issues):
    return {(int(cells.rows[k]), int(cells.cols[k])) for k in issues.flagged}


def test_confident_learning_finds_injected_errors_and_never_an_unknown_cell():
    cells, wrong, unknown = _noisy_cells(np.random.default_rng(0))
    issues = find_label_issues(cells)
    flagged = _flagged(cells, issues)
    assert not flagged & unknown  # unknown cells are not in the cells: never flagged
    hits = len(flagged & wrong)
    assert hits / len(flagged) >= 0.8 and hits / len(wrong) >= 0.6, (hits, len(flagged), len(wrong))
    # ranked most certain first, scores are the probability of the other label
    assert np.all(np.diff(issues.score) <= 0)
    k = issues.flagged
    other = np.where(cells.targets[k], 1 - cells.scores[k], cells.scores[k])
    np.testing.assert_allclose(issues.score, other)
    # the per-class estimates add up to what was flagged (each class flags its estimated count)
    assert int(issues.missing.sum() + issues.spurious.sum()) == len(flagged)


def test_confident_learning_flags_nothing_on_clean_confident_labels():
    rng = np.random.default_rng(1)
    n, c = 500, 3
    truth = rng.random((n, c)) < 0.4
    p = np.where(truth, 0.9, 0.1) + rng.uniform(-0.05, 0.05, (n, c))
    rows, cols = np.nonzero(np.ones((n, c), bool))
    issues = find_label_issues(Cells.from_coo(n, c, rows, cols, p[rows, cols], truth[rows, cols]))
    assert len(issues.flagged) == 0 and issues.missing.sum() == 0 and issues.spurious.sum() == 0


def test_a_class_with_one_kind_of_label_is_not_audited():
    n = 50
    rows, cols = np.arange(n), np.zeros(n, np.int64)
    cells = Cells.from_coo(n, 1, rows, cols, np.linspace(0.01, 0.99, n), np.ones(n, bool))
    assert len(find_label_issues(cells).flagged) == 0


def _records(n=600, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"c{j}" for j in range(8)]
    freq = np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01])
    out = []
    for i in range(n):
        labels = tuple(sorted(names[j] for j in range(8) if rng.random() < freq[j]))
        out.append(Record(path=f"img{i}.png", positives=labels))
    return out


def test_folds_are_equal_sized_stratified_and_deterministic():
    records = _records()
    a = fold_assignment(records, 5, seed=3)
    assert np.array_equal(a, fold_assignment(records, 5, seed=3))
    assert sorted(np.bincount(a).tolist()) == [120] * 5
    for name in ("c0", "c2", "c4"):
        has = np.array([name in r.positives for r in records])
        per_fold = np.bincount(a[has], minlength=5)
        assert per_fold.max() - per_fold.min() <= 2, (name, per_fold)
    with pytest.raises(ValueError, match="at least 2 folds"):
        fold_assignment(records, 1)


def _audit_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "given", "suggested", "score"])
        w.writerows(rows)
    return path


def test_apply_fixes_in_the_inputs_format_through_the_cli(tmp_path, capsys):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"img{i}.png")
    data = tmp_path / "train.csv"
    data.write_text("image,labels\nimg0.png,cat dog\nimg1.png,dog\nimg2.png,cat\n")
    audit = _audit_csv(tmp_path / "audit.csv", [("img1.png", "cat", 0, 1, 0.97), ("img0.png", "dog", 1, 0, 0.93),
                                                 ("img2.png", "dog", 0, 1, 0.5)])  # fmt: skip
    out = tmp_path / "fixed.csv"
    assert main(["data", "apply-fixes", str(data), str(audit), str(out), "--accept-above", "0.9"]) == 0
    assert "1 labels added, 1 removed (2 of 3 audit rows" in capsys.readouterr().out
    fixed = {str(r.path.name): r.positives for r in load_records(out)}
    assert fixed == {"img0.png": ("cat",), "img1.png": ("cat", "dog"), "img2.png": ("cat",)}
    assert out.read_text().startswith("image,labels\n")  # the input's format: a CSV tag list
    # an existing OUT is refused without --overwrite, a TSV when asked
    assert main(["data", "apply-fixes", str(data), str(audit), str(out), "--accept-above", "0.9"]) == 2
    assert "exists" in capsys.readouterr().err
    tsv = tmp_path / "fixed.tsv"
    assert main(["data", "apply-fixes", str(data), str(audit), str(tsv), "--accept-above", "0.9", "--to", "tsv"]) == 0
    assert tsv.read_text().splitlines()[0] == "image\tlabels"


def test_apply_fixes_to_partial_labels_keeps_unknowns_and_writes_verified_negatives():
    record = Record(path="a.png", positives=("cat", "dog"), negatives=("bird",), unknown=("fish", "cow"))
    rows = [{"image": "a.png", "label": "dog", "given": 1, "suggested": 0, "score": 0.99, "line": 2},
            {"image": "a.png", "label": "bird", "given": 0, "suggested": 1, "score": 0.95, "line": 3}]  # fmt: skip
    (fixed,), counts = apply_fixes([record], rows, 0.9)
    assert fixed.positives == ("bird", "cat") and set(fixed.negatives) == {"dog"}
    assert set(fixed.unknown) == {"fish", "cow"} and counts == {"added": 1, "removed": 1, "accepted": 2}


def test_apply_fixes_errors_name_the_line(tmp_path, capsys):
    record = Record(path="a.png", positives=("cat",))
    stale = [{"image": "a.png", "label": "cat", "given": 0, "suggested": 1, "score": 0.99, "line": 7}]
    with pytest.raises(DataError, match="audit line 7: a.png has 'cat' = 1, the audit says 0"):
        apply_fixes([record], stale, 0.5)
    elsewhere = [{"image": "b.png", "label": "cat", "given": 0, "suggested": 1, "score": 0.99, "line": 3}]
    with pytest.raises(DataError, match="audit line 3: image b.png is not in the data"):
        apply_fixes([record], elsewhere, 0.5)
    bad = _audit_csv(tmp_path / "bad.csv", [("a.png", "cat", 1, 0, 0.9), ("a.png", "cat", "yes", 0, 0.9)])
    with pytest.raises(DataError, match=r"bad.csv:3: given and suggested must be 0 or 1"):
        read_audit(bad)
    (tmp_path / "nocols.csv").write_text("image,label\na.png,cat\n")
    with pytest.raises(DataError, match=r"nocols.csv:1: missing column\(s\) given, suggested, score"):
        read_audit(tmp_path / "nocols.csv")
    # through the CLI: one line, exit 2
    (tmp_path / "a.png").write_bytes(b"")
    data = tmp_path / "d.csv"
    data.write_text("image,labels\na.png,cat\n")
    assert main(["data", "apply-fixes", str(data), str(bad), str(tmp_path / "o.csv"), "--accept-above", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlic data apply-fixes: error:") and "bad.csv:3" in err and "\n" not in err
    with pytest.raises(SystemExit) as stop:
        main(["data", "apply-fixes", str(data), str(bad), str(tmp_path / "o.csv"), "--accept-above", "2"])
    assert stop.value.code == 2 and "--accept-above: must be in [0, 1]" in capsys.readouterr().err


def _picture(seed, size=96):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((size, size), Image.BICUBIC)


def test_leaks_exact_and_near_copies_across_splits_only(tmp_path):
    from mlic.data.leaks import find_leaks

    paths = {}
    for i in range(12):
        paths[i] = tmp_path / f"p{i}.png"
        _picture(i).save(paths[i])
    shutil.copy(paths[0], tmp_path / "copy0.png")  # exact copy into test
    _picture(1).resize((80, 80)).save(tmp_path / "near1.jpg", quality=85)  # resized and re-encoded into val
    shutil.copy(paths[2], tmp_path / "p2-again.png")  # a duplicate inside train is no leak

    def recs(names):
        return [Record(path=tmp_path / n, positives=("x",)) for n in names]

    splits = {"train": recs([f"p{i}.png" for i in range(8)] + ["p2-again.png"]),
              "val": recs(["near1.jpg", "p8.png", "p9.png"]),
              "test": recs(["copy0.png", "p10.png", "p11.png"])}  # fmt: skip
    leaks = find_leaks(splits)
    found = {(x.kind, x.split_a, x.path_a.split("/")[-1], x.split_b, x.path_b.split("/")[-1]) for x in leaks}
    assert found == {("exact", "train", "p0.png", "test", "copy0.png"), ("near", "train", "p1.png", "val", "near1.jpg")}
    assert all(x.distance <= 4 for x in leaks)


QUADRANT_COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 230), "yellow": (230, 220, 40)}


def _quadrant_images(folder: Path, n: int, seed: int) -> list[Record]:
    """An easy task a small CNN learns in a few epochs: label k = a patch of colour k in quadrant k."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    records = []
    for i in range(n):
        pixels = rng.integers(90, 160, (32, 32, 3), dtype=np.uint8)
        labels = [name for name in QUADRANT_COLOURS if rng.random() < 0.4]
        for k, name in enumerate(QUADRANT_COLOURS):
            if name in labels:
                y, x = 16 * (k // 2) + rng.integers(2, 6), 16 * (k % 2) + rng.integers(2, 6)
                pixels[y : y + 9, x : x + 9] = QUADRANT_COLOURS[name]
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        records.append(Record(path=folder / f"{i:04d}.png", positives=tuple(sorted(labels))))
    return records


def test_small_audit_through_the_cli(tmp_path, capsys):
    """The benchmark's path at a size that runs in well under a minute (an easier task, weaker bounds): unknown
    cells are never flagged, the review page is self-contained, leaks are reported with both paths."""
    clean = _quadrant_images(tmp_path / "images", 700, seed=5)
    records, noise = inject_label_noise(clean[:640], remove=0.08, add=0.04, seed=5)
    data = write_records(records, tmp_path / "noisy.jsonl", "jsonl")
    val = [clean[0], *clean[640:]]  # the first training image is also in val: a leak
    val_file = write_records(val, tmp_path / "val.jsonl", "jsonl")
    out = tmp_path / "audit"
    args = ["data", "audit", str(data), "--folds", "2", "--epochs", "4", "--batch-size", "16", "--image-size", "32",
            "--output-dir", str(out), "--val", str(val_file), "--no-progress", "--device", "cpu",
            "--seed", "0"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\d+ of \d+ known labels flagged", printed) and "leaks between splits: 1 exact" in printed
    with open(out / "audit.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    flagged = {(r["image"], r["label"]) for r in rows}
    assert noise.unknown and not flagged & noise.unknown
    hits = len(flagged & noise.wrong)
    # measured: 133 of 143 flagged, 148 injected (0.93 / 0.90); the benchmark asks 0.8 / 0.6 at full size
    assert hits / len(flagged) >= 0.7 and hits / len(noise.wrong) >= 0.6, (hits, len(flagged), len(noise.wrong))
    for r in rows:  # every row says what the file says
        given = r["label"] in next(x.positives for x in records if str(x.path) == r["image"])
        assert int(r["given"]) == given and int(r["suggested"]) == 1 - given
    oof = np.load(out / "out_of_fold.npz")
    scored = {(str(oof["paths"][i]), str(oof["class_names"][j])) for i, j in zip(oof["rows"], oof["cols"], strict=True)}
    assert not scored & noise.unknown and flagged <= scored  # unknown cells are never even scored
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == 2 and len(summary["runs"]) == 2 and summary["flagged"] == len(rows)
    assert summary["cells"] == len(scored) == len(oof["rows"])
    with open(out / "leaks.csv", newline="") as f:
        leaks = list(csv.DictReader(f))
    assert {"kind": "exact", "image_a": str(records[0].path)}.items() <= leaks[0].items()
    page = (out / "review.html").read_text()
    assert page.count('<tr><td><img src="data:image/jpeg;base64,') == min(len(rows), 200)
    assert 'class="sortable"' in page and "Grad-CAM" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # fetches nothing
    # a second audit into the same folder needs --overwrite
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
