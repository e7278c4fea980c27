"""Exports and scoring of one ToyWorld trial's final NeRF, the previous code beside this tree, printed
(not a timed test).

The previous code is a detached git worktree of --old-ref (default main), made for the run and
removed after it. Every measurement is a fresh process, as a sweep trial is: it builds the run's
context for a ToyWorld subject at `backbone=toy preset=toy`, builds the backbone first (a trial's
NeRF stages did that before its exports; not timed), then times `stages.exports`, `stages.metrics`
and `stages.truth_metrics` on one final NeRF. This tree runs twice on one artifact store and one
cache folder (cache_dir): "cold", the first run on a machine (the world's scoring renders are
rendered and kept in the cache), and "warm", every later run or trial (they are loaded). Both
runs of this tree must give the previous code's metric.toy.* values exactly and byte-identical
exported files; the script says so or fails.

Without --field the final NeRF is fitted here first (the toy preset's field, by reconstruction of
the subject's true renders for --steps steps: a NeRF with a surface, as a trial's final one).

    nice -n 10 python benchmarks/bench_export.py [--old-ref main] [--field FILE --subject DIR] [--steps 60]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["backbone=toy", "preset=toy"]
STAGES = ("export", "metrics", "toy_metrics")


def child(args: dict) -> None:
    """One trial's exports and scoring, timed, in the db3d that this process imports."""
    import torch

    from db3d.core.artifacts import NerfCheckpoint
    from db3d.core.config import compose
    from db3d.core.data import load_subject_images, resolve_subject
    from db3d.method import stages
    from db3d.toyworld.truth import truth_for

    cfg = compose([*OVERRIDES, f"cache_dir={args['cache']}"])
    subject = resolve_subject(args["subject"], class_noun="toy")
    images, _ = load_subject_images(subject, cfg.backbone.resolution)
    out = Path(args["out"])
    ctx = stages.Context(cfg=cfg, subject=subject, images=images, prompt="a sks toy", store=Path(args["store"]))
    ctx.bb  # built by the trial's NeRF stages before its exports
    final = NerfCheckpoint(path=str(Path(args["field"]).parent), key="bench", steps=0)
    truth = truth_for(subject.path)
    seconds, scores = {}, {}
    with torch.no_grad():
        for name, fn in (("export", lambda: stages.exports(ctx, final, out / "exports")),
                         ("metrics", lambda: stages.metrics(ctx, final, out / "exports" / "eval_views")),
                         ("toy_metrics", lambda: stages.truth_metrics(ctx, final, truth,
                                                                      out / "exports" / "toy_compare.png"))):
            start = time.perf_counter()
            result = fn()
            seconds[name] = time.perf_counter() - start
            if name != "export":  # exports return their paths
                scores.update(result)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "exports").iterdir())
             if p.is_file()}
    Path(args["result"]).write_text(json.dumps({"seconds": seconds, "scores": scores, "files": files}))


def run_child(tree: Path, args: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), TQDM_DISABLE="1")
    subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], env=env, check=True)
    return json.loads(Path(args["result"]).read_text())


def fit_field(tmp: Path, subject: Path, steps: int) -> Path:
    """A toy-preset NeRF fitted to the subject's true renders on the stage-2 orbit."""
    import torch

    from db3d.core.cameras import orbit_cameras
    from db3d.core.config import compose
    from db3d.method.fit import ReconTerm, fit_nerf
    from db3d.toyworld.render import render_object
    from db3d.toyworld.subjects import ground_truth

    cfg = compose(OVERRIDES + [f"nerf.steps={steps}"])
    n = cfg.nerf
    cams = orbit_cameras(cfg.pseudo.n_views, n.orbit_elevation, n.orbit_distance, n.orbit_fov, cfg.render.resolution)
    views = render_object(ground_truth(subject), cams).rgb.permute(0, 3, 1, 2).contiguous()  # (V, 3, R, R)
    recon = ReconTerm(views, cams, weight=1.0, p=2, views_per_step=2)
    ckpt = fit_nerf(tmp / "final", "bench", n, cfg.render.resolution, steps, cfg.seed, torch.device("cpu"),
                    recon=recon, lambda_nerf=0.0, desc="bench NeRF")
    return ckpt.field_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-ref", default="main", help="git ref of the previous code")
    ap.add_argument("--field", help="a final NeRF (field.safetensors); default: fit one here")
    ap.add_argument("--subject", help="a ToyWorld subject folder; default: make one here")
    ap.add_argument("--steps", type=int, default=60, help="fit steps when --field is not given")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.child:
        return child(json.loads(opts.child))

    with tempfile.TemporaryDirectory(prefix="db3d-bench-export-") as tmp_name:
        tmp = Path(tmp_name)
        # 1. the subject and its final NeRF (in its own folder: NerfCheckpoint reads <dir>/field.safetensors)
        if opts.subject:
            subject = Path(opts.subject).resolve()
        else:
            from db3d.toyworld.subjects import make_subjects

            subject = make_subjects(tmp / "subjects", n=1)[0]
        (tmp / "field").mkdir()
        if opts.field:
            field = Path(shutil.copyfile(opts.field, tmp / "field" / "field.safetensors"))
        else:
            field = fit_field(tmp, subject, opts.steps)
        # 2. the previous code: a detached worktree of --old-ref
        old_tree = tmp / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old_tree), opts.old_ref],
                       check=True)
        try:
            common = {"subject": str(subject), "field": str(field)}
            runs = {
                "old": run_child(old_tree, {**common, "out": str(tmp / "o"), "store": str(tmp / "store_old"),
                                            "cache": str(tmp / "cache_old"), "result": str(tmp / "old.json")}),
                "new cold": run_child(REPO, {**common, "out": str(tmp / "n1"), "store": str(tmp / "store_new"),
                                             "cache": str(tmp / "cache_new"), "result": str(tmp / "new1.json")}),
                "new warm": run_child(REPO, {**common, "out": str(tmp / "n2"), "store": str(tmp / "store_new"),
                                             "cache": str(tmp / "cache_new"), "result": str(tmp / "new2.json")}),
            }
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False)

    # 3. the figures, side by side, and the equality of what they produce
    old = runs["old"]
    print(f"export + scoring of one ToyWorld trial's final NeRF ({' '.join(OVERRIDES)}); old = {opts.old_ref}")
    print(f"{'stage':<14}" + "".join(f"{name:>11}" for name in runs) + f"{'old/cold':>10}{'old/warm':>10}")
    for stage in (*STAGES, "total"):
        secs = {name: (sum(r["seconds"].values()) if stage == "total" else r["seconds"][stage]) for name, r in runs.items()}
        ratios = "".join(f"{secs['old'] / max(secs[k], 1e-9):>9.1f}x" for k in ("new cold", "new warm"))
        print(f"{stage:<14}" + "".join(f"{secs[name]:>10.2f}s" for name in runs) + ratios)
    for name in ("new cold", "new warm"):
        r = runs[name]
        if r["scores"] != old["scores"]:
            raise SystemExit(f"{name}: the scores differ from the old code's: {r['scores']} vs {old['scores']}")
        if r["files"] != old["files"]:
            diff = sorted(k for k in set(r["files"]) | set(old["files"]) if r["files"].get(k) != old["files"].get(k))
            raise SystemExit(f"{name}: exported files differ from the old code's: {diff}")
    print(f"scores identical to the old code's ({len(old['scores'])} values); "
          f"exported files byte-identical ({len(old['files'])} files)")


if __name__ == "__main__":
    main()
