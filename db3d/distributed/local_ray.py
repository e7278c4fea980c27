"""The local Ray a sweep starts when no RAY_ADDRESS is set: every listener on loopback, the token private.

Ray 2.60 binds its servers (GCS, raylet, object manager, workers' gRPC, the dashboard agent with its
job routes, the runtime-env agent) to the node's IP address. On Linux that address defaults to the
machine's network address, and `ray.init(_node_ip_address="127.0.0.1")` does not help: Ray turns a
loopback address back into the network one (`services.resolve_ip_for_localhost`). What keeps the
node on 127.0.0.1 is Ray's own "local Ray only" switch, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
(`ray_constants.ENABLE_RAY_CLUSTER`, read once when ray is imported), under which the node address
is the loopback one. A user who wants the node reachable names its address: `host=10.0.0.5`.

Token auth: with RAY_AUTH_MODE unset Ray 2.60 turns token auth on for a new local Ray and writes a
token to ~/.ray/auth_token with the process umask (0644: readable by every user). db3d writes that
file itself first, 0600, and says so; an existing token file readable by others is made private.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, ::ffff:127.x.y.z and "localhost"."""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def host_problem(host: str) -> str | None:
    """Why `host=` cannot be a Ray node address (a wildcard, or not an IP address), or None."""
    if is_loopback(host):
        return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return f"host={host!r} is not an IP address: name one of this machine's addresses (or leave host= out for 127.0.0.1)"
    if addr.is_unspecified:
        return (f"host={host} would listen on every interface; Ray needs one address of this machine "
                "(e.g. host=10.0.0.5), and a cluster opened on purpose is set up as in cluster/README.md")
    return None


def token_path() -> Path | None:
    """The token file Ray would read or write, or None when the token comes from RAY_AUTH_TOKEN or
    token auth is off."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode not in ("", "token") or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def ensure_private_token(log=print) -> Path | None:
    """Before Ray starts: create the token file 0600 (in a 0700 folder) if Ray would create it,
    or make an existing one private. Returns the path, or None when no file is involved."""
    path = token_path()
    if path is None:
        return None
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)
            log(f"[db3d sweep] {path} was readable by other users ({mode:o}); made it private (600)")
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 600 from the first byte
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # Ray's own format: 256 bits, hex
    log(f"[db3d sweep] Ray token auth: wrote a new token to {path} (mode 600); "
        "set RAY_AUTH_MODE=disabled to run the local Ray without one")
    return path


def start_local_ray(host: str = LOOPBACK, num_cpus: int | None = None) -> str:
    """ray.init a private local Ray whose node address is `host` (loopback unless named).
    Returns the node address Ray ended up with; raises RuntimeError if a loopback node is not."""
    # 1. loopback: Ray's local-only switch, in the environment (children inherit it) and, when
    #    ray was imported before this call, in the constant it was read into
    if is_loopback(host):
        os.environ[LOCAL_ONLY_ENV] = "0"
        if "ray" in sys.modules:
            from ray._private import ray_constants  # a top import would import ray before step 1

            ray_constants.ENABLE_RAY_CLUSTER = False
    import ray  # after step 1: ray reads the switch when it is first imported

    # 2. the token file, private, before Ray would write it
    ensure_private_token()

    # 3. start; a named address is passed as the node address (and the dashboard host)
    kwargs = {} if is_loopback(host) else {"_node_ip_address": host, "dashboard_host": host}
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    node_ip = ray.util.get_node_ip_address()
    if is_loopback(host) and not is_loopback(node_ip):
        ray.shutdown()
        raise RuntimeError(f"the local Ray came up on {node_ip}, not {LOOPBACK}: refusing to run a sweep "
                           "that listens beyond the machine")
    return node_ip
