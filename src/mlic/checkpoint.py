"""Self-describing checkpoints: a folder with ``model.safetensors`` and ``meta.json``.

``meta.json`` carries everything evaluate / predict / export / serve need (format version, model
name and constructor arguments, class names, thresholds, preprocessing, the run config). Weights
are safetensors, so loading a checkpoint never unpickles anything. The folder is written under a
temporary name and renamed into place, with ``meta.json`` written last: a folder without it is
incomplete and is never loaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlic.errors import UserError
from mlic.models.unwrap import unwrap_model

FORMAT_NAME = "mlic-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "train_state.pt"  # optimizer/RNG state: tensors and plain values only, read with weights_only=True
META_FILE = "meta.json"
REQUIRED_META = ("format", "version", "model", "class_names", "preprocessing")
# Every key meta.json may hold; another one means a file this mlic did not write, and is refused by name.
KNOWN_META = (*REQUIRED_META, "thresholds", "threshold_info", "epoch", "metrics", "config", "created",
              "torch_version", "weights", "best_by", "progress", "calibration", "calibration_info",
              "initial_weights")  # fmt: skip
MAX_IMAGE_SIZE = 4096  # an input side beyond this is no trained model's (a 100000 px side would need 30 GB)


class CheckpointError(UserError, ValueError):
    """Not a loadable mlic checkpoint; the message names the path and what is wrong."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in unwrap_model(model).state_dict().items()}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    *,
    train_state: dict[str, Any] | None = None,
    ema: nn.Module | None = None,
) -> Path:
    """Write ``model``'s weights and ``meta`` to folder ``path`` atomically (replacing an old one).

    ``train_state`` (optimizer, schedule, RNG...) and ``ema`` weights make it a resume point. Durability
    order: every weights file reaches the disk before ``meta.json`` (whose presence marks the folder
    complete), and the folder itself before it is renamed into place.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_weights(model), tmp / WEIGHTS_FILE)
    _fsync_file(tmp / WEIGHTS_FILE)
    if ema is not None:
        save_file(_weights(ema), tmp / EMA_FILE)
        _fsync_file(tmp / EMA_FILE)
    if train_state is not None:
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(train_state, f)
            f.flush()
            os.fsync(f.fileno())
    full_meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta}
    with open(tmp / META_FILE, "w") as f:  # last: its presence marks the folder complete
        json.dump(full_meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    # Keep the previous good checkpoint until the new one is complete, then swap.
    old = _old(path)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _recover(path: Path) -> None:
    """Writer only: finish a swap cut short by a crash (``path`` gone, its complete predecessor at ``.name.old``).

    Readers never rename anything (a reader renaming while another process saves would break that save);
    they read the predecessor where it lies (``_complete_folder``).
    """
    old = _old(path)
    if not path.exists() and (old / META_FILE).is_file():
        old.rename(path)


def _complete_folder(path: Path) -> Path:
    """``path``, or its complete predecessor when a crash cut a swap short (read in place, never moved)."""
    if not path.exists() and (_old(path) / META_FILE).is_file():
        return _old(path)
    return path


def checkpoint_folder(path: str | Path) -> Path:
    """The folder to read: ``path``, the folder of its ``meta.json`` or weights file, or the complete
    predecessor a crashed save left beside it."""
    path = Path(path)
    if path.is_file() and path.name in (META_FILE, WEIGHTS_FILE):
        path = path.parent
    return _complete_folder(path)


def _stamp(folder: Path) -> tuple[str, int, int] | None:
    """What a save changes: which folder is read (the checkpoint, or its predecessor mid-swap), its inode (a new
    folder is renamed into place) and meta.json's mtime."""
    try:
        return str(folder), os.stat(folder).st_ino, os.stat(folder / META_FILE).st_mtime_ns
    except OSError:
        return None


