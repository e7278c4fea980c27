"""Sweep specifications (`sweeps/*.yaml`) expanded into trial points. No Ray here: pure data.

    name: demo
    overrides: [preset=smoke]            # every trial (db3d run syntax)
    subjects: {generated: 2} | {toyworld: 8} | {root: PATH, names: all | [dog, cat]} | {paths: [DIR, ...], class_noun: toy}
    prompts: ["a {0} {1}", ...] | {dataset: 4}   # templates; {0} identifier, {1} class noun
    grid: {method: [dreambooth3d, dreambooth_fusion], method.lambda_recon: [0.5, 1.0]}
    search: {method.lambda_recon: {loguniform: [0.1, 10]}}   # sampled num_samples times per point
    num_samples: 1
    resources: {cpu: 1, gpu: 0}          # per trial (fractional GPUs allowed)
    max_concurrent: 2

A point is one subject x prompt x grid cell; its id is a content key of what it contains, so a
retried or restored trial writes the same result file and a sweep never holds two rows for it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..artifacts import content_key
from ..data import DataError, read_dataset_table, resolve_subject
from ..synthetic import SYNTHETIC_CLASS_NOUN, make_synthetic_subject

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"
SEARCH_KINDS = ("uniform", "loguniform", "choice", "randint")


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
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent: int = 0
    search_alg: str = "random"
    """random (Tune's BasicVariantGenerator) or optuna (one OptunaSearch per grid cell)."""
    metric: str = ""
    """The row column a searcher optimises, e.g. metric.r_precision.ViT-B-32.color."""
    mode: str = "max"
    scheduler: dict = field(default_factory=dict)
    """{asha: {grace_period: 1, max_t: 100, reduction_factor: 2}}: ASHA early stopping on `nerf_loss`
    (the last NeRF stage's total loss, reported every nerf.checkpoint_every steps; lower is better)."""
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
    if spec.search_alg == "optuna" and (not spec.metric or not spec.search or spec.mode not in ("min", "max")):
        raise SweepError(f"{path}: search_alg=optuna needs metric:, mode: min|max and a search: space")
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
        from ..toyworld.subjects import make_subjects

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
    """Every subject x prompt x grid cell, in a stable order."""
    try:
        subjects = _subjects(spec, Path(out), data_root)
    except DataError as err:
        raise SweepError(f"{spec.path}: subjects: {err}") from err
    keys = sorted(spec.grid)
    cells = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))] or [{}]
    points = []
    for folder, name, class_noun, templates in subjects:
        if isinstance(spec.prompts, dict):
            chosen = templates[: int(spec.prompts.get("dataset", 1))]
        else:
            chosen = list(spec.prompts)
        for template in chosen:
            prompt = template.format(identifier, class_noun)
            for cell in cells:
                overrides = tuple(list(spec.overrides) + [f"{k}={v}" for k, v in cell.items()])
                pid = content_key(name, folder, prompt, overrides)
                points.append(Point(pid, folder, name, class_noun, prompt, overrides))
    return points


def search_overrides(sample: dict) -> list[str]:
    """Hydra overrides from one drawn search sample {key: value}."""
    return [f"{k}={v}" for k, v in sorted(sample.items())]
