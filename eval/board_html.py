"""The leaderboard as one self-contained HTML page: inline CSS, figures embedded as base64 data URIs.

The page can be mailed or attached to an issue as it is. For each group it shows the ranked table and the figures of
its top entries (a record's `figures`, relative to its artifacts folder), each figure once per page; a figure that
cannot be found or embedded is named in a note instead. After loading, a small script sets `data-figures-loaded`
and `data-figures-total` on <body> (images that decoded, images on the page), which the headless-browser test reads.
"""
from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Sequence

from common.atomic import atomic_write_text
from eval.baselines import is_baseline
from eval.board import CAPTION, COLUMNS, NO_BASELINE, NUMERIC, RANKING, Group, cells
from eval.records import artifacts_dir

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml", ".webp": "image/webp"}

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #1d2125; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin: 2em 0 0.4em; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
table { border-collapse: collapse; width: 100%; }
caption { caption-side: bottom; text-align: left; color: #57606a; font-size: 0.9em; padding-top: 0.4em; }
th, td { padding: 0.3em 0.6em; border-bottom: 1px solid #eaeef2; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.settings { white-space: normal; max-width: 22em; color: #57606a; }
tr.baseline td { font-style: italic; background: #f3f8ff; }
.note { color: #9a6700; background: #fff8c5; padding: 0.3em 0.6em; border-radius: 4px; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; margin-top: 1em; }
figure { margin: 0; max-width: 440px; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 0.85em; color: #57606a; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  document.body.dataset.figuresTotal = images.length;
  document.body.dataset.figuresLoaded = images.filter(function (img) {
    return img.complete && img.naturalWidth > 0;
  }).length;
});
"""


def write_html(path: str | os.PathLike, board: Sequence[Group], problems: Sequence[tuple[Path, str]],
               runs_dir: str | os.PathLike = "runs", top_figures: int = 3) -> Path:
    """Write the page for `board` atomically to `path`; returns the path."""
    return atomic_write_text(path, render_html(board, problems, runs_dir=runs_dir, top_figures=top_figures))


def render_html(board: Sequence[Group], problems: Sequence[tuple[Path, str]], runs_dir: str | os.PathLike = "runs",
                top_figures: int = 3) -> str:
    """The page as a string; figures of the first `top_figures` entries of each group are embedded."""
    body = ["<h1>Text-dominance flips</h1>",
            f"<p>{html.escape(RANKING)}</p>"]
    shown: set[tuple[str, str]] = set()  # (record id, figure): a baseline's figure is embedded once per page
    for group in board:
        body += _group_html(group, Path(runs_dir), top_figures, shown)
    if problems:
        body.append(f"<h2>Skipped {len(problems)} record file(s)</h2><ul>")
        body += [f"<li><code>{_e(str(path))}</code>: {_e(reason)}</li>" for path, reason in problems]
        body.append("</ul>")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>modalflip leaderboard</title>",
        f"<style>{_STYLE}</style>",
        "</head><body>",
        *body,
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
        "",
    ])


def _group_html(group: Group, runs_dir: Path, top_figures: int, shown: set[tuple[str, str]]) -> list[str]:
    header = "".join(f'<th class="num">{_e(text)}</th>' if name in NUMERIC else f"<th>{_e(text)}</th>"
                     for name, text in zip(COLUMNS, group.columns()))
    out = [f"<section><h2>{_e(group.title())}</h2>", f"<table><caption>{_e(CAPTION)}</caption>",
           f"<thead><tr>{header}</tr></thead><tbody>"]
    for position, record in enumerate(group.entries, start=1):
        row = cells(record, position)
        tds = []
        for column, text in zip(COLUMNS, row):
            if column == "settings":
                full = json.dumps(record.settings, ensure_ascii=False, sort_keys=True)
                tds.append(f'<td class="settings" title="{_e(full)}">{_e(text)}</td>')
            else:
                tds.append(f'<td class="num">{_e(text)}</td>' if column in NUMERIC else f"<td>{_e(text)}</td>")
        css = ' class="baseline"' if is_baseline(record) else ""
        out.append(f'<tr{css} data-record-id="{_e(record.record_id)}">{"".join(tds)}</tr>')
    out.append("</tbody></table>")
    if not group.has_baseline:
        out.append(f'<p class="note">{_e(NO_BASELINE)}</p>')
    figures, notes = [], []
    for position, record in enumerate(group.entries[:top_figures], start=1):
        for name in record.figures:
            if (record.record_id, name) in shown:
                continue
            shown.add((record.record_id, name))
            label = f"#{position} {record.method} ({record.short_id}): {name}"
            uri, problem = _data_uri(artifacts_dir(record, runs_dir) / name)
            if uri:
                figures.append(f'<figure><img src="{uri}" alt="{_e(label)}"><figcaption>{_e(label)}</figcaption>'
                               "</figure>")
            else:
                notes.append(f'<p class="note">Figure left out: {_e(label)}: {_e(problem)}</p>')
    if figures:
        out += ['<div class="figures">', *figures, "</div>"]
    out += notes
    out.append("</section>")
    return out


def _data_uri(path: Path) -> tuple[str | None, str | None]:
    """(data URI, None) for an image file, or (None, why it cannot be embedded)."""
    mime = IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        return None, f"{path.suffix or 'no suffix'} is not an image type a page can show"
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, f"cannot read {path} ({err.strerror or err})"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", None


def _e(text: str) -> str:
    return html.escape(text, quote=True)
