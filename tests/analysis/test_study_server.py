"""The study server under load and misuse, on 127.0.0.1: bursts of votes (0 lost, 0 resets), a
bounded pool (503 with Retry-After when saturated, never a reset), 408 on slow bodies, and the
Origin check against a configured public origin (a proxy that rewrites Host)."""

from __future__ import annotations

import http.client
import socket
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from test_study import form_of, links, post_form, request, results  # noqa: F401

from analysis.study import build_study, make_server


@pytest.fixture(scope="module")
def big_study(results, tmp_path_factory) -> Path:  # noqa: F811
    return build_study(results, tmp_path_factory.mktemp("big") / "study", raters=100, seed=0)


def _start(study: Path, **options):
    httpd = make_server(study, "127.0.0.1", 0, quiet=True, **options)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def _stop(httpd) -> None:
    httpd.shutdown()
    httpd.server_close()


def _answers(study: Path) -> int:
    con = sqlite3.connect(study / "study.sqlite")
    try:
        return con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    finally:
        con.close()


def _burst(base: str, forms: list[tuple[str, str, str]]) -> dict:
    """POST one vote per (link, item, nonce) at the same instant from as many threads; a 503 is
    retried after its Retry-After. Counts the statuses, 503s and connection errors."""
    port = int(base.rsplit(":", 1)[1])
    barrier = threading.Barrier(len(forms))
    results: dict[str, list] = {"status": [], "busy": [], "errors": []}
    lock = threading.Lock()

    def vote(link: str, item: str, nonce: str) -> None:
        body = urlencode({"item": item, "nonce": nonce, "choice": "A"})
        barrier.wait()
        busy = 0
        for _ in range(30):
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                con.request("POST", f"{link}/answer", body, {"Content-Type": "application/x-www-form-urlencoded"})
                r = con.getresponse()
                r.read()
            except OSError as err:  # ConnectionResetError, BrokenPipeError, timeouts
                with lock:
                    results["errors"].append(repr(err))
                return
            finally:
                con.close()
            if r.status != 503:
                break
            assert r.getheader("Retry-After") == "1"
            busy += 1
            time.sleep(0.2)
        with lock:
            results["status"].append(r.status)
            results["busy"].append(busy)

    threads = [threading.Thread(target=vote, args=f) for f in forms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


@pytest.mark.parametrize("size", [20, 40, 100])
def test_bursts_of_votes_lose_nothing_and_reset_nothing(big_study, size):
    httpd, base = _start(big_study)
    try:
        before = _answers(big_study)
        forms = []
        for link in links(big_study)[:size]:  # each rater's current item: one vote per rater
            _, _, page = request(base, "GET", link)
            forms.append((link, *form_of(page)))
        got = _burst(base, forms)
        print(f"\nburst of {size}: {got['status'].count(303)} stored, {len(got['errors'])} connection errors, "
              f"{sum(got['busy'])} 503 answers (retried), rejected by the pool {httpd.rejected}")
        assert got["errors"] == [] and got["status"] == [303] * size
        assert _answers(big_study) - before == size
    finally:
        _stop(httpd)


def _idle(port: int, n: int) -> list[socket.socket]:
    conns = []
    for _ in range(n):
        conns.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.005)  # accepted in this order
    return conns


def test_a_saturated_pool_answers_503_not_a_reset_and_threads_stay_bounded(big_study):
    httpd, base = _start(big_study, workers=2, queued=2, idle_timeout=5.0)
    port = httpd.server_address[1]
    try:
        threads_before = threading.active_count()
        link = links(big_study)[-1]
        _, _, page = request(base, "GET", link)
        item, nonce = form_of(page)
        held = _idle(port, 150)  # idle connections: 2 held by workers, 2 waiting, the rest refused politely
        assert threading.active_count() - threads_before <= 2  # the pool, not a thread per connection
        status, headers, body = post_form(base, f"{link}/answer", {"item": item, "nonce": nonce, "choice": "B"})
        assert status == 503 and headers["retry-after"] == "1" and b"busy" in body
        for c in held:  # the refused ones got a 503 too, and a clean close (EOF, not a reset)
            c.settimeout(5)
        replies = []
        for c in held[4:]:
            data = b""
            while chunk := c.recv(4096):
                data += chunk
            replies.append(data.split(b"\r\n", 1)[0])
        assert set(replies) == {b"HTTP/1.1 503 Service Unavailable"}
        for c in held:  # the 4 in the pool end at their EOF and free the workers
            c.close()
        time.sleep(0.5)
        assert post_form(base, f"{link}/answer", {"item": item, "nonce": nonce, "choice": "B"})[0] == 303
    finally:
        _stop(httpd)


def _raw(port: int, head: bytes, pieces: list[bytes], gap: float) -> tuple[bytes, float]:
    start = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(head)
        for piece in pieces:
            time.sleep(gap)
            try:
                s.sendall(piece)
            except OSError:
                break
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data, time.monotonic() - start
    finally:
        s.close()


def test_a_slow_body_gets_408_and_records_nothing(big_study):
    httpd, base = _start(big_study, body_timeout=1.0)
    port = httpd.server_address[1]
    try:
        link = links(big_study)[-2]
        _, _, page = request(base, "GET", link)
        item, nonce = form_of(page)
        body = urlencode({"item": item, "nonce": nonce, "choice": "A"}).encode()
        head = (f"POST {link}/answer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                f"application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        before = _answers(big_study)
        stalled, took = _raw(port, head + body[:10], [], 0)  # the rest never comes
        assert stalled.startswith(b"HTTP/1.0 408") and b"Traceback" not in stalled and took < 5
        trickled, took = _raw(port, head, [body[i:i + 4] for i in range(0, len(body), 4)], 0.2)  # 4 bytes / 0.2 s
        assert trickled.startswith(b"HTTP/1.0 408") and took < 5  # one deadline for the whole body
        assert _answers(big_study) == before
        assert _raw(port, head + body, [], 0)[0].startswith(b"HTTP/1.0 303")  # in time: stored
    finally:
        _stop(httpd)


def test_the_origin_check_uses_the_configured_public_origin(big_study):
    httpd, base = _start(big_study, origin="HTTPS://Study.Example.org:443/")
    try:
        link = links(big_study)[-3]
        for origin, expected in [("http://evil.example", 403), (base, 403), ("https://study.example.org:8443", 403),
                                 ("https://study.example.org", 303)]:
            _, _, page = request(base, "GET", link)
            item, nonce = form_of(page)
            # the proxy rewrote Host to the backend's address: only the public origin passes
            got = post_form(base, f"{link}/answer", {"item": item, "nonce": nonce, "choice": "A"},
                            {"Origin": origin, "Host": base.split("//")[1]})[0]
            assert got == expected, origin
    finally:
        _stop(httpd)
    with pytest.raises(ValueError, match="origin="):
        make_server(big_study, "127.0.0.1", 0, origin="study.example.org")
