"""Pascal VOC detection trees reduced to image-level label sets.

Expects the standard layout: ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt`` and
``JPEGImages/<id>.jpg``. Objects marked difficult are the interesting case: VOC's own evaluation
neither rewards nor penalises them, which is what ``difficult="ignore"`` reproduces.
"""

from __future__ import annotations

from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from mlic.data.readers.csv_reader import StrPath, join_image_path, read_text
from mlic.data.records import DataError, Record, RowErrors, check_label

DIFFICULT_CHOICES = ("ignore", "positive", "negative")


def read_voc(
    root: StrPath, *, split: str = "train", difficult: str = "ignore", problems: RowErrors | None = None
) -> list[Record]:
    """Records for the image ids listed in ``ImageSets/Main/<split>.txt``, in file order.

    ``difficult``: "ignore" puts a class whose only objects are difficult in ``unknown``; "positive"
    counts difficult objects like any other; "negative" drops them as if absent. The image path is
    ``JPEGImages/<id>.jpg`` (as torchvision does), not the XML's <filename>, which converters often get wrong.
    An id that is an absolute path or climbs out with ".." is an error. XML entity declarations are refused
    (defusedxml), so a "billion laughs" file is a quick DataError instead of a hang. ``problems``: where a bad
    id's or annotation's error goes (default: raised).
    """
    if difficult not in DIFFICULT_CHOICES:
        raise DataError(f"difficult must be one of {', '.join(DIFFICULT_CHOICES)}; got {difficult!r}")
    root = Path(root).absolute()
    split_name = f"ImageSets/Main/{split}.txt"
    split_file = root / split_name
    if not split_file.is_file():
        available = sorted(path.stem for path in (root / "ImageSets" / "Main").glob("*.txt"))
        raise DataError(f"{split_file}: no such split file; splits here: {', '.join(available) or 'none'}")
    problems = problems or RowErrors()
    records, ids_read = [], 0
    for number, line in enumerate(read_text(split_file).split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        ids_read += 1
        try:
            # per-class split files add a second "1/-1" column; only the id matters here
            records.append(_record(root, fields[0], f"{split_name}:{number}", difficult))
        except DataError as err:
            problems.add(err)
    if not ids_read:
        raise DataError(f"{split_name}:1: no image ids (the split file is empty)")
    return records


def _record(root: Path, image_id: str, where: str, difficult: str) -> Record:
    image_path = join_image_path(root / "JPEGImages", f"{image_id}.jpg", where, allow_absolute=False)
    xml_path = root / "Annotations" / f"{image_id}.xml"
    if not xml_path.is_file():
        raise DataError(f"{where}: no annotation file Annotations/{image_id}.xml for image id {image_id!r}")
    positives, unknown = _labels(xml_path, f"Annotations/{image_id}.xml", difficult)
    return Record(path=image_path, positives=positives, unknown=unknown, source=where)


def _labels(xml_path: Path, name: str, difficult: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positives, unknown) from the <object> elements of one annotation file."""
    try:
        tree = SafeET.parse(xml_path)
    except SafeET.ParseError as err:
        raise DataError(f"{name}:{err.position[0]}: invalid XML ({err})") from None
    except OSError as err:
        raise DataError(f"{name}: cannot read ({err.strerror or err})") from None
    except DefusedXmlException as err:  # entity declarations: entity expansion bombs and external entities
        raise DataError(
            f"{name}: refused: {err} (VOC annotations never need entities or external references)"
        ) from None
    positives: dict[str, None] = {}
    difficult_names: dict[str, None] = {}
    for obj in tree.getroot().findall("object"):  # direct children only: <part> elements also carry names
        label = (obj.findtext("name") or "").strip()
        if not label:
            raise DataError(f"{name}: an <object> has no <name>")
        check_label(label, f"{name}: <object>")
        if (obj.findtext("difficult") or "0").strip() == "1" and difficult != "positive":
            if difficult == "ignore":
                difficult_names[label] = None
            continue
        positives[label] = None
    unknown = tuple(label for label in difficult_names if label not in positives)
    return tuple(positives), unknown
