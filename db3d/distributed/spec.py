"""Sweep specifications (`sweeps/*.yaml`) expanded into trial points. No Ray here: pure data.

    name: demo
    overrides: [preset=smoke]            # every trial (db3d run syntax)
    subjects: {generated: 2} | {toyworld: 8} | {root: PATH, names: all | [dog, cat]} | {paths: [DIR, ...], class_noun: toy}
    prompts: ["a {0} {1}", ...] | {dataset: 4}   # templates; {0} identifier, {1} class noun
    grid: {method: [dreambooth3d, dreambooth_fusion], method.lambda_recon: [0.5, 1.0]}
    search: {method.lambda_recon: {loguniform: [0.1, 10]}}   # sampled num_samples times per point
    num_samples: 1
    search_seed: 0                       # the random search's draws
    metric: quality.toy.psnr             # what ASHA / Optuna optimise (default: a quality signal)
    mode: max                            # default: the signal's direction
    scheduler: {asha: {grace_period: 1, max_t: 100, reduction_factor: 2}}
    quality: {views: 4, resolution: 32}  # the quality probe (db3d/method/quality.py)
    tracking: [tensorboard, mlflow, wandb]   # Ray Tune logger callbacks; default none
    resources: {cpu: 1, gpu: 0}          # per trial (fractional GPUs allowed)
    max_concurrent: 2
    reuse_actors: true                   # a finished trial's worker process runs the next trial

A point is one subject x prompt x grid cell; its id is a content key of what it contains, so a
retried or restored trial writes the same result file and a sweep never holds two rows for it.
"""

from __future__ import annotations

import importlib.resources
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from db3d.core.artifacts import content_key
from db3d.core.data import DataError, read_dataset_table, resolve_subject
from db3d.core.synthetic import SYNTHETIC_CLASS_NOUN, make_synthetic_subject

SWEEPS_DIR = Path(str(importlib.resources.files("sweeps")))  # the named sweeps, installed with db3d (package data)
SEARCH_KINDS = ("uniform", "loguniform", "choice", "randint")
TRACKERS = ("tensorboard", "mlflow", "wandb")


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the key."""


@dataclass
class SweepSpec:
    name: str
    overrides: list[str] = field(default_factory=list)
    subjects: dict = field(default_factory=lambda: {"generated": 1})
    prompts: list[str] | dict = field(default_factory=lambda: ["a {0} {1}"])
    grid: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    num_samples: int = 1
    search_seed: int = 0
    """Seed of the random search's draws: two runs of a sweep (with and without a scheduler) try
    the same settings."""
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent: int = 0
    reuse_actors: bool = True
    """Tune's reuse_actors: a finished trial's worker process (its imports of torch, diffusers and db3d
    already paid) runs the next trial instead of a fresh process. Rows are identical either way (136
    columns compared on a 4-trial smoke sweep); the sweep took 32 s instead of 44 s on 2 cores."""
    search_alg: str = "random"
    """random (Tune's BasicVariantGenerator) or optuna (one OptunaSearch per grid cell)."""
    metric: str = ""
    """What ASHA and Optuna optimise. With a scheduler: a quality signal of the last NeRF stage
    (db3d/method/quality.py: quality.toy.psnr, quality.clip_t.<model>, ..., quality.loss.<term>); empty: the
    first available of quality.toy.psnr and quality.clip_t.<first CLIP model>, never the weighted
    total loss. Optuna alone may also name a row column (metric.*, seconds.*)."""
    mode: str = ""
    """max or min; empty: the quality signal's own direction."""
    scheduler: dict = field(default_factory=dict)
    """{asha: {grace_period: 1, max_t: 100, reduction_factor: 2}}: ASHA early stopping on `metric`,
    reported every nerf.checkpoint_every steps of the last NeRF stage (training_iteration counts reports)."""
    quality: dict = field(default_factory=dict)
    """The probe's settings (quality.ProbeSettings): {views: 4, resolution: 32, n_samples: 0}."""
    tracking: list = field(default_factory=list)
    """Ray Tune logger callbacks: any of tensorboard, mlflow (a local file store under OUT/mlruns),
    wandb (offline, under OUT/wandb); empty (default): none."""
    path: str = ""


@dataclass(frozen=True)
class Point:
    """One trial's fixed part: a subject, a prompt, and its grid overrides."""

    id: str
    subject: str  # folder
    subject_name: str
    class_noun: str
    prompt: str
    overrides: tuple[str, ...]


def load_spec(name_or_path: str) -> SweepSpec:
    """A sweep by name (sweeps/NAME.yaml) or by path, checked for unknown keys and bad spaces."""
    path = Path(name_or_path)
    if not path.exists():
        path = SWEEPS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise SweepError(f"sweep={name_or_path}: no such file, and not one of the bundled sweeps ({known})")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - (set(SweepSpec.__dataclass_fields__) - {"path"})
    if unknown:
        raise SweepError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(SweepSpec.__dataclass_fields__)}")
    spec = SweepSpec(**{**data, "path": str(path)})
    for key, space in spec.search.items():
        if not isinstance(space, dict) or len(space) != 1 or next(iter(space)) not in SEARCH_KINDS:
            raise SweepError(f"{path}: search.{key}={space!r}: must be one of {{{' | '.join(SEARCH_KINDS)}: ...}}")
    if spec.search_alg not in ("random", "optuna"):
        raise SweepError(f"{path}: search_alg={spec.search_alg!r}: must be random or optuna")
    if spec.search_alg == "optuna" and (not spec.metric or not spec.search):
        raise SweepError(f"{path}: search_alg=optuna needs metric:, mode: min|max and a search: space")
    if spec.mode not in ("", "min", "max"):
        raise SweepError(f"{path}: mode={spec.mode!r}: must be min or max")
    bad = set(spec.quality) - {"views", "resolution", "n_samples"}
    if bad:
        raise SweepError(f"{path}: quality: unknown keys {sorted(bad)}; allowed: views, resolution, n_samples")
    if isinstance(spec.tracking, str):
        spec.tracking = [spec.tracking]
    bad = set(spec.tracking) - set(TRACKERS)
    if bad:
        raise SweepError(f"{path}: tracking: unknown {sorted(bad)}; allowed: {', '.join(TRACKERS)}")
    if spec.scheduler and set(spec.scheduler) != {"asha"}:
        raise SweepError(f"{path}: scheduler={spec.scheduler!r}: only {{asha: {{...}}}} is supported")
    for key, values in spec.grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key} must be a non-empty list")
    return spec


