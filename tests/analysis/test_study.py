"""The user-study kit (analysis.study): build, blindness, randomisation, tally, server security,
durability across SIGKILL, and a full rating session in headless Chromium (skipped without it)."""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from analysis.study import (
    build_study,
    export_answers,
    main,
    make_server,
    read_answers,
    tally,
    tally_markdown,
    wilson,
)
from analysis.study.build import read_results

REPO = Path(__file__).resolve().parents[2]
METHODS = ("dreambooth3d", "dreambooth_fusion", "latent_nerf")
SUBJECTS = {"toy0": "toy", "dog": "dog"}  # toy0: generated (photos under sweep/subjects), dog: a photo folder
ITEMS = 3 * 2 * 3  # method pairs x subjects x questions
try:
    import imageio.v2 as imageio
    import imageio_ffmpeg

    imageio_ffmpeg.get_ffmpeg_exe()
    HAVE_MP4 = True
except Exception:  # no ffmpeg: gifs and pngs only
    HAVE_MP4 = False


# ---- a synthetic sweep ----------------------------------------------------------------------------


def _frames(color: tuple[int, int, int], n: int = 6) -> list[Image.Image]:
    frames = []
    for i in range(n):
        im = Image.new("RGB", (32, 32), "white")
        im.paste(color, (4 + 3 * i, 8, 14 + 3 * i, 24))
        frames.append(im)
    return frames


def _trial(sweep: Path, method: str, subject: str, trial: str, status: str = "ok", mp4: bool = True,
           relative: bool = False, config_subject: str = "") -> None:
    row = {"trial_id": trial, "status": status, "subject_name": subject, "class_noun": SUBJECTS[subject],
           "prompt": f"a sks {SUBJECTS[subject]} on a beach", "config.subject": config_subject,
           "config.dreambooth.identifier": "sks", "sweep": "test", "error": "" if status == "ok" else "boom"}
    if status == "ok":
        out = sweep / "trials" / trial / "exports"
        out.mkdir(parents=True)
        color = {"dreambooth3d": (200, 30, 30), "dreambooth_fusion": (30, 200, 30), "latent_nerf": (30, 30, 200)}[method]
        frames = _frames(color)
        frames[0].save(out / "turntable_rgb.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
        frames[0].save(out / "final_views.png")
        uris = {"uri.turntable_rgb.gif": out / "turntable_rgb.gif", "uri.final_views.png": out / "final_views.png"}
        if mp4 and HAVE_MP4:
            imageio.mimwrite(out / "turntable_rgb.mp4", [f for f in frames for _ in range(2)], fps=8)
            uris["uri.turntable_rgb.mp4"] = out / "turntable_rgb.mp4"
        row.update({k: str(v.relative_to(sweep) if relative else v) for k, v in uris.items()})
    part = sweep / "results" / f"method={method}" / f"subject={subject}" / f"part-{trial}.parquet"
    part.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([row]), part)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """sweep/results: 3 methods x 2 subjects x 1 prompt; dreambooth3d/toy0 has a failed trial (no uri
    columns) and two ok ones; dreambooth_fusion has no mp4; latent_nerf/dog has relative uris."""
    sweep = tmp_path_factory.mktemp("sweep")
    for i, im in enumerate(_frames((220, 180, 0), 3)):
        (sweep / "subjects" / "toy0").mkdir(parents=True, exist_ok=True)
        im.save(sweep / "subjects" / "toy0" / f"{i:02d}.png")
    dog = sweep.parent / f"{sweep.name}-data" / "dog"
    dog.mkdir(parents=True)
    for i, im in enumerate(_frames((120, 80, 40), 2)):
        im.save(dog / f"{i:02d}.jpg")
    (dog / "notes.txt").write_text("not a photo")
    _trial(sweep, "dreambooth3d", "toy0", "0-dreambooth3d-toy0-failed", status="failed")
    _trial(sweep, "dreambooth3d", "toy0", "t-dreambooth3d-toy0-b")
    _trial(sweep, "dreambooth3d", "toy0", "t-dreambooth3d-toy0-a")
    for method in METHODS:
        for subject in SUBJECTS:
            if (method, subject) != ("dreambooth3d", "toy0"):
                _trial(sweep, method, subject, f"t-{method}-{subject}", mp4=method != "dreambooth_fusion",
                       relative=(method, subject) == ("latent_nerf", "dog"),
                       config_subject=str(dog) if subject == "dog" else "")
    return sweep / "results"


