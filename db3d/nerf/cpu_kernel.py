"""The hash grid's CPU kernel: ``hash_interp.c`` compiled at first use, called through ctypes.

The tensor-op hash grid (``encoding.hash_grid_torch``) forms the grid coordinates, weights, index
terms and each of the 8 corners' rows with a few dozen ops over all levels x points, forward and
backward; on a CPU that memory traffic, not the arithmetic, is its cost. ``hash_interp.c`` runs
the same steps per point and level in registers, and gives the same values and table gradient bit
for bit (the same float operations in the same order; tests/nerf/test_cpu_kernel.py). Measured on
2 cores, 1 thread, the toy preset's grid (8 levels x 2^14 rows), 16,000 points: forward 8.3 ->
1.9 ms, forward + backward 14.7 -> 5.7 ms; a 300-step toy-preset SDS fit 23.5 -> 19.2 s with
identical field tensors.

- Switch: ``DB3D_HASHGRID_KERNEL`` = ``c`` (default) or ``torch`` (the tensor ops). Results do not
  depend on it, so no artifact key does either.
- Build: the system C compiler (``$CC``, else cc, gcc or clang), ``CFLAGS`` plus FMA where torch's
  own kernels fuse (``_fused_flags``), about 0.5 s, once per source, flags and compiler: the library
  is kept in ``$DB3D_CACHE/kernels`` (default ``~/.cache/db3d/kernels``), written under a temporary
  name and renamed, so concurrent processes never load a half-written file.
- Fallback: no compiler, or a build or load that fails: one RuntimeWarning per process, saying why,
  and the tensor ops run instead (the same results, slower).
- Scope: CPU tensors of one dtype, float32 or float64, at most MAX_FEATURES features per level,
  positions that need no gradient (``hash_grid_torch`` decides); anything else (CUDA, autograd
  normals' position gradients) takes the tensor ops. One thread per call.
- NaN positions raise a RuntimeError (the tensor ops would return NaN features and scatter their
  gradient into whatever rows the NaN's integer conversion names; the kernel reads no row for them).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from db3d.core.artifacts import cache_root
from db3d.nerf.hash_layout import HASH_PRIMES, HashGridLayout

SOURCE = Path(__file__).with_name("hash_interp.c")
ENV_SWITCH = "DB3D_HASHGRID_KERNEL"
CFLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off")
"""No -ffast-math and no contraction: each product and sum rounds as the torch op's does."""


def _fused_flags() -> tuple[str, ...]:
    """Whether torch's addcmul_ fuses its multiply-add on this CPU, as compiler flags: its AVX2 and
    AVX-512 kernels do (x86: build with FMA instructions), and so does ARM's NEON / SVE; its x86
    DEFAULT kernel does not."""
    import platform  # noqa: PLC0415

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        capability = torch.backends.cpu.get_cpu_capability()
        return ("-DDB3D_FUSED_ADDCMUL=1", "-mfma") if capability.startswith("AVX") else ("-DDB3D_FUSED_ADDCMUL=0",)
    if machine in ("aarch64", "arm64"):
        return ("-DDB3D_FUSED_ADDCMUL=1",)
    return ("-DDB3D_FUSED_ADDCMUL=0",)


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_library: ctypes.CDLL | None = None
_failure: str | None = None  # why the kernel is not available (None: not tried yet, or loaded)


def cache_dir() -> Path:
    return cache_root() / "kernels"


def enabled() -> bool:
    """The switch: DB3D_HASHGRID_KERNEL=c (default) or torch."""
    value = os.environ.get(ENV_SWITCH, "c").strip().lower()
    if value not in ("c", "torch"):
        raise ValueError(f"{ENV_SWITCH}={value!r}: must be 'c' (the compiled CPU kernel) or 'torch' (tensor ops)")
    return value == "c"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _build() -> Path:
    """The compiled library for this source and compiler (built now if missing); raises with the reason."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc or clang)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    flags = (*CFLAGS, *_fused_flags())
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode() + version.encode()).hexdigest()[:16]
    target = cache_dir() / f"hash_interp-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *flags, "-o", str(built), str(SOURCE), "-lm"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-500:]}")
        os.replace(built, target)  # atomic: another process sees the old state or the whole file
    return target


def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (switched off, or unavailable: warned once, with the reason)."""
    global _library, _failure
    if not enabled():
        return None
    if _library is not None or _failure is not None:
        return _library
    try:
        lib = ctypes.CDLL(str(_build()))
        for suffix in _SUFFIX.values():
            getattr(lib, f"hash_grid_forward_{suffix}").restype = ctypes.c_int
            getattr(lib, f"hash_grid_backward_{suffix}").restype = ctypes.c_int
    except Exception as err:  # noqa: BLE001 - any failure: the torch ops, said loudly
        _failure = f"{type(err).__name__}: {err}"
        warnings.warn(f"the hash grid's compiled CPU kernel is not available ({_failure}); using the torch ops "
                      f"(the same results, slower). Set {ENV_SWITCH}=torch to silence this.", RuntimeWarning,
                      stacklevel=2)
        return None
    _library = lib
    return lib


