"""Open Images image-level labels: partially labelled data with verified negatives, read at disk speed.

Only the classes listed for an image were checked by a human: Confidence 1 means present, 0 means verified
absent, and every other class is unknown. So every record is partial (``negatives`` known, the rest unknown).

The training file has tens of millions of rows, so it is read by pyarrow's multithreaded CSV reader into
columns, and the records are built from those columns with array operations straight into a ``RecordTable``:
no Python object per row, and memory proportional to the number of labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlic.data.labels import LabelTable, Ragged
from mlic.data.readers.csv_reader import StrPath, csv_rows, join_image_path, read_text
from mlic.data.records import DataError, RowErrors, check_label
from mlic.data.table import RecordTable, StringColumn

REQUIRED_COLUMNS = ("ImageID", "LabelName", "Confidence")
POSITIVE_VALUES = ("1", "1.0")
NEGATIVE_CONFIDENCES = ("0", "0.0")


def read_openimages(
    labels_csv: StrPath, *, class_descriptions: StrPath, image_root: StrPath, problems: RowErrors | None = None
) -> RecordTable:
    """One record per ImageID (in order of first appearance), image path ``image_root/<ImageID>.jpg``.

    MIDs are mapped to display names through ``class_descriptions`` (LabelName,DisplayName; with or
    without a header). A MID missing from it keeps the MID itself as its name, so no label is lost.
    Two MIDs with the same display name become one class. Fractional confidences (the
    machine-generated files) are rejected: use the human-verified labels. ``problems``: where bad rows go
    (default: the first is raised); collected ones are left out.
    """
    path = Path(labels_csv).absolute()
    names = read_class_descriptions(Path(class_descriptions).absolute())
    root = Path(image_root).absolute()
    problems = problems or RowErrors()
    kept = _Kept()
    for first, (image_ids, mids, confidence) in _blocks(path):
        keep = _check_rows(image_ids, mids, confidence, (path.name, root, first), problems)
        kept.add(first, image_ids, mids, confidence, keep)
    if kept.read == 0:
        raise DataError(f"{path.name}:1: no rows below the header")
    return _build_table(path.name, root, names, kept)


# The label file is read this many bytes at a time: memory holds one block of text and, for every row
# kept, four small integers, instead of the whole file as strings (Open Images' train file is gigabytes).
BLOCK_BYTES = 64 << 20


def _blocks(path: Path):
    """(first data row, (ImageID, LabelName, Confidence) pyarrow string arrays) per block of the file."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:  # pyarrow is a core dependency; this only happens in a broken install
        raise DataError("reading Open Images needs pyarrow: pip install pyarrow") from None
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in REQUIRED_COLUMNS},
                                   include_columns=list(REQUIRED_COLUMNS))  # fmt: skip
    first = 0
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
                                convert_options=convert)  # fmt: skip
        for batch in reader:
            yield first, tuple(batch.column(c) for c in REQUIRED_COLUMNS)
            first += batch.num_rows
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (pa.ArrowInvalid, pa.ArrowKeyError, KeyError) as exc:
        message = " ".join(str(exc).split())
        missing = next((c for c in REQUIRED_COLUMNS if f"'{c}' in include_columns does not exist" in message), None)
        if missing is not None:
            raise DataError(f"{path.name}:1: missing column {missing!r}; needs {', '.join(REQUIRED_COLUMNS)}") from None
        raise DataError(f"{path.name}: not a readable CSV ({message})") from None


