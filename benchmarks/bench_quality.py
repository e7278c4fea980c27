"""Overhead of the quality probe (db3d/method/quality.py) on the final NeRF stage, printed (not a timed test).

The final NeRF of dreambooth3d on a ToyWorld subject with ToyWorld's trained prior (backbone=toy,
preset=toy: 32 px, 32 samples a ray, 2 SDS views + 1 reconstruction view a step; the true object's
renders stand in for the pseudo views, which costs the same): its time a step without the probe,
and the probe's time a call (`views` fixed views at `resolution` px, scored against the true
object), measured in one process. The overhead is one call per `checkpoint_every` steps:
probe call / (checkpoint_every x step), printed for --every, 50 (toyworld_weights) and 100 (preset toy).

    python benchmarks/bench_quality.py [--steps 20] [--rounds 3] [--calls 10] [--views 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from db3d.core.cameras import orbit_cameras
from db3d.core.config import compose
from db3d.method.fit import ReconTerm, SDSTerm, fit_nerf
from db3d.method.quality import ProbeSettings, QualityProbe
from db3d.models.backbones import build_backbone
from db3d.toyworld.render import render_object
from db3d.toyworld.subjects import ground_truth, make_subjects
from db3d.toyworld.truth import truth_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=10)
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

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        # 2. the fit's time a step (no probe), over --steps steps after a warm-up fit
        fit_nerf(Path(tmp) / "warmup", "k", cfg.nerf, res, 2, 0, device, sds=sds, recon=recon)
        per_step = []
        for r in range(args.rounds):
            sync()
            start = time.perf_counter()
            ckpt = fit_nerf(Path(tmp) / f"plain{r}", "k", cfg.nerf, res, args.steps, 0, device, sds=sds, recon=recon)
            sync()
            per_step.append((time.perf_counter() - start) / args.steps)
        # 3. the probe's time a call on that field (the first call also renders the truth once)
        from db3d.nerf.io import load_field

        field = load_field(ckpt.field_file, device)
        probe = QualityProbe(cfg, truth_for(subject), "a sks toy", settings)
        probe(0, {"sds": 1.0, "recon": 1.0}, field)
        first = probe.seconds
        calls = []
        for i in range(args.calls):
            before = probe.seconds
            probe(i, {"sds": 1.0, "recon": 1.0}, field)
            calls.append(probe.seconds - before)
        step_s, call_s = statistics.median(per_step), statistics.median(calls)
        print(f"device {device}; final NeRF of dreambooth3d at {res} px, {cfg.nerf.n_samples} samples, "
              f"{cfg.nerf.batch_views} SDS views + {cfg.method.recon_views_per_step} recon view a step")
        print(f"fit: {1000 * step_s:.1f} ms a step (median of {args.rounds} fits of {args.steps} steps: "
              f"{', '.join(f'{1000 * x:.1f}' for x in per_step)})")
        print(f"probe: {1000 * call_s:.1f} ms a call (median of {args.calls}; {args.views} views at "
              f"{args.resolution} px; first call {1000 * first:.1f} ms with the truth's renders)")
        for every in sorted({args.every, 50, 100}):
            print(f"overhead at checkpoint_every={every}: {100 * call_s / (every * step_s):.2f}% of the stage")


if __name__ == "__main__":
    main()
