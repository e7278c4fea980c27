"""report.html: one self-contained page (inline CSS, no scripts) that opens from disk.

Every piece of text from the data (prompts, errors, paths, config values) goes through `esc`;
images and videos are linked by paths relative to the page, so the report folder, the sweep's
trial folders and the page can move together.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from urllib.parse import quote, urlparse, unquote

import pandas as pd

from .tables import Grid

VIDEO_KEYS = ("turntable_rgb.mp4", "turntable_textureless.mp4")
LINK_KEYS = ("turntable_rgb.gif", "turntable_textureless.gif", "final_views.png", "pseudo_views.png", "mesh.glb",
             "nerf.safetensors")
EAGER_VIDEOS = 24
"""Up to this many videos preload their first frame; beyond, they load on play only."""

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.best { font-weight: bold; background: #eef7ee; }
.warning { background: #fff3cd; border: 2px solid #e0a800; padding: .8em 1em; margin: 1em 0; font-size: 15px; }
.note { color: #555; }
pre.error { white-space: pre-wrap; background: #fbeaea; padding: .5em; margin: .3em 0; font-size: 12px; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ddd; padding: 6px; width: 540px; font-size: 12px; }
.card video { width: 256px; height: 256px; background: #000; }
img.plot { max-width: 100%; border: 1px solid #eee; margin: 4px 0 16px; }
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def href(uri: str, out_dir: Path, bases: list[Path]) -> str:
    """A URL for `uri` (a path written by a trial) relative to the report folder.

    Relative paths are tried against the working directory, then each of `bases` (the sweep
    folder and its parent); other URL schemes (s3://, http://) pass through unchanged.
    """
    uri = str(uri)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        if not uri.startswith("file://"):
            return uri
        uri = unquote(urlparse(uri).path)
    p = Path(uri)
    if not p.is_absolute():
        candidates = [Path.cwd() / p] + [Path(b) / p for b in bases]
        p = next((c for c in candidates if c.exists()), candidates[0])
    try:
        rel = os.path.relpath(os.path.abspath(p), os.path.abspath(out_dir))
    except ValueError:  # another drive (Windows)
        return Path(os.path.abspath(p)).as_uri()
    return quote(Path(rel).as_posix(), safe="/=-_.~")


def grid_html(grid: Grid, table_id: str = "") -> str:
    parts = [f"<h3>{esc(grid.title)}</h3>"]
    if grid.note:
        parts.append(f'<p class="note">{esc(grid.note)}</p>')
    if not grid.rows:
        parts.append('<p class="note">(no rows)</p>')
        return "\n".join(parts)
    ident = f' id="{esc(table_id)}"' if table_id else ""
    parts.append(f"<table{ident}><tr>" + "".join(f"<th>{esc(c)}</th>" for c in grid.columns) + "</tr>")
    for i, row in enumerate(grid.rows):
        cells = "".join(f'<td class="best">{esc(c)}</td>' if (i, j) in grid.best else f"<td>{esc(c)}</td>"
                        for j, c in enumerate(row))
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def frame_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in frame.itertuples(index=False))
    return f"<table><tr>{head}</tr>{body}</table>"


def failed_html(failed: pd.DataFrame) -> str:
    if failed.empty:
        return '<p class="note">No failed trials.</p>'
    items = []
    for r in failed.itertuples(index=False):
        first = (str(r.error).strip().splitlines() or [""])[0]
        items.append(f"<li><b>{esc(r.method)}</b> / {esc(r.subject)} / &ldquo;{esc(r.prompt)}&rdquo; "
                     f"(trial <code>{esc(r.trial_id)}</code>, {esc(r.status)}): {esc(first)}"
                     f'<details><summary>error</summary><pre class="error">{esc(r.error)}</pre></details></li>')
    return "<ol>" + "\n".join(items) + "</ol>"


def gallery_html(ok: pd.DataFrame, out_dir: Path, bases: list[Path], axes: list[str], headline: str | None) -> str:
    """A card per ok trial with a turntable: the videos, links to the other exports, its settings."""
    cards, n_video = [], 0
    for _, r in ok.sort_values(["method", "subject", "prompt", "trial_id"]).iterrows():
        videos = [(k, r.get(f"uri.{k}")) for k in VIDEO_KEYS if isinstance(r.get(f"uri.{k}"), str) and r.get(f"uri.{k}")]
        if not videos:
            continue
        media = []
        for key, uri in videos:
            preload = "metadata" if n_video < EAGER_VIDEOS else "none"
            n_video += 1
            media.append(f'<video src="{esc(href(uri, out_dir, bases))}" controls loop muted playsinline '
                         f'preload="{preload}" title="{esc(key)}"></video>')
        links = [f'<a href="{esc(href(r[f"uri.{k}"], out_dir, bases))}">{esc(k)}</a>' for k in LINK_KEYS
                 if isinstance(r.get(f"uri.{k}"), str) and r.get(f"uri.{k}")]
        settings = ", ".join(f"{a.removeprefix('config.')}={r.get(a)}" for a in axes)
        score = ""
        if headline and pd.notna(r.get(headline)):
            score = f"<br>{esc(headline.removeprefix('metric.'))} = {esc(f'{float(r[headline]):.3f}')}"
        cards.append(f'<div class="card"><b>{esc(r["method"])}</b> / {esc(r["subject"])}<br>'
                     f'&ldquo;{esc(r["prompt"])}&rdquo;<br>{" ".join(media)}<br>'
                     f'{esc(settings)}{score}<br>{" | ".join(links)}<br>'
                     f'<span class="note">trial {esc(r["trial_id"])}</span></div>')
    if not cards:
        return '<p class="note">No turntable videos in the ok rows.</p>'
    return '<div class="gallery">' + "\n".join(cards) + "</div>"


def figure_html(caption: str, src: str) -> str:
    return (f'<figure><img class="plot" src="{esc(src)}" alt="{esc(caption)}"><figcaption>{esc(caption)}'
            "</figcaption></figure>")


def section_html(heading: str, grids: list[Grid], figures: list[tuple[str, str]], note: str = "") -> str:
    """An h2 section: a note, tables, then figures [(caption, relative href)]."""
    parts = [f"<h2>{esc(heading)}</h2>"] + ([f'<p class="note">{esc(note)}</p>'] if note else [])
    return "\n".join(parts + [grid_html(g) for g in grids] + [figure_html(c, s) for c, s in figures])


def page(*, title: str, meta: list[tuple[str, str]], warnings: list[str], notes: list[str], counts: pd.DataFrame,
         failed: pd.DataFrame, paper: list[Grid], best: list[Grid], breakdowns: list[Grid],
         plots: list[tuple[str, str]], gallery: str, files: list[tuple[str, str]],
         method_figures: list[tuple[str, str]] = (), sections: list[str] = ()) -> str:
    """The whole page. plots, method_figures and files: [(caption, relative href)]; sections: HTML
    from section_html (seed robustness, cost), placed before the turntables."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    out.append("<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in meta) + "</table>")
    for w in warnings:
        out.append(f'<div class="warning"><b>WARNING:</b> {esc(w)}</div>')
    out += [f'<p class="note">{esc(n)}</p>' for n in notes]
    out += ["<h2>Trials</h2>", frame_html(counts), "<h3>Failed trials</h3>", failed_html(failed)]
    out.append("<h2>Results per method</h2>")
    out += [grid_html(g) for g in paper] or ['<p class="note">No metric columns yet.</p>']
    out += [figure_html(c, src) for c, src in method_figures]
    out.append("<h2>Best configurations</h2>")
    out += [grid_html(g) for g in best] or ['<p class="note">No swept metric to rank.</p>']
    out.append("<h2>Breakdowns</h2>")
    out += [grid_html(g) for g in breakdowns]
    out.append("<h2>Metrics against swept settings</h2>")
    if plots:
        out += [f'<figure><img class="plot" src="{esc(src)}" alt="{esc(cap)}"><figcaption>{esc(cap)}</figcaption>'
                "</figure>" for cap, src in plots]
    else:
        out.append('<p class="note">No plots against swept settings: no numeric config column takes more than one value in the ok '
                   "trials, or there are no metrics yet.</p>")
    out += list(sections)
    out += ["<h2>Turntables</h2>", gallery, "<h2>Files</h2>",
            "<ul>" + "".join(f'<li><a href="{esc(h)}">{esc(c)}</a></li>' for c, h in files) + "</ul>",
            "</body></html>"]
    return "\n".join(out) + "\n"
