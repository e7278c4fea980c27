"""The rater's HTML pages. No script, no method name: media by opaque name, sides labelled A and B."""

from __future__ import annotations

import json
from html import escape

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
.photos img { width: 128px; height: 128px; object-fit: contain; border: 1px solid #ccc; margin: 2px; }
.pair { display: flex; gap: 2rem; justify-content: center; margin: 1rem 0; }
.side { text-align: center; }
.side video, .side img { width: 320px; height: 320px; object-fit: contain; background: #fff; border: 1px solid #ccc; }
.label { font-size: 1.6rem; font-weight: bold; }
.buttons { display: flex; gap: 2rem; justify-content: center; }
button { font-size: 1.3rem; padding: 0.5rem 3rem; cursor: pointer; }
.progress { color: #666; }
"""


def page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _media(name: str, kind: str, label: str) -> str:
    src = escape(f"/m/{name}")
    if kind == "video":
        return (f'<video src="{src}" autoplay loop muted playsinline preload="auto" '
                f'aria-label="object {label}"></video>')
    return f'<img src="{src}" alt="object {label}">'


def item_page(token: str, task: dict, done: int, total: int) -> str:
    """One comparison: photos (subject question), A (left) and B (right), the question, two buttons."""
    if task["first_left"]:
        left, right = (task["media_1"], task["kind_1"]), (task["media_2"], task["kind_2"])
    else:
        left, right = (task["media_2"], task["kind_2"]), (task["media_1"], task["kind_1"])
    photos = json.loads(task["photos"] or "[]")
    parts = [f'<p class="progress">Comparison {done + 1} of {total}</p>',
             f'<h1 id="question">{escape(task["question_text"])}</h1>']
    if photos:
        imgs = "".join(f'<img src="{escape(f"/m/{p}")}" alt="subject photo {i + 1}">' for i, p in enumerate(photos))
        parts.append(f'<p>Photos of the subject:</p><div class="photos">{imgs}</div>')
    parts.append('<div class="pair">'
                 f'<div class="side"><div class="label">A</div>{_media(*left, "A")}</div>'
                 f'<div class="side"><div class="label">B</div>{_media(*right, "B")}</div></div>')
    parts.append(f'<form method="post" action="{escape(f"/r/{token}/answer")}">'
                 f'<input type="hidden" name="item" value="{escape(task["task"])}">'
                 f'<input type="hidden" name="nonce" value="{escape(task["nonce"])}">'
                 '<div class="buttons">'
                 '<button type="submit" name="choice" value="A" id="choose-a">A</button>'
                 '<button type="submit" name="choice" value="B" id="choose-b">B</button>'
                 "</div></form>")
    return page(f"Comparison {done + 1} of {total}", "\n".join(parts))


def thanks_page(total: int) -> str:
    return page("Thank you", f'<h1 id="done">Thank you!</h1><p>All {total} answers are recorded. '
                             "You can close this page.</p>")


def message_page(title: str, text: str, link: str | None = None) -> str:
    more = f'<p><a href="{escape(link)}">Continue</a></p>' if link else ""
    return page(title, f"<h1>{escape(title)}</h1><p>{escape(text)}</p>{more}")
