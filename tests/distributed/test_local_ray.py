"""A local sweep's Ray listens on loopback only, and the token file it causes is private.

The sweep runs in its own subprocess (its own local Ray, RAY_AUTH_MODE set explicitly, HOME a
temporary folder so the token file is the test's own); the test watches every process of that tree
with psutil while it runs and ends only that process group.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import psutil
import pytest

from db3d.distributed.local_ray import ensure_private_token, is_loopback
from db3d.distributed.sink import read_results

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "PYTHONUNBUFFERED": "1"}
ENV.pop("RAY_ADDRESS", None)


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "fd00::2", "::ffff:10.0.0.1", "myhost"]))


def test_the_token_file_is_created_private_and_an_open_one_is_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    lines = []
    path = ensure_private_token(log=lines.append)
    assert path == tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text()) == 64 and "wrote a new token" in lines[0]
    token = path.read_text()
    path.chmod(0o644)
    ensure_private_token(log=lines.append)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == token and "644" in lines[1]
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token auth: no file is involved
    assert ensure_private_token(log=lines.append) is None and len(lines) == 2


def _listeners(root: psutil.Process) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every TCP listener and unconnected UDP socket in the tree."""
    found = set()
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return found
    for proc in procs:
        try:
            name = proc.name()
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == 2 and not c.raddr):  # SOCK_DGRAM
                    found.add((name, c.laddr.ip, c.laddr.port))
        except psutil.Error:  # a process that ended meanwhile
            continue
    return found


def test_a_local_sweep_listens_on_loopback_only_and_its_token_is_private(tmp_path):
    spec = tmp_path / "one.yaml"
    spec.write_text("""name: one
overrides: [preset=smoke, metrics.enabled=false]
subjects: {generated: 1}
prompts: ["a {0} {1}"]
grid: {method: [dreambooth_fusion]}
resources: {cpu: 1, gpu: 0}
""")
    home = tmp_path / "home"
    home.mkdir()
    env = {**ENV, "HOME": str(home), "RAY_AUTH_MODE": "token"}
    proc = subprocess.Popen([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={tmp_path / 'o'}",
                             "num_cpus=2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen: set[tuple[str, str, int]] = set()
    try:
        root = psutil.Process(proc.pid)
        end = time.time() + 400
        while proc.poll() is None and time.time() < end:
            seen |= _listeners(root)
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    print(f"\n{len(seen)} sockets opened by the local sweep:")
    for name, ip, port in sorted(seen):
        print(f"  {name:24s} {ip}:{port}")
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names, sorted(seen)  # the watch saw Ray's servers come up
    assert len(seen) >= 5
    open_beyond = sorted(s for s in seen if not is_loopback(s[1]))
    assert not open_beyond, f"listeners beyond the machine: {open_beyond}"
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600, oct(token.stat().st_mode)
    assert "local Ray on 127.0.0.1" in out
    assert read_results(tmp_path / "o" / "results").loc[0, "status"] == "ok"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "*", "not an address"])
def test_a_wildcard_or_malformed_host_is_refused_before_ray_starts(tmp_path, host):
    spec = tmp_path / "one.yaml"
    spec.write_text("name: one\noverrides: [preset=smoke]\nsubjects: {generated: 1}\nprompts: [\"a {0} {1}\"]\n")
    proc = subprocess.run([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={tmp_path / 'o'}",
                           f"host={host}"], env={**ENV, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "host=" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o" / "ray").exists()
