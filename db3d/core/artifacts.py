"""Artifacts: frozen dataclasses of paths + metadata that stages pass to each other.

An artifact is cheap to pickle (through Ray) and names its content by a key: a hash of its
inputs' keys and of the config fields the producing stage reads, never of the whole config.
A sweep that changes only a late-stage field therefore finds every earlier artifact by key.

Completed outputs are marked by a `done.json` written last and atomically (temp name, then
rename), so a folder without it is an interrupted stage that may be resumed or redone.

`atomic_path` / `atomic_write` are db3d's one way to write a file atomically (text, JSON, Parquet,
torch states, images, videos, meshes): a hidden temp name in the same folder, then os.replace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


def content_key(*parts) -> str:
    """A 16-hex-digit key of JSON-serialisable parts (dataclasses become dicts)."""

    def plain(x):
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return dataclasses.asdict(x)
        if isinstance(x, Path):
            return str(x)
        raise TypeError(f"content_key cannot hash {type(x).__name__}")

    text = json.dumps(parts, sort_keys=True, default=plain, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def atomic_path(path: Path, per_process: bool = True) -> Iterator[Path]:
    """A hidden temp path beside `path` to write to; on a clean exit it replaces `path` (os.replace),
    so readers see the old file or the whole new one, never half; on an error it is removed.

    The temp name starts with '.' (pyarrow.dataset and the report skip such files) and keeps the
    suffix, which some writers pick a format from (ffmpeg picks the container): by default
    `dir/.name.<pid>.tmp.ext`, so concurrent writers of one path never share a temp file.
    per_process=False drops the pid (`dir/.name.tmp.ext`), for a large file that one writer
    rewrites again and again (a resume state): a write killed part way then leaves one temp file,
    which the next write replaces, rather than one per process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f".{os.getpid()}" if per_process else ""
    tmp = path.with_name(f".{path.stem}{tag}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed or interrupted write leaves nothing behind
        raise


def atomic_write(path: Path, write: Callable[[Path], object], per_process: bool = True) -> Path:
    """`write(tmp)` to a hidden temp path beside `path`, then os.replace it onto `path` (see atomic_path).

        atomic_write(path, lambda tmp: torch.save(state, tmp))
    """
    with atomic_path(path, per_process) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` so readers see the old file or the whole new one, never half."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see atomic_path)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, obj) -> Path:
    """`obj` as indented, key-sorted JSON, written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def cache_root() -> Path:
    """db3d's cache of reusable files (class images, ToyWorld's scoring renders, compiled kernels)
    when a run names none: $DB3D_CACHE, else ~/.cache/db3d."""
    return Path(os.environ.get("DB3D_CACHE") or Path.home() / ".cache" / "db3d").expanduser()


@contextlib.contextmanager
def flock_lock(folder: Path):
    """Exclusive lock on `folder` across processes (an flock on `folder.lock` beside it).

    POSIX file locks: local disks and shared file systems that honour flock (NFSv4, Lustre).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def flock_try_lock(folder: Path):
    """``flock_lock`` without waiting: yields True holding the lock, or False at once when another
    process holds it. For work split into chunks that processes share (``share_chunks``)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def share_chunks(folder: Path, chunks: Sequence[range], missing: Callable[[range], bool],
                 draw: Callable[[range], None], advance: Callable[[], object] = lambda: None) -> None:
    """draw(chunk) for every chunk still missing(chunk), the work shared with the other processes that
    need the same chunks at the same time. Each chunk has its own lock (`folder/batch-<start>.lock`),
    and a process
        1. draws the chunks no other process holds, then
        2. waits for the ones others were drawing, and draws what a failed one left.
    Whoever draws a chunk must draw the same result, so the outcome never depends on the sharing (nor
    on there being any). advance() runs after each chunk (a progress bar). Users: class images
    (db3d/method/class_images.py) and ToyWorld's scoring renders (db3d/toyworld/evaluate.py)."""
    waiting = []
    for chunk in chunks:
        with flock_try_lock(folder / f"batch-{chunk.start:04d}") as mine:
            if not mine:
                waiting.append(chunk)
                continue
            if missing(chunk):
                draw(chunk)
        advance()
    for chunk in waiting:
        with flock_lock(folder / f"batch-{chunk.start:04d}"):
            if missing(chunk):
                draw(chunk)
        advance()


_lock_factory = flock_lock


def set_lock_factory(factory=None):
    """Install `factory(folder) -> context manager` as artifact_lock (None: back to flock_lock);
    returns the previous one. Sweeps whose artifacts live in an object store install a lock
    service that also fetches and publishes the folder (distributed/artifact_store.py)."""
    global _lock_factory
    previous, _lock_factory = _lock_factory, factory or flock_lock
    return previous


def artifact_lock(folder: Path):
    """Exclusive lock on `folder` across processes, by the installed factory (flock by default).

    Concurrent trials that need the same artifact take it in turn: the first computes it, the
    others then find its done.json and reuse it.
    """
    return _lock_factory(folder)


def mark_done(folder: Path, artifact) -> None:
    """Record that `folder` holds the finished `artifact` (written last)."""
    atomic_write_json(Path(folder) / "done.json", {"type": type(artifact).__name__, **dataclasses.asdict(artifact)})


def read_done(folder: Path, cls):
    """The finished artifact recorded in `folder`, or None when the stage did not finish."""
    marker = Path(folder) / "done.json"
    if not marker.exists():
        return None
    data = json.loads(marker.read_text())
    if data.pop("type", None) != cls.__name__:
        return None
    return cls(**data)


@dataclass(frozen=True)
class DreamBoothCheckpoint:
    """A fine-tuned UNet (and optionally text encoder) at one training step.

    Full mode: `path/unet/` (diffusers folder, safetensors) [+ `path/text_encoder/`].
    LoRA mode: `path/pytorch_lora_weights.safetensors` in diffusers' LoRA format.
    """

    path: str
    step: int
    mode: str
    key: str
    backbone_key: str
    text_encoder: bool = False


@dataclass(frozen=True)
class NerfCheckpoint:
    """A fitted NeRF: `path/field.safetensors` (weights + FieldConfig in its metadata)."""

    path: str
    key: str
    steps: int
    latent: bool = False
    """True for Latent-NeRF: the field renders the backbone's latent channels, not RGB."""

    @property
    def field_file(self) -> Path:
        return Path(self.path) / "field.safetensors"


@dataclass(frozen=True)
class PseudoViews:
    """Stage 2's output: `path/views/NN.png` (translated), `path/renders/NN.png` (NeRF_1 renders)
    and `path/cameras.json` (the orbit: azimuth, elevation, distance, fov, resolution)."""

    path: str
    key: str
    n_views: int
    t_pseudo: float
    stage1_opacity_mean: float = -1.0
    """Mean opacity of NeRF_1's orbit renders (-1: not measured, an older artifact)."""
    stage1_opacity_edge: float = -1.0
    """Mean opacity of those renders' frame-border pixels: near 0 for an object, near 1 for fog."""


@dataclass(frozen=True)
class RunResult:
    """One subject x prompt x method: the final NeRF, its exports and per-stage wall times."""

    out: str
    method: str
    subject: str
    class_noun: str
    prompt: str
    final: NerfCheckpoint
    exports: dict
    seconds: dict
    keys: dict
    diagnostics: dict = dataclasses.field(default_factory=dict)
    """Flat columns about how the stages went: per-term losses and gradient norms of each NeRF stage
    (`nerf.<stage>.loss.<term>`, `nerf.<stage>.grad_norm.<term>`), stage 1's coverage and fog flag."""
    metrics: dict = dataclasses.field(default_factory=dict)
    """Flat metric columns (`metric.<metric>.<model>.<render>`, `metrics.weights`) and, under
    "views", one dict per evaluation view; empty when metrics are off."""
