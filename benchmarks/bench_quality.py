"""Overhead of the quality probe (db3d/quality.py) on the final NeRF stage, printed (not a timed test).

The final NeRF of dreambooth3d on a ToyWorld subject with ToyWorld's trained prior (backbone=toy,
preset=toy: 32 px, 32 samples a ray, 2 SDS views + 1 reconstruction view a step; the true object's
renders stand in for the pseudo views, which costs the same), fitted with and without the probe
in alternating rounds; the probe renders `views` fixed views at `resolution` px every
`checkpoint_every` steps and scores them against the true object (PSNR).

    python benchmarks/bench_quality.py [--steps 200] [--every 50] [--rounds 2] [--views 4] [--device cpu]

Prints the wall time of each fit, the probe's own time, and the overhead in % of the unprobed fit.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from db3d.backbones import build_backbone
from db3d.cameras import orbit_cameras
from db3d.config import compose
from db3d.fit import ReconTerm, SDSTerm, fit_nerf
from db3d.quality import ProbeSettings, QualityProbe
from db3d.toyworld.render import render_object
from db3d.toyworld.subjects import ground_truth, make_subjects


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        # 1. a ToyWorld subject, the toy prior, the final stage's terms
        subject = make_subjects(Path(tmp) / "subjects", n=1, captures=2, seed=1)[0]
        cfg = compose(["backbone=toy", "preset=toy", f"nerf.steps={args.steps}", f"nerf.checkpoint_every={args.every}",
                       f"backbone.device={args.device}"])
        bb = build_backbone(cfg.backbone)
        res = cfg.render.resolution
        cams = orbit_cameras(cfg.pseudo.n_views, cfg.nerf.orbit_elevation, cfg.nerf.orbit_distance, cfg.nerf.orbit_fov,
                             res)
        views = render_object(ground_truth(subject), cams).rgb.permute(0, 3, 1, 2).contiguous()
        s = cfg.sds
        sds = SDSTerm(bb, "a sks toy", s.guidance_scale, s.t_min, s.t_max, s.t_max_end, weight=cfg.method.lambda_sds)
        recon = ReconTerm(views, cams, weight=cfg.method.lambda_recon, views_per_step=cfg.method.recon_views_per_step)
        settings = ProbeSettings(views=args.views, resolution=args.resolution)

        def fit(name: str, probe) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fit_nerf(Path(tmp) / name, "k", cfg.nerf, res, args.steps, 0, device, sds=sds, recon=recon,
                     on_progress=probe)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        # 2. alternating rounds (a warm-up fit first), each fit in a fresh folder
        fit("warmup", None)
        plain, probed, probe_s = [], [], []
        for r in range(args.rounds):
            plain.append(fit(f"plain{r}", None))
            probe = QualityProbe(cfg, subject, "a sks toy", settings)
            probed.append(fit(f"probed{r}", probe))
            probe_s.append(probe.seconds)
        n_calls = args.steps // args.every
        p, q, ps = statistics.median(plain), statistics.median(probed), statistics.median(probe_s)
        print(f"device {device}, {args.steps} steps, probe every {args.every} steps ({n_calls} calls, "
              f"{args.views} views at {args.resolution} px, {cfg.nerf.n_samples} samples)")
        print(f"fit without probe: {p:.2f} s (rounds {', '.join(f'{x:.2f}' for x in plain)})")
        print(f"fit with probe:    {q:.2f} s (rounds {', '.join(f'{x:.2f}' for x in probed)})")
        print(f"probe's own time:  {ps:.3f} s ({ps / n_calls * 1000:.1f} ms a call, the first renders the truth)")
        print(f"overhead: {100 * ps / p:.2f}% of the fit (probe time), {100 * (q - p) / p:+.2f}% (wall difference)")


if __name__ == "__main__":
    main()
