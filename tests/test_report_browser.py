"""The report in headless Chromium: opens offline without console errors, the per-label table and the PR curves
render, a header click sorts the table.

Needs Debian's ``chromium`` package and the Playwright Python package (never ``playwright install``: the
browser comes from apt). Skipped when either is missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlic.cli import main


@pytest.fixture(scope="module")
def report(tiny_shapes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_runs")
    args = [
        "train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--output-dir", str(out), "--name", "b", "--no-progress", "--device", "cpu",
        "--no-report",  # the report under test is built below, from new data
    ]  # fmt: skip
    assert main(args) == 0
    report = out / "b" / "browser.html"
    data = str(tiny_shapes["test"])
    assert main(["report", str(out / "b"), "--data", data, "--output", str(report), "--device", "cpu"]) == 0
    return report


def _column(page, header: str) -> list[str]:
    """The data-v sort keys of one column of the per-label table, top to bottom."""
    return page.evaluate(
        """(header) => {
            const table = document.getElementById("per-class-table");
            const col = Array.from(table.tHead.rows[0].cells).findIndex((th) => th.textContent.trim() === header);
            return Array.from(table.tBodies[0].rows).map((row) => row.cells[col].dataset.v);
        }""",
        header,
    )


def _visible_box(locator) -> dict:
    locator.scroll_into_view_if_needed()
    assert locator.is_visible()
    box = locator.bounding_box()
    assert box and box["width"] > 50 and box["height"] > 50, box
    return box


def test_report_renders_offline_and_sorts(report, tmp_path, chromium):
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    errors, fetched = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: fetched.append(req.url) if not req.url.startswith(("file:", "data:")) else None)
    page.goto(report.as_uri(), wait_until="load")

    table = page.locator("#per-class-table")
    _visible_box(table)
    assert table.locator("tbody tr").count() == 6
    pr = page.locator("img.pr").first
    _visible_box(pr)
    assert pr.evaluate("(img) => img.complete && img.naturalWidth > 300")
    # every embedded picture decodes (plots, thumbnails, Grad-CAM overlays)
    assert page.evaluate("Array.from(document.images).every((i) => i.complete && i.naturalWidth > 0)")
    assert page.locator("#gradcam figure").count() >= 2

    # a click on AP sorts ascending (n/a last), a second click descending
    header = table.locator("th", has_text="AP").first
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    values = [float(v) for v in _column(page, "AP") if v != ""]
    assert values == sorted(values)
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    values = [float(v) for v in _column(page, "AP") if v != ""]
    assert values == sorted(values, reverse=True)
    table.locator("th", has_text="label").click()  # text columns sort by name
    names = table.locator("tbody tr td:first-child").all_inner_texts()
    assert names == sorted(names)

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert errors == [], errors
    assert fetched == [], fetched
