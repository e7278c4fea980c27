"""`db3d doctor`: what this machine offers db3d (versions, devices, optional backends, caches)."""

from __future__ import annotations

import importlib
import os
import platform

import torch


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
    hf = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    print(f"hf cache      {hf} ({'exists' if os.path.isdir(hf) else 'absent'}); db3d loads weights offline only")
    print(f"db3d cache    {os.environ.get('DB3D_CACHE', os.path.expanduser('~/.cache/db3d'))}")
    return 0
