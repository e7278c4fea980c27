"""A bounded worker pool for a socketserver server: a fixed number of threads, a bounded number of
accepted connections waiting for one, and a polite 503 beyond that (never a reset).

    class MyServer(BoundedPool, HTTPServer): ...   then self.start_pool(workers, queued)

Beyond the pool a connection is handed to one selector thread that waits up to 0.2 s for the
request and reads it (closing a socket with unread data would send a reset), answers 503 with
Retry-After, half-closes, and closes at the client's EOF or after 1 s.
"""

from __future__ import annotations

import queue
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 37\r\nConnection: close\r\n\r\nThe study is busy; retry in a second.")


class BoundedPool:
    """Mixin over socketserver.TCPServer: replaces its one-request-at-a-time processing."""

    def start_pool(self, workers: int, queued: int) -> None:
        # `slots` counts connections being served or waiting for a worker
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="study")
        self.slots = threading.BoundedSemaphore(workers + queued)
        self.rejects: queue.Queue = queue.Queue(maxsize=256)
        self.rejected = 0  # connections answered 503 (for tests and the log)
        threading.Thread(target=self._reject_loop, name="study-503", daemon=True).start()

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.rejected += 1
            try:
                self.rejects.put_nowait(request)
            except queue.Full:  # a flood: no time to read the request first
                self.shutdown_request(request)
            return
        self.pool.submit(self._serve, request, client_address)

    def _serve(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def _reject_loop(self) -> None:
        """503 for connections beyond the pool, many at a time (one selector): wait up to 0.2 s
        for the request and read it (so closing is not a reset), answer, half-close, then close
        at the client's EOF or after 1 s."""
        sel = selectors.DefaultSelector()
        deadlines: dict[socket.socket, tuple[str, float]] = {}

        def answer(conn: socket.socket) -> None:
            try:
                conn.setblocking(True)
                conn.settimeout(1.0)
                conn.sendall(BUSY)
                conn.shutdown(socket.SHUT_WR)
                conn.setblocking(False)
                deadlines[conn] = ("draining", time.monotonic() + 1.0)
            except OSError:
                drop(conn)

        def drop(conn: socket.socket) -> None:
            deadlines.pop(conn, None)
            try:
                sel.unregister(conn)
            except (KeyError, ValueError):
                pass
            conn.close()

        while True:
            try:  # 1. newly refused connections
                while True:
                    conn = self.rejects.get_nowait() if deadlines else self.rejects.get()
                    if conn is None:
                        for c in list(deadlines):
                            drop(c)
                        return
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    deadlines[conn] = ("request", time.monotonic() + 0.2)
            except queue.Empty:
                pass
            # 2. reads: the request (then the answer), or the client's EOF after it
            for key, _ in sel.select(timeout=0.02):
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    drop(conn)
                    continue
                if deadlines[conn][0] == "request":
                    answer(conn)
                elif not data:
                    drop(conn)
            # 3. deadlines: a client that sent nothing is answered anyway; a drain ends
            now = time.monotonic()
            for conn, (state, when) in list(deadlines.items()):
                if when <= now:
                    answer(conn) if state == "request" else drop(conn)

    def server_close(self) -> None:
        super().server_close()
        self.rejects.put(None)
        self.pool.shutdown(wait=False, cancel_futures=True)