def _subjects(spec: SweepSpec, out: Path, data_root: str | None) -> list[tuple[str, str, str, list[str]]]:
    """(folder, name, class noun, templates) per subject."""
    s = spec.subjects
    if "generated" in s:
        rows = []
        for i in range(int(s["generated"])):
            folder = make_synthetic_subject(out / "subjects" / f"toy{i}", n_images=4, seed=i)
            sub = resolve_subject(str(folder), class_noun=SYNTHETIC_CLASS_NOUN)
            rows.append((str(folder), sub.name, sub.class_noun, list(sub.templates)))
        return rows
    if "toyworld" in s:  # ToyWorld subjects (ground truth known), written as a dataset root
        from db3d.toyworld.subjects import make_subjects  # heavy (torch): see resolve_metric

        root = out / "subjects"
        make_subjects(root, n=int(s["toyworld"]), captures=int(s.get("captures", 5)), seed=int(s.get("seed", 1)))
        s = {"root": str(root), "names": "all"}
    if "root" in s or data_root:
        root = Path(s["root"] if "toyworld" in spec.subjects else (data_root or s["root"]))
        if not root.is_absolute() and not root.exists():
            root = Path(spec.path).parent / root
        table = read_dataset_table(root)
        names = sorted(table.classes) if s.get("names", "all") == "all" else list(s["names"])
        rows = []
        for name in names:
            sub = resolve_subject(name, str(root))
            rows.append((str(sub.path), sub.name, sub.class_noun, list(sub.templates)))
        return rows
    if "paths" in s:
        rows = []
        for p in s["paths"]:
            sub = resolve_subject(str(p), class_noun=s.get("class_noun"))
            rows.append((str(sub.path), sub.name, sub.class_noun, list(sub.templates)))
        return rows
    raise SweepError(f"{spec.path}: subjects needs one of generated, toyworld, root, paths")


