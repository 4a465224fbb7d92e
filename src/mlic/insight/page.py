"""The HTML of ``mlic report``: page shell, sections, tables and galleries. Strings in, escaped HTML out.

The page needs nothing outside itself: styles and the table-sorting script are inline, pictures are data
URIs, and its Content-Security-Policy forbids every fetch, so a stray external reference would show up as
a console error (the browser test checks there is none) instead of a silent network request.
"""

from __future__ import annotations

import html
import numbers
from collections.abc import Sequence
from typing import Any

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 16px 48px; color: #222; }
h1 { margin: 18px 0 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
nav a { margin-right: 12px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; }
td[data-v], table.sortable th:not(:first-child) { text-align: right; }
table.sortable th { cursor: pointer; user-select: none; background: #f4f4f4; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
img.plot { display: block; max-width: 100%; margin: 8px 0; } img.pr { border: 1px solid #eee; }
img.freq { max-width: min(100%, 560px); }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; } .row > div { max-width: 100%; }
.row h3 { margin-top: 8px; }
.missing { color: #8a5a00; background: #fff7e6; padding: 6px 10px; border-left: 3px solid #f0b400; }
.gallery-class { margin: 10px 0 18px; } .kinds { display: flex; flex-wrap: wrap; gap: 18px; }
.kind h4 { margin: 4px 0; font-weight: 600; } .thumbs { display: flex; gap: 6px; }
figure { margin: 0; width: 112px; font-size: 11px; line-height: 1.25; overflow-wrap: anywhere; }
figure img { width: 96px; height: 96px; object-fit: contain; background: #f4f4f4; display: block; }
.thumbs img { image-rendering: pixelated; }
.cam-row { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0; }
.cam-row figure { width: 136px; } .cam-row figure img { width: 128px; height: 128px; }
pre { background: #f7f7f7; padding: 10px; overflow: auto; max-height: 480px; }
"""

# Click a header: sort by that column (numbers by their data-v value, n/a last), again to reverse.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === undefined || y === undefined) {
          var order = a.cells[col].textContent.localeCompare(b.cells[col].textContent);
          return ascending ? order : -order;
        }
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        return ascending ? x - y : y - x;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


REPORT_NAV = (("summary", "summary"), ("data", "data"), ("training", "training"), ("per-class", "per label"),
              ("calibration", "calibration"), ("curves", "PR curves"), ("errors", "errors"),
              ("galleries", "galleries"), ("gradcam", "Grad-CAM"))  # fmt: skip


def page_html(title: str, sections: Sequence[str], nav: Sequence[tuple[str, str]] = REPORT_NAV) -> str:
    """The whole document around the already-rendered ``sections``; ``nav``: (section id, link text)."""
    links = " ".join(f'<a href="#{key}">{html.escape(label)}</a>' for key, label in nav)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<h1>{html.escape(title)}</h1><nav>{links}</nav>\n" + "\n".join(sections) + f"\n<script>{_SCRIPT}</script>"
        "</body></html>\n"
    )


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{html.escape(key)}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def table_html(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, table_id: str | None = None, sortable: bool = False
) -> str:
    """A table; numbers are right-aligned with a ``data-v`` sort key, None shows as n/a and sorts last."""
    attrs = (f' id="{html.escape(table_id)}"' if table_id else "") + (' class="sortable"' if sortable else "")
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>\n" for row in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return '<td data-v="">n/a</td>'
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numbers.Real: numpy scalars too
        return f"<td>{html.escape(str(value))}</td>"
    if isinstance(value, numbers.Integral):
        return f'<td data-v="{int(value)}">{int(value)}</td>'
    return f'<td data-v="{float(value)!r}">{float(value):.4f}</td>'


_KIND_TITLES = {
    "correct": "most confident correct",
    "fp": "worst false positives (predicted, not true)",
    "fn": "worst false negatives (true, missed)",
}


def gallery_html(classes: Sequence[dict[str, Any]], note: str = "") -> str:
    """Per label, thumbnails of each kind (``correct``, ``fp``, ``fn``) with probability, true and predicted labels.

    ``classes``: dicts with ``name`` and ``kinds`` mapping a kind to items with ``src`` (data URI or None),
    ``path``, ``prob``, ``true`` and ``pred`` (label lists).
    """
    if not classes:
        return '<p class="missing">No images to show.</p>'
    parts = [f"<p>{html.escape(note)}</p>" if note else ""]
    for entry in classes:
        kinds = []
        for kind, title in _KIND_TITLES.items():
            items = entry["kinds"].get(kind, [])
            figures = "".join(_figure(item, entry["name"]) for item in items) or "<p>none</p>"
            kinds.append(f'<div class="kind"><h4>{html.escape(title)}</h4><div class="thumbs">{figures}</div></div>')
        parts.append(
            f'<div class="gallery-class"><h3>{html.escape(str(entry["name"]))}</h3>'
            f'<div class="kinds">{"".join(kinds)}</div></div>'
        )
    return "\n".join(parts)


def _figure(item: dict[str, Any], label: str) -> str:
    title = html.escape(str(item["path"]))
    picture = f'<img src="{item["src"]}" alt="{title}">' if item["src"] else "<p>(image not found)</p>"
    true = html.escape(", ".join(item["true"]) or "-")
    pred = html.escape(", ".join(item["pred"]) or "-")
    return (
        f'<figure title="{title}">{picture}<figcaption>p({html.escape(str(label))}) = {item["prob"]:.2f}<br>'
        f"true: {true}<br>pred: {pred}</figcaption></figure>"
    )