def _check_rows(image_ids, mids, confidence, where_from: tuple[str, Path, int], problems: RowErrors) -> np.ndarray:
    """(rows,) bool: rows fit to use; each other row is an error (raised, or collected and left out).
    ``where_from``: the file's name, the image root, and the file row of the block's first row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    name, root, first = where_from
    conf = confidence.fill_null("")
    valid = np.asarray(pc.is_in(conf, value_set=pa.array(POSITIVE_VALUES + NEGATIVE_CONFIDENCES)))
    ids, labels = image_ids.fill_null(""), mids.fill_null("")
    empty = np.asarray(pc.equal(ids, "")) | np.asarray(pc.equal(labels, ""))
    # an ImageID becomes a file name: candidates for leaving the image root are checked one by one
    suspect = np.asarray(pc.match_substring_regex(ids, r"[/\\]|\.\."))
    bad = ~valid | empty
    for row in np.flatnonzero(suspect & ~bad).tolist():
        try:
            join_image_path(root, f"{ids[row].as_py()}.jpg", f"{name}:{first + row + 2}", allow_absolute=False)
        except DataError:
            bad[row] = True
    for row in np.flatnonzero(bad)[:1000].tolist():
        where = f"{name}:{first + row + 2}"  # the header is line 1
        if empty[row]:
            problems.add(DataError(f"{where}: empty ImageID or LabelName"))
        elif valid[row]:
            try:
                join_image_path(root, f"{ids[row].as_py()}.jpg", where, allow_absolute=False)
            except DataError as err:
                problems.add(err)
        else:
            problems.add(DataError(f"{where}: Confidence {conf[row].as_py()!r} is not 0 or 1 (machine-generated "
                                   "labels unsupported)"))  # fmt: skip
    return ~bad


class _Kept:
    """The rows kept, block by block, as integers: image (block-local id), MID id, present, file row."""

    def __init__(self) -> None:
        self.image_names, self.image, self.mid, self.present, self.rows = [], [], [], [], []
        self.mids: dict[str, int] = {}
        self.read = 0

    def add(self, first: int, image_ids, mids, confidence, keep: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.read += len(keep)
        rows = np.flatnonzero(keep)
        taken = pa.array(rows, pa.int64())
        images = pc.take(image_ids, taken).dictionary_encode()  # this block's images, in order of first appearance
        self.image_names.append(images.dictionary)
        self.image.append(np.asarray(images.indices, np.int32))
        labels = pc.take(mids, taken).dictionary_encode()
        ids = np.array([self.mids.setdefault(m, len(self.mids)) for m in labels.dictionary.to_pylist()] or [0])
        self.mid.append(ids.astype(np.int32)[np.asarray(labels.indices, np.int64)])
        self.present.append(np.asarray(pc.is_in(pc.take(confidence, taken), value_set=pa.array(POSITIVE_VALUES))))
        self.rows.append((rows + first).astype(np.int64))

    def images(self):
        """(every ImageID once, in order of first appearance; (rows,) int64 image of each kept row)."""
        import pyarrow as pa

        names = pa.concat_arrays(self.image_names).dictionary_encode()  # blocks' dictionaries, in file order
        ids = np.asarray(names.indices, np.int64)
        starts = np.cumsum([0] + [len(d) for d in self.image_names[:-1]])
        image = np.concatenate([ids[start + local] for start, local in zip(starts, self.image, strict=True)])
        return names.dictionary, image

    def mid_names(self) -> list[str]:
        return list(self.mids)


def _build_table(name: str, root: Path, names: dict[str, str], kept: _Kept) -> RecordTable:
    """The records: one per image, its rows' classes as positives (Confidence 1) or verified negatives (0)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    image_names, image = kept.images()
    mid, present, rows = (np.concatenate(x) for x in (kept.mid, kept.present, kept.rows))
    kept.image, kept.mid, kept.present, kept.rows = [], [], [], []  # free the blocks as we go
    # MIDs -> display names; two MIDs of one name are one class
    mid_list = kept.mid_names()
    mid_names = [names.get(m) or check_label(m, f"{name}: LabelName") for m in mid_list]
    class_names = sorted(set(mid_names))
    index = {n: i for i, n in enumerate(class_names)}
    class_of_mid = np.array([index[n] for n in mid_names] or [0], np.int64)
    cls = class_of_mid[mid]
    num_images, num_classes = len(image_names), len(class_names)
    try:
        pos, neg = _ragged_by_image(image.astype(np.int64), cls, present, num_images, num_classes)
    except _Clash as clash:
        row, c = int(rows[clash.cell]), class_names[int(cls[clash.cell])]
        raise DataError(f"{name}:{row + 2}: {c!r} ({mid_list[int(mid[clash.cell])]}) is both present and absent "
                        f"for image {image_names[int(image[clash.cell])].as_py()}") from None  # fmt: skip
    first_row = np.full(num_images, np.iinfo(np.int64).max)
    np.minimum.at(first_row, image, rows)
    prefix = f"{root}/"
    paths = pc.binary_join_element_wise(prefix, image_names, ".jpg", "")
    sources = pc.binary_join_element_wise(f"{name}:", pc.cast(pa.array(first_row + 2), pa.string()), "")
    labels = LabelTable(tuple(class_names), pos, neg, Ragged.empty(num_images), np.ones(num_images, bool))
    return RecordTable(_column(paths), _column(sources), labels, distinct=True)  # one record per ImageID


class _Clash(Exception):
    def __init__(self, cell: int) -> None:
        self.cell = cell  # the (later) row that contradicts an earlier one


def _ragged_by_image(image, cls, present, num_images: int, num_classes: int):
    """(positives, negatives) per image, each class once; a class both present and absent raises ``_Clash``.

    One sort of the (image, class) keys does it all (numpy's hash-based unique took 13 s on 7.5 million rows).
    """
    key = image * max(num_classes, 1) + cls
    order = np.argsort(key, kind="stable")
    key, present = key[order], present[order]
    same = key[1:] == key[:-1]
    clash = np.flatnonzero(same & (present[1:] != present[:-1]))
    if len(clash):
        raise _Clash(int(order[clash[0] + 1]))
    first = np.concatenate([[True], ~same])  # one row per (image, class)
    parts = []
    for mask in (first & present, first & ~present):
        keys = key[mask]  # sorted by image, then class
        counts = np.bincount(keys // max(num_classes, 1), minlength=num_images)
        indptr = np.zeros(num_images + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        parts.append(Ragged(indptr, (keys % max(num_classes, 1)).astype(np.int32)))
    return parts[0], parts[1]


def _column(strings) -> StringColumn:
    """A pyarrow string array as a StringColumn, sharing its buffers' bytes (no Python string per row)."""
    import pyarrow as pa

    large = strings.cast(pa.large_string())
    _, offsets, data = large.buffers()
    offsets = np.frombuffer(offsets, np.int64, count=len(large) + 1, offset=large.offset * 8).copy()
    raw = np.frombuffer(data, np.uint8).copy() if data is not None else np.zeros(0, np.uint8)
    return StringColumn(raw[offsets[0] : offsets[-1]], offsets - offsets[0])


def read_class_descriptions(path: Path) -> dict[str, str]:
    """MID -> display name. The official file has no header; a "LabelName,DisplayName" first row is skipped."""
    names: dict[str, str] = {}
    for line, row in csv_rows(read_text(path), ",", path.name):
        if not names and row[0].strip().lower() == "labelname":
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path.name}:{line}: expected LabelName,DisplayName")
        where = f"{path.name}:{line}"
        names.setdefault(check_label(row[0], where), check_label(row[1], where))
    if not names:
        raise DataError(f"{path.name}:1: no class descriptions (the file is empty)")
    return names
