"""The rating server (standard library only: http.server + sqlite3).

    GET  /r/<token>          the rater's next unanswered comparison, or the thank-you page
    POST /r/<token>/answer   item=<task id>&nonce=<form nonce>&choice=A|B: stored and committed,
                             then 303 to /r/<token>. 400 malformed input (missing or repeated
                             fields, bad ids, another rater's item, choice not A/B), 403 wrong
                             nonce or cross-origin, 409 already answered (stored answer unchanged)
    GET  /m/<name>           a file of DIR/media by its opaque name (32 hex + known suffix);
                             anything else, symlinks included, is 404

Unknown tokens and paths get 404; no endpoint exposes answers. Exceptions are logged to stderr
and answered with a plain 500 (never a traceback page). Tokens are shortened in the log.

Load: a listen queue of 128 (the standard library's 5 reset bursts of votes), a fixed pool of
`workers` threads with up to `queued` accepted connections waiting for one; beyond that a
connection is answered 503 with Retry-After (its request read first, so the close is never a
reset). A connection idle for `idle_timeout` seconds is closed; a body that has not arrived
within `body_timeout` seconds gets 408. Cross-origin check: a POST's Origin must be `origin`
(the public origin raters use, e.g. https://study.example.org behind a proxy), or, when none is
configured, the origin of the Host header; "Origin: null" (sent under no-referrer) passes.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from . import pages, store
from .pool import BoundedPool

HEX = r"[0-9a-f]{32}"
PAGE_RE = re.compile(rf"/r/({HEX})/?")
ANSWER_RE = re.compile(rf"/r/({HEX})/answer")
MEDIA_RE = re.compile(rf"/m/({HEX}\.(?:mp4|gif|png|jpg|jpeg|webp))")
ID_RE = re.compile(HEX)
MEDIA_TYPES = {".mp4": "video/mp4", ".gif": "image/gif", ".png": "image/png", ".jpg": "image/jpeg",
               ".jpeg": "image/jpeg", ".webp": "image/webp"}
MAX_BODY = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def normalise_origin(origin: str) -> str:
    """'HTTPS://Study.Example.org:443/' -> 'https://study.example.org' (scheme://host[:port])."""
    u = urlsplit(origin.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"origin={origin!r}: expected scheme://host[:port], e.g. https://study.example.org")
    default = {"http": 80, "https": 443}[u.scheme]
    port = "" if u.port in (None, default) else f":{u.port}"
    return f"{u.scheme}://{u.hostname.lower()}{port}"


class StudyServer(BoundedPool, HTTPServer):
    request_queue_size = 128  # the listen backlog: a burst of votes waits here instead of being reset

    def __init__(self, address: tuple[str, int], study_dir: Path, quiet: bool = False, workers: int = 8,
                 queued: int = 64, idle_timeout: float = 10.0, body_timeout: float = 10.0, origin: str = ""):
        self.study_dir = Path(study_dir).resolve()
        self.db = self.study_dir / store.DB_NAME
        self.media = (self.study_dir / "media").resolve()
        self.quiet = quiet
        self.idle_timeout, self.body_timeout = idle_timeout, body_timeout
        self.origin = normalise_origin(origin) if origin else ""
        store.check(self.db)  # fail early on a broken or foreign database
        super().__init__(address, Handler)
        self.start_pool(workers, queued)


class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    server: StudyServer
    server_version = "study"
    sys_version = ""
    # HTTP/1.0 (the default): one request per connection, so no idle keep-alive holds a worker

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # seconds an idle connection may hold a worker
        super().setup()

    # ---- plumbing ---------------------------------------------------------------------------------

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            msg = re.sub(rf"/r/({HEX})", lambda m: f"/r/{m.group(1)[:6]}...", format % args)
            sys.stderr.write(f"{self.address_string()} [{self.log_date_time_string()}] {msg}\n")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Plain error pages (also for the base class's own errors): no path, no traceback."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        self._send(code, pages.message_page(f"{code} {phrase}", message or phrase), close=True)

    def _send(self, code: int, html: str, headers: dict | None = None, close: bool = False) -> None:
        body = html.encode("utf-8")
        self.send_response(code)
        for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _safely(self, fn) -> None:
        try:
            fn()
        except BadRequest as err:
            self.send_error(400, str(err))
        except TimeoutError:  # the body did not arrive in time
            self.close_connection = True
            try:
                self.send_error(408, "The request body did not arrive in time; nothing was recorded.")
            except OSError:
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            sys.stderr.write(traceback.format_exc())
            try:
                self.send_error(500, "Internal error; the answer may not have been recorded. Reload the page.")
            except OSError:
                pass

    def do_GET(self) -> None:
        self._safely(self._get)

    def do_POST(self) -> None:
        self._safely(self._post)

    # ---- routes -----------------------------------------------------------------------------------

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if m := MEDIA_RE.fullmatch(path):
            return self._media(m.group(1))
        if m := PAGE_RE.fullmatch(path):
            con = store.connect(self.server.db)
            try:
                rater = store.rater_id(con, m.group(1))
                if rater is None:
                    return self.send_error(404)
                done, total = store.progress(con, rater)
                task = store.next_task(con, rater)
            finally:
                con.close()
            return self._send(200, pages.thanks_page(total) if task is None else
                              pages.item_page(m.group(1), task, done, total))
        self.send_error(404)

    def _post(self) -> None:
        m = ANSWER_RE.fullmatch(urlsplit(self.path).path)
        if not m:
            return self.send_error(404)
        token = m.group(1)
        if not self._same_origin(self.headers.get("Origin")):
            return self.send_error(403, "Cross-origin form.")
        form = self._form()
        con = store.connect(self.server.db)
        try:
            rater = store.rater_id(con, token)
            if rater is None:
                return self.send_error(404)
            for key in ("item", "nonce"):
                if not ID_RE.fullmatch(form[key]):
                    raise BadRequest(f"Malformed field {key!r}.")
            if form["choice"] not in ("A", "B"):
                raise BadRequest("The choice must be A or B.")
            verdict = store.record_answer(con, rater, form["item"], form["nonce"], form["choice"])
        finally:
            con.close()
        back = f"/r/{token}"
        if verdict == "ok":  # committed: now (and only now) answer the request
            self.send_response(303)
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.send_header("Location", back)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif verdict == "duplicate":
            self._send(409, pages.message_page("Already answered", "This comparison was already answered; "
                                               "the first answer stands.", back))
        elif verdict == "nonce":
            self.send_error(403, "This form has expired; reload the page.")
        else:  # unknown task, or another rater's
            raise BadRequest("Unknown item.")

    def _same_origin(self, origin: str | None) -> bool:
        if not origin or origin == "null":
            return True
        try:
            got = normalise_origin(origin)
        except ValueError:
            return False
        if self.server.origin:
            return got == self.server.origin
        return urlsplit(origin).netloc == self.headers.get("Host", "")

    def _read_body(self, length: int) -> bytes:
        """`length` bytes within the server's body_timeout (a deadline for the whole body, not per
        read: a client trickling bytes cannot hold a worker); TimeoutError -> 408."""
        deadline = time.monotonic() + self.server.body_timeout
        chunks, got = [], 0
        while got < length:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.connection.settimeout(left)
            chunk = self.rfile.read1(length - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        self.connection.settimeout(self.timeout)
        return b"".join(chunks)

    def _form(self) -> dict[str, str]:
        """The urlencoded body's item, nonce and choice (each exactly once), else BadRequest."""
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise BadRequest("Expected a form (application/x-www-form-urlencoded).")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("Missing or invalid Content-Length.") from None
        if not 0 <= length <= MAX_BODY:
            raise BadRequest("Form too large.")
        body = self._read_body(length)
        if len(body) != length:
            raise BadRequest("Truncated form.")
        try:
            fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body),
                              max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("Malformed form.") from None
        form = {}
        for key in ("item", "nonce", "choice"):
            values = fields.get(key, [])
            if len(values) != 1:
                raise BadRequest(f"The form needs exactly one {key!r}.")
            form[key] = values[0]
        return form

    def _media(self, name: str) -> None:
        """DIR/media/<name>: a regular file, no symlink, inside the media folder; Range supported."""
        root = self.server.media
        path = root / name
        try:
            st = path.lstat()
        except OSError:
            return self.send_error(404)
        if not stat.S_ISREG(st.st_mode) or path.resolve().parent != root:
            return self.send_error(404)
        size = st.st_size
        start, end, code = 0, size - 1, 200
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if rng and (rng.group(1) or rng.group(2)):
            if rng.group(1):
                start = int(rng.group(1))
                end = min(int(rng.group(2)), size - 1) if rng.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(size - int(rng.group(2)), 0)
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code = 206
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:  # no symlink swapped in since
            f.seek(start)
            data = f.read(end - start + 1)
        self.send_response(code)
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Content-Type", MEDIA_TYPES[path.suffix])
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "private, max-age=3600")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(study_dir: Path, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False,
                **options) -> StudyServer:
    """A bound server (port 0: any free port, see `server.server_address`); call serve_forever().
    options: workers, queued, idle_timeout, body_timeout, origin (see StudyServer)."""
    return StudyServer((host, int(port)), study_dir, quiet=quiet, **options)


def serve(study_dir: Path, host: str = "127.0.0.1", port: int = 8000, origin: str = "") -> None:
    """Serve until interrupted; prints the base URL and the rater links first."""
    httpd = make_server(study_dir, host, port, origin=origin)
    h, p = httpd.server_address[:2]
    base = httpd.origin or f"http://{h}:{p}"
    print(f"serving {Path(study_dir)} on {base}/ (Ctrl-C to stop)", flush=True)
    links = Path(study_dir) / "links.txt"
    if links.is_file():
        for line in links.read_text().splitlines():
            label, _, path = line.partition(" ")
            print(f"  {label}: {base}{path}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