def unavailable_reason() -> str | None:
    """Why the last load failed (None: loaded, or not tried yet)."""
    return _failure


MAX_FEATURES = 8
"""Features per level the kernel takes (hash_interp.c's MAX_FEAT; Instant-NGP uses 2)."""


def usable(x: Tensor, table: Tensor) -> bool:
    """Whether the kernel takes this encoding: CPU tensors of one dtype, float32 or float64, a table of
    at most MAX_FEATURES features and fewer than 2^31 values, the kernel switched on and available."""
    return (x.device.type == "cpu" and table.device.type == "cpu" and table.dtype in _SUFFIX
            and x.dtype == table.dtype and table.shape[1] <= MAX_FEATURES and table.numel() < 2**31
            and library() is not None)


@functools.lru_cache(maxsize=16)
def level_constants(layout: HashGridLayout, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """hash_interp.c's per-level arrays: scale (L,) of ``dtype``; factor (L, 3), mask, rows and
    offset (L,) int64 (dense levels: factor R^d, mask -1; hashed levels: the masked primes, mask
    rows - 1, rows 0). Built once per layout (a frozen dataclass) and dtype; read-only."""
    scale = torch.tensor(layout.scales, dtype=dtype)
    factor, mask, rows = [], [], []
    for level, resolution in enumerate(layout.resolutions):
        n_rows = layout.offsets[level + 1] - layout.offsets[level]
        if layout.dense[level]:
            factor.append([resolution**d for d in range(3)])
            mask.append(-1)
            rows.append(n_rows)
        else:
            factor.append([prime & (n_rows - 1) for prime in HASH_PRIMES])
            mask.append(n_rows - 1)
            rows.append(0)
    as_int64 = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
    return scale, as_int64(factor), as_int64(mask), as_int64(rows), as_int64(layout.offsets[:-1])


def _ptr(t: Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


_STATUS = {1: f"more than {MAX_FEATURES} features per level", 2: "out of memory for its scratch arrays",
           3: "a position is NaN (the hash grid needs finite points)"}


def _call(name: str, *args) -> None:
    """Call the loaded library (loaded by ``usable``; a backward runs whatever the switch says by then)."""
    status = getattr(_library, name)(*(_ptr(a) if isinstance(a, Tensor) else ctypes.c_int64(a) for a in args))
    if status != 0:
        raise RuntimeError(f"{name}: {_STATUS.get(status, f'status {status}')}")


def forward(x: Tensor, table: Tensor, constants: tuple[Tensor, ...]) -> Tensor:  # (N, 3), (P, F) -> (N, L * F)
    """The encoding of points ``x`` already clamped to [0, 1], on the CPU."""
    scale = constants[0]
    n, n_levels, n_feat = x.shape[0], scale.shape[0], table.shape[1]
    out = torch.empty(n, n_levels * n_feat, dtype=table.dtype)
    _call(f"hash_grid_forward_{_SUFFIX[table.dtype]}", x.contiguous(), n, table.contiguous(), n_feat, n_levels,
          *constants, out)
    return out


def backward(x: Tensor, table: Tensor, constants: tuple[Tensor, ...], grad_out: Tensor) -> Tensor:  # -> (P, F)
    """The table's gradient for ``grad_out`` (N, L * F)."""
    scale = constants[0]
    n, n_levels, n_feat = x.shape[0], scale.shape[0], table.shape[1]
    grad_table = torch.zeros_like(table)
    _call(f"hash_grid_backward_{_SUFFIX[table.dtype]}", x.contiguous(), n, n_feat, n_levels, *constants,
          grad_out.contiguous(), grad_table)
    return grad_table
