"""Shared fixtures: tiny datasets written to a temp folder, so tests never touch the network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# Two threads: the suite must fit 2 CPU cores, and oversubscription only slows small models.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory) -> Path:
    """Decoded-image caches of the whole session go to a temp folder, never to ~/.cache (subprocesses too)."""
    root = tmp_path_factory.mktemp("mlic-cache")
    os.environ["MLIC_CACHE_DIR"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> dict[str, Path]:
    """A small demo-style dataset (PNG files + train/val/test CSVs), built once per test session."""
    from mlic.data.builders.synthetic import make_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, num_train=64, num_val=24, num_test=24, image_size=32, seed=1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_shapes, tmp_path_factory) -> Path:
    """A 1-epoch seed_cnn checkpoint at 32 px on ``tiny_shapes``, trained once per test session."""
    from mlic.cli import main

    out = tmp_path_factory.mktemp("tiny_checkpoint")
    args = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--image-size", "32", "--epochs", "1",
            "--batch-size", "16", "--output-dir", str(out), "--name", "s", "--no-progress", "--no-report",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return out / "s" / "checkpoints" / "best"


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this network is closed: no update or metrics calls
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium():
    """Headless Debian Chromium driven by Playwright (never a downloaded browser).

    Skipped when Playwright or the chromium package is missing, except under CI=true, where that fails.
    """
    if os.environ.get("CI") == "true":
        from playwright.sync_api import sync_playwright

        assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: .ci/run must `apt-get install -y chromium`"
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
        if not Path(CHROMIUM).is_file():
            pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