@pytest.fixture
def study(results, tmp_path) -> Path:
    return build_study(results, tmp_path / "study", raters=3, seed=0)


@pytest.fixture
def server(study):
    httpd = make_server(study, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# ---- helpers --------------------------------------------------------------------------------------


def request(base: str, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
    """(status, headers, body) of one raw request; redirects are not followed, paths are sent as is."""
    u = urlsplit(base)
    con = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    try:
        con.request(method, path, body=body, headers=headers or {})
        r = con.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        con.close()


def post_form(base: str, path: str, fields, headers: dict | None = None):
    return request(base, "POST", path, urlencode(fields),
                   {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})


def links(study: Path) -> list[str]:
    return [line.split()[1] for line in (study / "links.txt").read_text().splitlines()]


def form_of(page: bytes) -> tuple[str, str]:
    text = page.decode()
    return (re.search(r'name="item" value="([0-9a-f]{32})"', text).group(1),
            re.search(r'name="nonce" value="([0-9a-f]{32})"', text).group(1))


def answer(base: str, link: str, choice: str = "A") -> tuple[str, str] | None:
    """Answer the rater's current item; (task id, choice), or None when the rater is done."""
    status, _, page = request(base, "GET", link)
    assert status == 200
    if b'id="done"' in page:
        return None
    item, nonce = form_of(page)
    status, headers, _ = post_form(base, f"{link}/answer", {"item": item, "nonce": nonce, "choice": choice})
    assert status == 303 and headers["location"] == link
    return item, choice


def stored(study: Path, rater: int = 1) -> dict[str, str]:
    con = sqlite3.connect(study / "study.sqlite")
    try:
        return dict(con.execute("SELECT task_id, choice FROM answers WHERE rater_id = ?", (rater,)).fetchall())
    finally:
        con.close()


def assert_blind(text: str, where: str) -> None:
    low = text.lower()
    for m in METHODS + ("trials/", "exports", "sks"):
        assert m not in low, f"{m!r} leaks in {where}"


def start_server(study: Path) -> tuple[subprocess.Popen, str]:
    """`python -m analysis.study serve DIR port=0` in a subprocess; (process, base URL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "analysis.study", "serve", str(study), "port=0"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not m:
        proc.kill()
        raise AssertionError(f"server did not start: {line!r}")
    return proc, m.group(1)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()


# ---- build ----------------------------------------------------------------------------------------


def test_read_results_unions_schemas(results):
    df = read_results(results)
    assert len(df) == 8 and set(df["method"]) == set(METHODS)
    assert "uri.turntable_rgb.gif" in df  # although the first file (a failed trial) lacks it


def test_build_picks_trials_pairs_and_photos(study):
    man = json.loads((study / "manifest.json").read_text())
    picked = {(t["method"], t["subject"]): t for t in man["trials"]}
    assert picked["dreambooth3d", "toy0"]["trial_id"] == "t-dreambooth3d-toy0-a"  # first ok by trial_id
    assert picked["dreambooth3d", "toy0"]["candidates"] == ["t-dreambooth3d-toy0-a", "t-dreambooth3d-toy0-b"]
    assert len(man["items"]) == ITEMS and not man["warnings"]
    for it in man["items"]:
        assert "sks" not in it["question_text"] and it["prompt_text"].startswith("a ") and "beach" in it["prompt_text"]
        photos = {"toy0": 3, "dog": 2}[it["subject"]] if it["question"] == "subject_fidelity" else 0
        assert len(it["photos"]) == photos
        fusion = "dreambooth_fusion" in (it["method_1"], it["method_2"])
        assert it["kind_1"] == it["kind_2"] == ("video" if HAVE_MP4 and not fusion else "image")
    con = sqlite3.connect(study / "study.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 3 * ITEMS
    con.close()
    assert len(links(study)) == 3


def test_cli_build_and_errors(results, tmp_path, capsys):
    assert main(["build", str(results), f"out={tmp_path / 's'}", "raters=2", "methods=dreambooth3d,latent_nerf"]) == 0
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["methods"] == ["dreambooth3d", "latent_nerf"] and len(man["items"]) == 2 * 3
    assert main(["build", str(results), f"out={tmp_path / 's'}", "raters=2"]) == 1  # never overwrite a study
    assert main(["build", str(results), f"out={tmp_path / 't'}", "raters=2", "methods=dreambooth3d,nope"]) == 1
    assert main(["build", str(results), "raters=2"]) == 2
    assert main(["serve", str(tmp_path / "s"), "colour=red"]) == 2
    assert main(["frobnicate", "x"]) == 2


def test_left_right_and_order_are_randomised_and_reproducible(results, tmp_path):
    def assignment(out: Path, seed: int) -> list[tuple]:
        build_study(results, out, raters=8, seed=seed)
        con = sqlite3.connect(out / "study.sqlite")
        rows = con.execute("SELECT rater_id, position, item_id, first_left FROM tasks ORDER BY rater_id, position")
        return rows.fetchall()

    rows = assignment(tmp_path / "a", 0)
    share = sum(r[3] for r in rows) / len(rows)
    assert 0.3 < share < 0.7
    sides = {}
    for rater, _, item, first_left in rows:
        sides.setdefault(item, set()).add(first_left)
    assert sum(len(s) == 2 for s in sides.values()) >= ITEMS // 2  # most items seen both ways round
    orders = {tuple(r[2] for r in rows if r[0] == rater) for rater in range(1, 9)}
    assert len(orders) == 8
    assert assignment(tmp_path / "b", 0) == rows  # same seed, same assignment (tokens and names differ)
    assert assignment(tmp_path / "c", 1) != rows


# ---- blindness ------------------------------------------------------------------------------------


def test_no_method_name_reaches_the_browser(study, server):
    for name in os.listdir(study / "media"):
        assert re.fullmatch(r"[0-9a-f]{32}\.(mp4|gif|png|jpg)", name), name
    link = links(study)[0]
    seen_media = set()
    for step in range(ITEMS + 1):
        status, headers, page = request(server, "GET", link)
        text = page.decode()
        assert status == 200
        assert_blind(text + json.dumps(headers), f"page {step}")
        urls = re.findall(r'(?:src|href|action)="([^"]*)"', text)
        for url in urls:
            assert_blind(url, url)
            if url.startswith("/m/"):
                seen_media.add(url)
        if 'id="done"' in text:
            break
        item, nonce = form_of(page)
        status, headers, body = post_form(server, f"{link}/answer", {"item": item, "nonce": nonce, "choice": "B"})
        assert status == 303
        assert_blind(json.dumps(headers) + body.decode(), "redirect")
        status, _, body = post_form(server, f"{link}/answer", {"item": item, "nonce": nonce, "choice": "A"})
        assert status == 409
        assert_blind(body.decode(), "409 page")
    assert step == ITEMS, "the session must end on the thank-you page"
    for url in seen_media:
        status, headers, body = request(server, "GET", url)
        assert status == 200 and body and headers["content-type"].split("/")[0] in ("image", "video")
        assert_blind(json.dumps(headers), url)
        for m in METHODS:
            assert m.encode() not in body
    # the page's A is the left method as the database says
    got = read_answers(study)
    assert len(got) == ITEMS and (got["chosen_method"] == got["method_right"]).all()


# ---- tally ----------------------------------------------------------------------------------------


def _votes(question: str, item: int, a: str, b: str, chosen: list[str]) -> list[dict]:
    return [{"rater": f"r{i}", "item": item, "question": question, "method_left": a if i % 2 else b,
             "method_right": b if i % 2 else a, "chosen_method": c} for i, c in enumerate(chosen)]


def test_wilson_known_values():
    lo, hi = wilson(7, 10)
    assert lo == pytest.approx(0.39677, abs=1e-4) and hi == pytest.approx(0.89222, abs=1e-4)
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 10)[0] == 0.0
    assert all(v != v for v in wilson(0, 0))


def _wilson_closed_form(k: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), clipped to [0, 1]."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def test_wilson_equals_the_closed_form_whole_and_half_counts():
    for n in (1, 2, 3, 4, 7, 10, 25, 100, 1000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n} | ({n / 2 + 0.5, 0.5, n - 0.5} if n > 1 else set())):
            assert wilson(k, n) == pytest.approx(_wilson_closed_form(k, n), rel=1e-9, abs=1e-12), (k, n)
    # the ends of a score interval solve n (p_hat - p)^2 = z^2 p (1 - p): a half count too
    z = 1.959963984540054
    for k, n in ((2.5, 5), (7.5, 12), (0.5, 3)):
        roots = np.sort(np.roots([n + z * z, -(2 * k + z * z), k * k / n]).real)
        assert wilson(k, n) == pytest.approx(tuple(roots), rel=1e-9)


def test_tally_majority_vote_and_ties():
    x, y, z = "dreambooth3d", "latent_nerf", "dreambooth_fusion"
    rows = []
    for item, chosen in enumerate([[x, x, y], [x, x, x], [y, y, x], [x, y, x], [x, y]], start=1):
        rows += _votes("subject_fidelity", item, y, x, chosen)  # item 5: a 1-1 tie
    for item in range(6, 16):  # 7 of 10 items for z over y
        rows += _votes("prompt_fidelity", item, y, z, [z, z, y] if item < 13 else [y, y, z])
    df = pd.DataFrame(rows)
    t = tally(df).set_index("question")
    s = t.loc["subject_fidelity"]
    assert (s.method_a, s.method_b, s["items"], s.wins_a, s.wins_b, s.ties, s.n) == (x, y, 5, 3, 1, 1, 4)
    assert s.pct_a == pytest.approx(75.0)
    lo, hi = wilson(3, 4)
    assert (s.ci_low, s.ci_high) == pytest.approx((100 * lo, 100 * hi))
    p = t.loc["prompt_fidelity"]
    assert (p.method_a, p.wins_a, p.n) == (z, 7, 10)
    assert (p.pct_a, p.ci_low, p.ci_high) == pytest.approx((70.0, 39.677, 89.221), abs=2e-3)
    assert list(tally(df).question) == ["subject_fidelity", "prompt_fidelity"]  # the paper's order
    half = tally(df, ties="half").set_index("question").loc["subject_fidelity"]
    assert (half.n, half.pct_a) == (5, pytest.approx(70.0))
    ref = tally(df, reference=y).set_index("question").loc["subject_fidelity"]
    assert (ref.method_a, ref.pct_a) == (y, pytest.approx(25.0))
    md = tally_markdown(tally(df))
    assert "| subject fidelity | dreambooth3d | latent_nerf | 5 | 75.0% |" in md and "ties excluded" in md


def test_export_and_tally_end_to_end(study, server, capsys):
    con = sqlite3.connect(study / "study.sqlite")
    mapping = {t: (m1, m2, fl) for t, m1, m2, fl in con.execute(
        "SELECT t.id, i.method_1, i.method_2, t.first_left FROM tasks t JOIN items i ON i.id = t.item_id")}
    con.close()
    for link in links(study):  # every rater prefers dreambooth3d, else the alphabetically first
        for _ in range(ITEMS):
            _, _, page = request(server, "GET", link)
            item, nonce = form_of(page)
            m1, m2, first_left = mapping[item]
            left = m1 if first_left else m2
            choice = "A" if left == min(m1, m2) else "B"
            post_form(server, f"{link}/answer", {"item": item, "nonce": nonce, "choice": choice})
    path = export_answers(study)
    df = pd.read_parquet(path)
    assert len(df) == 3 * ITEMS
    assert list(df.columns[:9]) == ["rater", "item", "question", "subject", "prompt", "method_left", "method_right",
                                    "chosen_method", "timestamp"]
    assert str(df["timestamp"].dtype).startswith("datetime64") and df["prompt"].str.contains("sks").all()
    assert (df["chosen_method"] == df[["method_left", "method_right"]].min(axis=1)).all()
    t = tally(df, reference="dreambooth3d")
    assert len(t) == 9 and (t["pct_a"] == 100).all() and (t["items"] == 2).all() and (t["raters"] == 3).all()
    assert main(["export", str(study)]) == 0
    assert "| 3d consistency | dreambooth3d | dreambooth_fusion | 2 | 100.0% |" in (study / "tally.md").read_text()


# ---- server security ------------------------------------------------------------------------------


def test_media_paths_are_confined(study, server):
    secret = (study / "manifest.json").read_bytes()[:40]
    name = sorted(os.listdir(study / "media"))[0]
    outside = study.parent / "outside.png"
    outside.write_bytes(b"\x89PNG outside the media folder")
    link_name = "f" * 32 + ".png"
    os.symlink(outside, study / "media" / link_name)
    os.symlink(study / "manifest.json", study / "media" / ("e" * 32 + ".gif"))
    bad = ["/m/../manifest.json", "/m/%2e%2e/manifest.json", "/m/%2E%2E%2Fmanifest.json", "/m/..%2fstudy.sqlite",
           "/m/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/m//etc/passwd", "/m/%2Fetc%2Fpasswd", f"/m/{study}/manifest.json",
           "/m/..\\manifest.json", "/m/....//manifest.json", "/manifest.json", "/study.sqlite", "/media/" + name,
           f"/m/{link_name}", "/m/" + "e" * 32 + ".gif", "/m/" + name + "/../../manifest.json",
           "/m/" + name.upper(), "/m/" + name + "%00.png", "/m/", "/", "/r/", "/r/../m/" + name]
    for path in bad:
        status, _, body = request(server, "GET", path)
        assert status == 404, path
        assert secret not in body and b"outside the media" not in body and b"Traceback" not in body
    status, headers, body = request(server, "GET", f"/m/{name}")
    assert status == 200 and body == (study / "media" / name).read_bytes()
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, part = request(server, "GET", f"/m/{name}", headers={"Range": "bytes=2-9"})
    assert status == 206 and part == body[2:10] and headers["content-range"] == f"bytes 2-9/{len(body)}"


def test_answers_are_guarded(study, server):
    r1, r2 = links(study)[:2]
    assert request(server, "GET", "/r/" + "0" * 32)[0] == 404
    assert request(server, "GET", "/r/not-a-token")[0] == 404
    _, _, page = request(server, "GET", r1)
    item, nonce = form_of(page)
    _, _, page2 = request(server, "GET", r2)
    item2, nonce2 = form_of(page2)
    ok = {"item": item, "nonce": nonce, "choice": "A"}
    assert post_form(server, "/r/" + "0" * 32 + "/answer", ok)[0] == 404
    cases = [
        {"nonce": nonce, "choice": "A"}, {"item": item, "choice": "A"}, {"item": item, "nonce": nonce},
        {**ok, "choice": "C"}, {**ok, "choice": "a"}, {**ok, "choice": ""}, {**ok, "item": "12"},
        {**ok, "item": item.upper()}, {**ok, "item": "1" * 32}, {**ok, "nonce": "x"},
        {"item": item2, "nonce": nonce2, "choice": "A"},  # rater 2's item, posted by rater 1
        [("item", item), ("item", item2), ("nonce", nonce), ("choice", "A")],
    ]
    for fields in cases:
        status, _, body = post_form(server, f"{r1}/answer", fields)
        assert status == 400, fields
        assert b"Traceback" not in body
    raw = [(b"item=%ff%fe&nonce=1&choice=A", "application/x-www-form-urlencoded"),
           (b"\xff\xfe", "application/x-www-form-urlencoded"), (b"&&&=", "application/x-www-form-urlencoded"),
           (urlencode(ok).encode(), "text/plain"), (urlencode(ok).encode(), "multipart/form-data"),
           (b"x" * 5000, "application/x-www-form-urlencoded")]
    for body, ctype in raw:
        assert request(server, "POST", f"{r1}/answer", body, {"Content-Type": ctype})[0] == 400, body[:20]
    assert request(server, "POST", f"{r1}/answer", b"", {"Content-Type": "application/x-www-form-urlencoded"})[0] == 400
    assert post_form(server, f"{r1}/answer", {**ok, "nonce": nonce2})[0] == 403  # a nonce of another item
    assert post_form(server, f"{r1}/answer", ok, {"Origin": "http://evil.example"})[0] == 403
    assert stored(study) == {}
    assert post_form(server, f"{r1}/answer", ok)[0] == 303
    for choice in ("A", "B"):  # a replay, or a change of mind, leaves the first answer
        assert post_form(server, f"{r1}/answer", {**ok, "choice": choice})[0] == 409
    assert stored(study) == {item: "A"} and stored(study, 2) == {}
    assert request(server, "GET", f"{r1}/answer")[0] == 404  # no endpoint shows answers
    assert request(server, "POST", r1, urlencode(ok), {"Content-Type": "application/x-www-form-urlencoded"})[0] == 404


# ---- durability -----------------------------------------------------------------------------------


def test_sigkill_loses_no_answer(study):
    link = links(study)[0]
    proc, base = start_server(study)
    try:
        given = dict(answer(base, link, "AB"[i % 2]) for i in range(5))
    finally:
        kill(proc)
    assert stored(study) == given
    proc, base = start_server(study)
    try:
        _, _, page = request(base, "GET", link)
        assert f"Comparison 6 of {ITEMS}".encode() in page and form_of(page)[0] not in given
        given.update([answer(base, link, "B")])
    finally:
        kill(proc)
    assert stored(study) == given and len(read_answers(study)) == 6


# ---- the browser ----------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def test_browser_session_survives_a_killed_server(study, tmp_path, monkeypatch):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if missing:
        pytest.skip(f"browser test needs {', '.join(missing)}")
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must not reach the network
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(arg)
    link = links(study)[0]
    proc, base = start_server(study)
    driver = None
    clicks = {}
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
        driver.set_page_load_timeout(30)
        driver.get(base + link)
        for step in range(ITEMS + 1):
            assert_blind(driver.page_source, f"browser page {step}")
            if driver.find_elements(By.ID, "done"):
                break
            WebDriverWait(driver, 10).until(lambda d: d.execute_script(
                "return Array.from(document.images).every(i => i.complete)"))
            broken = driver.execute_script("return Array.from(document.images).filter(i => !i.naturalWidth).length")
            assert broken == 0, "an image did not load"
            WebDriverWait(driver, 10).until(lambda d: d.execute_script(  # videos decode (mp4 when ffmpeg made one)
                "return Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 2 || v.error)"))
            assert not driver.execute_script(
                "return Array.from(document.querySelectorAll('video')).some(v => v.error)"), "a video failed to load"
            item = driver.find_element(By.NAME, "item").get_attribute("value")
            choice = "A" if step % 3 else "B"
            button = driver.find_element(By.ID, f"choose-{choice.lower()}")
            button.click()
            # the next page is in: its item differs (items are distinct) or the study is done. Not
            # EC.staleness_of(button): ChromeDriver may answer a query on the replaced page's node with
            # "unhandled inspector error" (a WebDriverException) instead of a stale-element error
            WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
                lambda d, item=item: d.find_elements(By.ID, "done")
                or d.find_element(By.NAME, "item").get_attribute("value") != item)
            clicks[item] = choice
        assert driver.find_elements(By.ID, "done") and len(clicks) == ITEMS
    finally:
        if driver is not None:
            driver.quit()
        kill(proc)
    assert stored(study) == clicks
    proc, base = start_server(study)
    try:
        _, _, page = request(base, "GET", link)
        assert b'id="done"' in page
    finally:
        kill(proc)
    assert stored(study) == clicks
    got = read_answers(study)
    assert len(got) == ITEMS and set(got["rater"]) == {"r1"}
