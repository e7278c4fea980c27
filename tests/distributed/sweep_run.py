"""What the sweep tests share: the environment of every `db3d sweep` subprocess, a small sweep
file, the command, and polling helpers.

Every Ray cluster in these tests is started by the test's own `db3d sweep` subprocess (a local Ray,
private to it, on ports Ray picks) or by `ray start --head` on private ports bound to 127.0.0.1; the
tests end only the processes they started, by PID / process group. RAY_AUTH_MODE is set explicitly.
Two such tests may run at once (pytest-xdist): the one fixed port a local Ray asks for, the dashboard
agent's HTTP port 52365, is optional to it (the agent logs the bind failure and carries on), and
only `ray job submit` needs that server, which its test starts on a port of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def mini_sweep(tmp_path: Path, lambdas=(0.5, 1.0), extra: str = "", metrics: str = "false",
               method: str = "dreambooth3d") -> Path:
    path = tmp_path / "mini.yaml"
    path.write_text(f"""name: mini
overrides: [preset=smoke, metrics.enabled={metrics}{extra}]
subjects: {{generated: 1}}
prompts: ["a {{0}} {{1}}"]
grid:
  method: [{method}]
  method.lambda_recon: [{', '.join(map(str, lambdas))}]
resources: {{cpu: 1, gpu: 0}}
max_concurrent: 2
""")
    return path


def run_sweep(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "db3d.cli", "sweep", *args], env={**ENV, **kw.pop("env", {})},
                          capture_output=True, text=True, timeout=kw.pop("timeout", 400), **kw)


def count_stage(store: Path, stage: str) -> int:
    return sum(1 for p in store.glob(f"**/artifacts/{stage}/*") if p.is_dir())


def wait_for(path_glob, root: Path, timeout: float = 120.0) -> list[Path]:
    end = time.time() + timeout
    while time.time() < end:
        found = list(root.glob(path_glob))
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"nothing matched {path_glob} under {root} in {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

