"""The web page in headless Chromium against a live ``mlic serve``: what it draws is what the API answers.

Needs Debian's ``chromium`` package and the Playwright Python package (never ``playwright install``: the
browser comes from apt). Skipped when either is missing, except under CI=true, where that is a failure.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import time

import pytest

if os.environ.get("CI") == "true":  # in CI a missing dependency is a failure, never a skip
    import httpx
else:
    httpx = pytest.importorskip("httpx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """A live ``python -m mlic serve`` on a free loopback port; yields its base URL."""
    best = tiny_checkpoint
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve_log") / "serve.log"
    log = log_path.open("w")
    cmd = [sys.executable, "-m", "mlic", "serve", str(best), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--device", "cpu", "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlic serve did not answer /health within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _wait_until(page, expression: str, timeout_s: float = 30) -> None:
    """Poll a JavaScript expression; page.wait_for_function would need 'unsafe-eval', which the page's CSP forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for: {expression}"
        time.sleep(0.05)


def _rendered(page) -> list[dict]:
    """Each finished card as {filename, labels, rows: {class: (probability, threshold, predicted)}}."""
    return page.eval_on_selector_all(
        '#results .card[data-state="done"]',
        """cards => cards.map(card => ({
            filename: card.dataset.filename,
            labels: JSON.parse(card.dataset.labels),
            chips: [...card.querySelectorAll('.chip[data-label]')].map(c => c.textContent),
            rows: Object.fromEntries([...card.querySelectorAll('.row')].map(r => [r.dataset.class,
                [Number(r.dataset.probability), Number(r.dataset.threshold), r.dataset.predicted === 'true',
                 r.querySelector('.value').textContent]])),
            previewWidth: card.querySelector('img.preview').naturalWidth,
        }))""",
    )


def _assert_card_matches(card: dict, answer: dict, thresholds: dict) -> None:
    assert card["labels"] == answer["labels"] and card["chips"] == answer["labels"]
    assert card["rows"].keys() == answer["probabilities"].keys()
    for name, p in answer["probabilities"].items():
        prob, threshold, predicted, text = card["rows"][name]
        assert prob == p and threshold == thresholds[name]  # the page keeps the API's floats exactly
        assert predicted == (name in answer["labels"]) and text == f"{p:.3f}"
    assert card["previewWidth"] > 0


def test_page_renders_the_apis_answer(server, tiny_shapes, tmp_path, chromium):
    images = sorted((tiny_shapes["test"].parent / "images" / "test").glob("*.png"))[:2]
    answers = {}
    for path in images:
        r = httpx.post(f"{server}/predict", files={"files": (path.name, path.read_bytes(), "image/png")}, timeout=30)
        assert r.status_code == 200
        answers[path.name] = r.json()["results"][0]
        thresholds = r.json()["thresholds"]

    problems, foreign = [], []
    page = chromium.new_page(viewport={"width": 1100, "height": 800})
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith((server, "blob:", "data:")) else foreign.append(r.url))
    page.goto(server)
    _wait_until(page, "document.getElementById('model-info').textContent.includes('classes')")

    # 1. the file chooser
    page.set_input_files("#file-input", str(images[0]))
    page.wait_for_selector('#results .card[data-state="done"]', timeout=30_000)
    # 2. drag and drop: a drop event carrying the second image, as a browser builds it from a desktop drag
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: 'image/png'}));
            const zone = document.getElementById('drop-zone');
            const drop = new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true});
            zone.dispatchEvent(drop);
        }""",
        [images[1].name, base64.b64encode(images[1].read_bytes()).decode()],
    )
    _wait_until(page, "document.querySelectorAll('.card[data-state=\"done\"]').length === 2")
    _wait_until(page, "[...document.querySelectorAll('img.preview')].every(i => i.naturalWidth > 0)")
    cards = _rendered(page)
    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)

    assert sorted(c["filename"] for c in cards) == sorted(answers)
    for card in cards:
        _assert_card_matches(card, answers[card["filename"]], thresholds)
    assert problems == [], problems
    assert foreign == [], f"the page fetched from outside the server: {foreign}"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(json.dumps({"screenshot": str(shot), "bytes": shot.stat().st_size}))
