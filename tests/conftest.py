"""Shared fixtures: tiny datasets written to a temp folder, so tests never touch the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two threads: the suite must fit 2 CPU cores, and oversubscription only slows small models.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> dict[str, Path]:
    """A small demo-style dataset (PNG files + train/val/test CSVs), built once per test session."""
    from mlic.data.synthetic import make_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, num_train=64, num_val=24, num_test=24, image_size=32, seed=1)
