"""`db3d doctor`: what this machine offers db3d (versions, devices, optional backends, caches)."""

from __future__ import annotations

import importlib
import os
import platform

import torch

from db3d.core.artifacts import cache_root


def doctor() -> int:
    print(f"python        {platform.python_version()}")
    for name in ("torch", "torchvision", "diffusers", "transformers", "peft", "ray", "hydra", "open_clip", "pyarrow"):
        try:
            mod = importlib.import_module(name)
            print(f"{name:<13} {getattr(mod, '__version__', '?')}")
        except Exception as err:  # report, never fail
            print(f"{name:<13} NOT IMPORTABLE ({type(err).__name__}: {err})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}        {p.name}, {p.total_memory / 2**30:.1f} GiB, bf16={torch.cuda.is_bf16_supported()}")
    else:
        print("cuda          not available: CPU only (tiny backbones are fine; real ones will be slow)")
    try:
        import tinycudann  # noqa: F401  optional: CUDA builds only, the check itself

        print("tiny-cuda-nn  available (nerf encoding backend tcnn)")
    except Exception:
        print("tiny-cuda-nn  not installed: the pure-torch hash grid is used (see README to build it)")
    print(f"cpu kernel    {_cpu_kernel_status()}")
    hf = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    print(f"hf cache      {hf} ({'exists' if os.path.isdir(hf) else 'absent'}); db3d loads weights offline only")
    print(f"db3d cache    {cache_root()}")
    return 0


def _cpu_kernel_status() -> str:
    """The hash grid's compiled CPU kernel: where it is built, or why the tensor ops run instead."""
    import warnings  # noqa: PLC0415

    from db3d.nerf import cpu_kernel  # noqa: PLC0415

    try:
        if not cpu_kernel.enabled():
            return f"off ({cpu_kernel.ENV_SWITCH}=torch): the hash grid's tensor ops run on the CPU"
    except ValueError as err:
        return f"bad switch: {err}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reason is printed here instead
        lib = cpu_kernel.library()
    if lib is None:
        return (f"not available ({cpu_kernel.unavailable_reason()}): the hash grid's tensor ops run on the CPU "
                "(same results, slower)")
    return f"built: {lib._name} (the hash grid on the CPU; {cpu_kernel.ENV_SWITCH}=torch turns it off)"
