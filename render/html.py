"""An HTML page of shard samples: thumbnails that link to one page per sample (its picture, metadata, keypoints
table and fits history), all static files beside the page.

For ``out/page.html`` the files go to ``out/page_files/``: ``<slug>.png`` (the picture), ``<slug>.json`` (the
sample's json member, verbatim), ``<slug>.html`` (the detail page). The slug is the key with ``/`` written as ``~``,
a character keys never hold (`shards.schema.KEY_PATTERN`), so slugs are unique. Links are relative: the folder
can be moved or served as is.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from core.joints import JOINT_NAMES
from fits.lookup import best_in_history
from shards.sample import StoredSample

THUMB_PX = 240
_STYLE = """body{font-family:sans-serif;margin:1.2em;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:10px}.cell{width:%dpx;font-size:12px;word-break:break-all}
.cell img{width:100%%;border:1px solid #ccc}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}
p.absent{color:#888}pre{background:#f6f6f6;padding:8px;font-size:12px;overflow-x:auto}""" % THUMB_PX


@dataclass
class PageEntry:
    """One sample on the page: its picture and, when a fits table was given, its fits history (table rows as
    dicts, oldest first; None: no table given)."""

    sample: StoredSample
    picture: Image.Image
    history: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)


def slug(key: str) -> str:
    """The file-name stem of a key: ``coco/0001_a2`` -> ``coco~0001_a2``."""
    return key.replace("/", "~")


def files_dir(out: Path) -> Path:
    """The folder beside ``out`` that holds its pictures and detail pages: ``<stem>_files``."""
    return out.with_name(out.stem + "_files")


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n").encode("utf-8")


def keypoints_table(sample: StoredSample) -> str:
    """The annotated joints as an HTML table (name, image x/y px, stored-crop x/y px, confidence), then the names
    of the joints that are not annotated."""
    rows = ["<tr><th>joint</th><th>image x</th><th>image y</th><th>crop x</th><th>crop y</th><th>conf</th></tr>"]
    absent = []
    for name, image_kp, crop_kp in zip(JOINT_NAMES, sample.keypoints_2d, sample.keypoints_crop):
        if image_kp[2] <= 0:
            absent.append(name)
            continue
        cells = "".join(f"<td>{v:.1f}</td>" for v in (*image_kp[:2], *crop_kp[:2]))
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}<td>{image_kp[2]:.2f}</td></tr>")
    note = (f"<p class='absent'>Not annotated ({len(absent)}): {html.escape(', '.join(absent))}</p>"
            if absent else "")
    return f"<p>{len(JOINT_NAMES) - len(absent)} of {len(JOINT_NAMES)} joints annotated.</p><table>" \
        + "".join(rows) + "</table>" + note


HISTORY_COLUMNS = ("time", "loss", "valid", "source", "run_id", "epoch", "step", "iterations", "body_model_id",
                   "fit_config_hash", "cam_t", "frame")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(f"{v:.3f}" for v in value)
    return str(value)


def history_table(history: Sequence[dict[str, Any]]) -> str:
    """A key's fits (table rows, oldest first) as an HTML table; each body model's best fit (the one the table
    serves, `fits.lookup.best_in_history`; per body model and frame) is marked, with its model (and frame) when the
    history holds several."""
    if not history:
        return "<p>No fit of this sample in the table.</p>"
    best = best_in_history(history)
    several = len(best) > 1
    head = "<tr><th></th>" + "".join(f"<th>{c}</th>" for c in HISTORY_COLUMNS) + "</tr>"
    rows = [f"<tr><td>{_best_label(best.get(i), several)}</td>"
            + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in HISTORY_COLUMNS) + "</tr>"
            for i, r in enumerate(history)]
    return "<table>" + head + "".join(rows) + "</table>"


def _best_label(model: str | None, several: bool) -> str:
    if model is None:
        return ""
    return f"best of {html.escape(model)}" if several else "best"


def write_page(out: Path, entries: Sequence[PageEntry], title: str, subtitle: str = "") -> list[Path]:
    """Write the index page ``out`` and, in `files_dir` (out), each sample's picture, json and detail page.

    Returns the paths written (the index last).
    """
    out = Path(out)
    folder = files_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    written, cells = [], []
    for entry in entries:
        s = entry.sample
        stem = slug(s.key)
        _write(folder / f"{stem}.png", _png(entry.picture))
        _write(folder / f"{stem}.json", (json.dumps(s.meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        fits = ("" if entry.history is None else
                f"<h2>Fits history ({len(entry.history)} fit(s), oldest first)</h2>{history_table(entry.history)}")
        notes = "".join(f"<p><b>{html.escape(n)}</b></p>" for n in entry.notes)
        detail = (f"<p><a href='../{html.escape(out.name)}'>&larr; all samples</a></p>"
                  f"<h1>{html.escape(s.key)}</h1>{notes}<img src='{stem}.png' alt='{html.escape(s.key)}'>"
                  f"<h2>Keypoints</h2>{keypoints_table(s)}{fits}"
                  f"<h2>Metadata (<a href='{stem}.json'>{stem}.json</a>)</h2>"
                  f"<pre>{html.escape(json.dumps(s.meta, indent=2, sort_keys=True))}</pre>")
        _write(folder / f"{stem}.html", _page(s.key, detail))
        written += [folder / f"{stem}.png", folder / f"{stem}.json", folder / f"{stem}.html"]
        href = f"{folder.name}/{stem}"
        cells.append(f"<div class='cell'><a href='{href}.html'><img src='{href}.png' alt='{html.escape(s.key)}'></a>"
                     f"<br><a href='{href}.html'>{html.escape(s.key)}</a> · <a href='{href}.json'>json</a></div>")
    body = (f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"
            f"<div class='grid'>{''.join(cells)}</div>")
    _write(out, _page(title, body))
    written.append(out)
    return written
