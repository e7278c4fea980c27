"""`db3d toyworld ...`: the ToyWorld prior, its samples, subjects and the ground-truth benchmark.

    db3d toyworld train-prior out=DIR [steps=2500] [minutes=0] [key=value ...]
                              train (or resume) the prior; see db3d/toyworld/train_prior.py
    db3d toyworld samples [model=DIR] [out=FILE] [captions=8] [n=4] [guidance=7.5] [steps=50] [seed=0]
                              a sample grid: one row per world caption (front view), n samples each
    db3d toyworld subjects out=DIR [n=8] [captures=5] [seed=1]
                              ToyWorld subjects as a DreamBooth-layout dataset root
    db3d toyworld bench out=DIR [subjects=8] [subjects_seed=1] [sweep=toyworld] [sweep keys / run overrides ...]
                              the sweep sweeps/toyworld.yaml on its own subjects, then a table per
                              method: PSNR (all / back views), SSIM, retrieval rank, Janus score,
                              with bootstrap 95% intervals (OUT/bench.md)
"""

from __future__ import annotations

import sys
from pathlib import Path

from db3d.core.overrides import key_values


def _kv(argv: list[str], defaults: dict) -> tuple[dict, list[str]]:
    """key=value arguments whose key is in defaults (typed like the default) over the defaults; the rest."""
    given, rest = key_values(argv, defaults)
    return {**defaults, **given}, rest


def samples_main(argv: list[str]) -> int:
    import torch  # heavy (~1.5 s): `db3d toyworld --help` imports this module

    from db3d.core.config import BackboneConfig  # ~25 ms: as above
    from db3d.export.media import save_grid  # heavy (torch): as above
    from db3d.models.backbones import build_backbone  # heavy (torch): as above
    from db3d.toyworld.world import enumerate_world  # heavy (torch): as above

    opts, rest = _kv(argv, {"model": "", "out": "toyworld_samples.png", "captions": 8, "n": 4, "guidance": 7.5,
                            "steps": 50, "seed": 0, "view": "front view"})
    if rest:
        print(f"samples: unknown arguments {rest}", file=sys.stderr)
        return 2
    bb = build_backbone(BackboneConfig(kind="toy", model=opts["model"], resolution=32, device="cpu"))
    captions = [o.caption for o in enumerate_world()][: opts["captions"]]
    prompts = [f"{c}, {opts['view']}" if opts["view"] else c for c in captions for _ in range(opts["n"])]
    gen = torch.Generator().manual_seed(opts["seed"])
    images = bb.sample(bb.encode_prompts(prompts), bb.encode_prompts([""]), opts["guidance"], gen, opts["steps"])
    save_grid(images, Path(opts["out"]), columns=opts["n"])
    Path(opts["out"]).with_suffix(".txt").write_text("\n".join(captions) + "\n")
    print(f"{len(images)} samples of {len(captions)} captions -> {opts['out']} (rows listed in "
          f"{Path(opts['out']).with_suffix('.txt')})")
    return 0


def subjects_main(argv: list[str]) -> int:
    from db3d.toyworld.subjects import make_subjects  # heavy (torch): as in samples_main

    opts, rest = _kv(argv, {"out": "", "n": 8, "captures": 5, "seed": 1})
    if rest or not opts["out"]:
        print("subjects: usage: db3d toyworld subjects out=DIR [n=8] [captures=5] [seed=1]", file=sys.stderr)
        return 2
    folders = make_subjects(opts["out"], opts["n"], opts["captures"], opts["seed"])
    print(f"{len(folders)} ToyWorld subjects (class 'toy') in {opts['out']}")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "train-prior":
            from db3d.toyworld.train_prior import main as train_main  # heavy (torch, diffusers): only for this command

            return train_main(rest)
        if command == "samples":
            return samples_main(rest)
        if command == "subjects":
            return subjects_main(rest)
        if command == "bench":
            from db3d.cli.bench import main as bench_main  # heavy (pandas, scipy): only for this command

            return bench_main(rest)
    except (ValueError, FileNotFoundError) as err:
        print(f"db3d toyworld {command}: {err}", file=sys.stderr)
        return 2
    print(f"db3d toyworld: unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
    return 2