def expand(spec: SweepSpec, out: Path, identifier: str = "sks", data_root: str | None = None) -> list[Point]:
    """Every subject x prompt x grid cell, in a stable order that keeps side-by-side trials apart.

    Tune starts trials in this order, max_concurrent at a time. Trials of one subject share its
    DreamBooth run, trials of one prompt its stage 1 and 2: two of them started together would
    compute that stage once while the other waits on its lock, a core idle. So the order is grid
    cell, then prompt, then subject (innermost): neighbours differ in subject first, then in prompt,
    and a later cell reuses the stages its earlier cells computed (the first cell is also the grid's
    first method: dreambooth3d before the shorter dreambooth_fusion, longest first)."""
    try:
        subjects = _subjects(spec, Path(out), data_root)
    except DataError as err:
        raise SweepError(f"{spec.path}: subjects: {err}") from err
    keys = sorted(spec.grid)
    cells = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))] or [{}]
    # 1. each subject's prompts
    prompts = []  # [(folder, name, class noun, [prompt, ...])]
    for folder, name, class_noun, templates in subjects:
        chosen = templates[: int(spec.prompts.get("dataset", 1))] if isinstance(spec.prompts, dict) \
            else list(spec.prompts)
        prompts.append((folder, name, class_noun, [t.format(identifier, class_noun) for t in chosen]))
    # 2. cell, then the j-th prompt, then subject
    points = []
    for cell in cells:
        overrides = tuple(list(spec.overrides) + [f"{k}={v}" for k, v in cell.items()])
        for j in range(max((len(p[3]) for p in prompts), default=0)):
            for folder, name, class_noun, own in prompts:
                if j < len(own):
                    pid = content_key(name, folder, own[j], overrides)
                    points.append(Point(pid, folder, name, class_noun, own[j], overrides))
    return points


def search_overrides(sample: dict) -> list[str]:
    """Hydra overrides from one drawn search sample {key: value}."""
    return [f"{k}={v}" for k, v in sorted(sample.items())]


def resolve_metric(spec: SweepSpec, configs: list) -> tuple[str, str]:
    """(metric, mode) that ASHA and Optuna use, checked against what every trial can compute.

    configs: [(RunConfig, subject folder)] of every point. Raises SweepError (before Ray starts)
    when a scheduler or a quality.* metric cannot be computed for some trial."""
    from db3d.method.quality import available_signals  # heavy (~2 s, torch): `db3d sweep --help` reads this module
    from db3d.toyworld.truth import truth_for  # heavy: as above

    metric, mode = spec.metric, spec.mode
    if not spec.scheduler and not metric.startswith("quality."):
        if metric and spec.search_alg == "optuna" and not mode:
            raise SweepError(f"{spec.path}: metric={metric}: name its mode: min or max")
        return metric, mode or "max"
    if spec.scheduler:  # ASHA stops a trial at max_t reports: past the last one, or its row is never written
        max_t = int(spec.scheduler["asha"].get("max_t", 100))
        reports = max(cfg.nerf.steps // max(1, cfg.nerf.checkpoint_every) for cfg, _ in configs) if configs else 0
        if max_t <= reports:
            raise SweepError(f"{spec.path}: scheduler.asha.max_t={max_t}: the last NeRF stage reports {reports} times "
                             f"(nerf.steps / nerf.checkpoint_every) and ASHA stops every trial reaching max_t, "
                             f"before it exports and scores; set max_t to at least {reports + 1}")
    signals = [available_signals(cfg, truth_for(folder)) for cfg, folder in configs]
    common = set.intersection(*(set(s) for s in signals)) if signals else set()
    if not metric:
        firsts = ["quality.toy.psnr"] + [f"quality.clip_t.{c}" for c in configs[0][0].metrics.clip_models[:1]]
        metric = next((m for m in firsts if m in common), "")
        if not metric:
            raise SweepError(f"{spec.path}: the scheduler needs a quality metric and none of {firsts} can be computed "
                             f"for every trial (no ToyWorld ground truth, no CLIP weights); name one with metric:, "
                             f"from {sorted(common)}")
    if metric == "nerf_loss":  # the weighted total, by explicit choice only
        return metric, mode or "min"
    if not metric.startswith("quality."):
        raise SweepError(f"{spec.path}: metric={metric}: ASHA compares trials during the last NeRF stage, where "
                         f"only quality.* signals exist (row columns such as metric.* come at the end); "
                         f"available: {sorted(common)}")
    if metric not in common:
        raise SweepError(f"{spec.path}: metric={metric} cannot be computed for every trial; available to all: "
                         f"{sorted(common)}")
    direction = signals[0][metric]
    if mode and mode != direction:
        raise SweepError(f"{spec.path}: metric={metric} is {'higher' if direction == 'max' else 'lower'}-is-better; "
                         f"mode={mode} would favour the worst trials")
    return metric, direction