def _read_settled(path: str | Path, read):
    """``read(folder)`` of checkpoint ``path``, again if a save swapped the folder while it was read, so the
    result never mixes two saves and a reader never fails for a swap it happened to overlap."""
    attempts = 20
    for attempt in range(attempts):
        folder = checkpoint_folder(path)
        before = _stamp(folder)
        try:
            result = read(folder)
        except CheckpointError:
            if attempt == attempts - 1 or _stamp(checkpoint_folder(path)) == before:
                raise
        else:
            if _stamp(checkpoint_folder(path)) == before:
                return result
        time.sleep(0.002 * attempt)  # saves in a tight loop: step out of the writer's rhythm
    return result


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read and check ``meta.json`` of checkpoint folder ``path`` (or of the folder holding a given file)."""
    return _read_settled(path, _read_meta)


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not an mlic checkpoint (expected a folder with {META_FILE} and {WEIGHTS_FILE})")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not an mlic checkpoint or incomplete ({META_FILE} missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from None
    except OSError as exc:  # vanished since the check above (a save swapped the folder), or unreadable
        raise CheckpointError(f"{meta_path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{meta_path}: not an mlic checkpoint (format is not {FORMAT_NAME!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: checkpoint format version {meta.get('version')} is not supported "
            f"(this mlic reads version {FORMAT_VERSION})"
        )
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(meta) - set(KNOWN_META))
    if unknown:
        raise CheckpointError(f"{meta_path}: unknown key(s) {', '.join(unknown)} (written by another program?)")
    try:
        check_meta_fields(meta)
    except ValueError as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from None
    return meta


def check_meta_fields(meta: dict[str, Any]) -> None:
    """Every field a checkpoint's (or an export's) metadata gives a model, checked; ValueError names the field."""
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError("class_names must be a non-empty list of non-empty strings")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class_names holds {', '.join(map(repr, twice[:5]))} more than once")
    _check_thresholds(meta.get("thresholds"), len(names))
    model = meta["model"]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not model["name"]:
        raise ValueError("model must be an object with a string 'name'")
    if not isinstance(model.get("kwargs", {}), dict):
        raise ValueError("model.kwargs must be an object")
    _check_preprocessing(meta["preprocessing"])
    _check_calibration(meta.get("calibration"), len(names))
    for key in ("threshold_info", "metrics", "config", "progress", "calibration_info", "initial_weights"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ValueError(f"{key} must be an object")
    epoch = meta.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"epoch must be a whole number >= 0, got {epoch!r}")


def _check_calibration(calibration: Any, n: int) -> None:
    """A per-class calibration: ``scale`` (> 0) and ``shift``, finite, one per class."""
    if calibration is None:
        return
    if not isinstance(calibration, dict) or not isinstance(calibration.get("method"), str):
        raise ValueError("calibration must be an object with a string 'method'")
    for key, low in (("scale", 0.0), ("shift", None)):
        values = calibration.get(key)
        if not isinstance(values, list) or len(values) != n:
            raise ValueError(f"calibration.{key} must be a list of {n} numbers, one per class")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"calibration.{key} must hold finite numbers")
        if low is not None and min(values) <= low:
            raise ValueError(f"calibration.{key} must be > {low} (a calibration keeps the ranking)")


def _check_thresholds(thresholds: Any, n: int) -> None:
    if thresholds is None:
        return
    if not isinstance(thresholds, list) or len(thresholds) != n:
        got = len(thresholds) if isinstance(thresholds, list) else type(thresholds).__name__
        raise ValueError(f"thresholds must be a list of {n} numbers (one per class), got {got}")
    for i, t in enumerate(thresholds):
        if not isinstance(t, int | float) or isinstance(t, bool) or not 0.0 <= t <= 1.0:
            raise ValueError(f"thresholds[{i}] must be a number in [0, 1], got {t!r}")


def _check_preprocessing(pre: Any) -> None:
    from mlic.data.transforms import RESIZE_MODES

    if not isinstance(pre, dict):
        raise ValueError("preprocessing must be an object")
    size = pre.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"preprocessing.image_size must be a whole number in [1, {MAX_IMAGE_SIZE}], got {size!r}")
    for key in ("mean", "std"):
        values = pre.get(key)
        if not isinstance(values, list) or len(values) != 3 or not all(_finite(v) for v in values):
            raise ValueError(f"preprocessing.{key} must be a list of 3 numbers, got {values!r}")
    if any(v <= 0 for v in pre["std"]):
        raise ValueError(f"preprocessing.std must be positive, got {pre['std']!r}")
    if pre.get("resize", "squash") not in RESIZE_MODES:
        raise ValueError(f"preprocessing.resize must be one of {', '.join(RESIZE_MODES)}, got {pre.get('resize')!r}")
    if not isinstance(pre.get("draft", False), bool):
        raise ValueError(f"preprocessing.draft must be true or false, got {pre.get('draft')!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model described by the checkpoint and load its weights strictly."""
    return _read_settled(path, lambda folder: _load_checkpoint(folder, device))


def _load_checkpoint(path: Path, device: str | torch.device) -> tuple[nn.Module, dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mlic.models import build_model

    meta = _read_meta(path)
    spec = meta["model"]
    model = build_model(spec["name"], num_classes=len(meta["class_names"]), **spec.get("kwargs", {}))
    try:
        state = load_file(path / WEIGHTS_FILE, device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: not a valid safetensors file ({exc})") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not match model {spec['name']!r}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    if meta.get("calibration") is not None:  # every inference path then gives calibrated probabilities
        from mlic.models.calibrate import fold_calibration

        fold_calibration(model, meta["calibration"]["scale"], meta["calibration"]["shift"])
    return model.to(device).eval(), meta


def load_train_state(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """The resume state of checkpoint folder ``path``: (train state, EMA weights or None).

    Read with ``torch.load(weights_only=True)`` and never with a fallback to full unpickling, so a
    crafted file cannot run code; torch older than 2.6 (whose weights-only loader had known
    bypasses) is refused.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = checkpoint_folder(path)
    read_meta(path)
    if _torch_version() < (2, 6):
        raise CheckpointError(
            f"{path}: refusing to read {STATE_FILE} with torch {torch.__version__}; torch >= 2.6 "
            "is needed to load pickle-based files safely"
        )
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path}: not a resumable checkpoint ({STATE_FILE} missing)")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError...: never retried unsafely
        raise CheckpointError(f"{state_file}: not a valid mlic training state ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "optimizer" not in state:
        raise CheckpointError(f"{state_file}: not a valid mlic training state")
    ema = None
    if (path / EMA_FILE).is_file():
        try:
            ema = load_file(path / EMA_FILE)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path / EMA_FILE}: not a valid safetensors file ({exc})") from None
    return state, ema


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load checkpoint ``path``'s weights into ``model`` strictly (for resuming); a damaged or foreign
    weights file is a CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = checkpoint_folder(path) / WEIGHTS_FILE
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({exc})") from None
    try:
        unwrap_model(model).load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        first = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{weights}: weights do not fit the model: {first}") from None


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
