"""Reader records + one decoder + one transform -> (image, target, mask) samples.

An unreadable image never stops a run: the sample comes back marked bad with its path and
reason, ``collate`` drops it from the batch, and the loop reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mlic.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from mlic.data.labels import encode
from mlic.data.records import DataError, Record


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) float32
    targets: torch.Tensor  # (B, C) float32 multi-hot
    masks: torch.Tensor  # (B, C) float32: 1 = label known, 0 = unknown (ignored by loss and metrics)
    indices: torch.Tensor  # (B,) positions in the dataset, to line predictions up with records
    errors: list[tuple[str, str]]  # (path, reason) of samples dropped from this batch

    def __len__(self) -> int:
        return self.images.shape[0]


class MultiLabelDataset(Dataset):
    def __init__(
        self,
        records: Sequence[Record],
        class_names: Sequence[str],
        transform: Callable,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        seed: int = 0,
    ) -> None:
        self.seed = seed
        self.records = list(records)
        self.class_names = list(class_names)
        self.transform = transform
        self.max_pixels = max_pixels
        index = {name: i for i, name in enumerate(self.class_names)}
        # Encoded once up front: (N, C) arrays are small and this keeps __getitem__ to decoding only.
        encoded = [encode(r, index) for r in self.records]
        c = len(self.class_names)
        self.targets = np.stack([t for t, _ in encoded]) if encoded else np.zeros((0, c), np.float32)
        self.masks = np.stack([m for _, m in encoded]) if encoded else np.zeros((0, c), np.float32)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        # The training sampler passes (epoch, index): the sample's augmentation is then seeded from
        # (seed, epoch, index) alone, identical whatever the workers, ranks or interruptions.
        epoch, i = key if isinstance(key, tuple) else (None, key)
        record = self.records[i]
        try:
            pixels = decode_image(record.path, max_pixels=self.max_pixels)
            if epoch is None:
                image = self.transform(pixels)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed(self.seed, epoch, i))
                    image = self.transform(pixels)
        except ImageDecodeError as exc:
            return {"index": i, "error": (str(record.path), exc.reason)}
        except OSError as exc:  # e.g. a file that vanished after the existence check
            return {"index": i, "error": (str(record.path), str(exc))}
        return {
            "index": i,
            "image": image,
            "target": torch.from_numpy(self.targets[i]),
            "mask": torch.from_numpy(self.masks[i]),
        }


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def collate(samples: list[dict]) -> Batch:
    good = [s for s in samples if "error" not in s]
    errors = [s["error"] for s in samples if "error" in s]
    if not good:
        return Batch(torch.empty(0), torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long), errors)
    return Batch(
        images=torch.stack([s["image"] for s in good]),
        targets=torch.stack([s["target"] for s in good]),
        masks=torch.stack([s["mask"] for s in good]),
        indices=torch.tensor([s["index"] for s in good], dtype=torch.long),
        errors=errors,
    )


def check_files_exist(records: Sequence[Record], limit: int = 10) -> None:
    """Fail before training starts if image files are missing, naming the label file and line."""
    missing = [r for r in records if not Path(r.path).is_file()]
    if missing:
        shown = "\n".join(f"  {r.source or '?'}: image file not found: {r.path}" for r in missing[:limit])
        more = f"\n  ... and {len(missing) - limit} more" if len(missing) > limit else ""
        raise DataError(f"{len(missing)} image file(s) not found:\n{shown}{more}")
