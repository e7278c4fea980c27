"""The Tune function trainable: the driver of one subject x prompt x hyperparameter point.

    1. compose the trial's config (sweep overrides + grid cell + drawn search values)
    2. run the method (stages.run_method) with an executor for its heavy stages: inline, each
       stage a call in the trial's worker; or `trainer=ray_train`, each stage a Ray Train run
       launched by this trial (executor.py: a DreamBooth run on dreambooth.num_workers data-parallel
       workers, every other stage on one worker holding the sweep's resources)
    3. write the trial's one Parquet row (status ok, or failed with the error) and report to Tune

Stages are content-addressed in the sweep's shared artifact store, so a retried trial (Tune's
FailureConfig) resumes from the last finished stage and the state files inside a stage. With
artifacts=URI the store is mirrored to an object store under a Ray actor's locks
(artifact_store.py), so nodes without a shared file system share stages too.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

from db3d.core.artifacts import content_key
from db3d.core.config import compose, quote
from db3d.core.data import load_subject_images, resolve_subject
from db3d.core.overrides import key_values
from db3d.core.progress import PROGRESS_LABEL_ENV
from db3d.core.results import StageMeter, cost_totals, result_row, save_config
from db3d.method.executor import INLINE
from db3d.method.quality import ProbeSettings, QualityProbe
from db3d.method.stages import run_method
from db3d.toyworld.truth import truth_for

from .artifact_store import installed
from .executor import RayTrainExecutor
from .sink import write_trial_row, write_view_rows
from .spec import search_overrides
from .storage import join, upload_dir

NUMBER_PREFIXES = ("metric.", "seconds.", "nerf_", "quality.", "gpu_seconds.", "cpu_seconds.", "peak_")
"""Row columns a trial reports to Tune (searchers, schedulers and trackers read them)."""


def trial_config(config: dict) -> tuple[list[str], str]:
    """(overrides, trial id) from Tune's config {"point": {...}, "search": {...}, "sweep": {...}}."""
    point, sweep = config["point"], config["sweep"]
    extra = search_overrides(config.get("search", {}))
    overrides = list(point["overrides"]) + list(sweep.get("overrides", [])) + extra
    trial_id = point["id"] if not extra else content_key(point["id"], extra)
    return overrides, trial_id


def cache_override(overrides: list[str], sweep: dict) -> list[str]:
    """A trial's cache folder (class images, ToyWorld's scoring renders): OUT/cache, one per sweep,
    unless the sweep's overrides name their own `cache_dir=` (a cache shared across sweeps and runs)."""
    if key_values(overrides, ["cache_dir"], lstrip="+")[0]:
        return []
    return [f"cache_dir={quote(str(Path(sweep['out']) / 'cache'))}"]


def _results_root(sweep: dict):
    """OUT/results, or the results URI when the sweep publishes to object storage."""
    return sweep.get("results") or Path(sweep["out"]) / "results"


def _method_body(config: dict) -> dict:
    """Compose, run every stage through the sweep's executor, return the trial's row (in the Tune trial)."""
    overrides, trial_id = trial_config(config)
    point, sweep = config["point"], config["sweep"]
    os.environ[PROGRESS_LABEL_ENV] = trial_id  # this process's progress records name the trial
    out = Path(sweep["out"]) / "trials" / trial_id
    store = Path(sweep["out"]) / "artifacts" if sweep.get("reuse", True) else out / "artifacts"
    cfg = compose(overrides + [f"out={quote(str(out))}", *cache_override(overrides, sweep),
                               f"subject={quote(point['subject'])}", f"class_noun={quote(point['class_noun'])}",
                               f"prompt={quote(point['prompt'])}"])
    subject = resolve_subject(point["subject"], class_noun=point["class_noun"])
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)  # the resolved config beside the trial's outputs
    marker = os.environ.get("DB3D_TRIAL_PID_DIR")  # tests: where a trial announces its worker PID
    if marker:
        Path(marker).mkdir(parents=True, exist_ok=True)
        (Path(marker) / f"{trial_id}.pid").write_text(str(os.getpid()))
    last: dict = {}  # the last NeRF stage's latest quality signal and loss, for the scheduler
    # early stopping (ASHA) and trackers read the quality probe's signal on the last NeRF stage
    truth = truth_for(subject.path)  # ToyWorld subjects: scored against their true object
    progress = Reporter(QualityProbe(cfg, truth, point["prompt"], ProbeSettings(**sweep.get("quality", {})),
                                     _subject_images(cfg, subject)), last) if sweep.get("probe") else None
    meter = StageMeter({})  # peak memory per stage, as each stage ends
    executor = RayTrainExecutor(sweep, trial_id, progress) if sweep.get("trainer", "inline") == "ray_train" else INLINE
    with installed(sweep):  # artifacts in an object store: the sweep's lock actor and sync
        result = run_method(cfg, subject, point["prompt"], out, store=store, on_progress=progress,
                            executor=executor, seconds=meter, truth=truth)
    row = result_row(cfg, subject.name, subject.class_noun, point["prompt"], result, "ok")
    row.update(trial_id=trial_id, sweep=sweep["name"], reuse=bool(sweep.get("reuse", True)))
    gpus = float(sweep.get("resources", {}).get("gpu", 0))  # GPUs a worker holds (fractional allowed)
    workers = {"dreambooth_train": cfg.dreambooth.num_workers}  # the data-parallel DreamBooth runs
    cpus = float(sweep.get("resources", {}).get("cpu", 1))  # CPUs a worker holds
    row.update({f"gpu_seconds.{k}": float(v) * gpus * workers.get(k, 1) for k, v in result.seconds.items()})
    row.update({f"cpu_seconds.{k}": float(v) * cpus * workers.get(k, 1) for k, v in result.seconds.items()})
    row.update(meter.columns())
    row.update(cost_totals(row))
    views = result.metrics.get("views", [])
    if sweep.get("publish"):  # results go to a URI: upload the exports, point the row at them
        uploaded = upload_dir(out / "exports", join(sweep["publish"], trial_id, "exports"))
        row.update({f"uri.{name}": uri for name, uri in uploaded.items() if f"uri.{name}" in row})
        views = [{**v, "uri": uploaded.get(f"eval_views/{Path(v['uri']).name}", v["uri"])} for v in views]
    write_view_rows(sweep.get("views") or Path(sweep["out"]) / "views", row, views)
    row.update(last)  # the final report carries the scheduler's metric too
    return row


class Reporter:
    """on_progress for fit_nerf: score the field (quality.*), report it with the losses to Tune.

    `last` keeps the latest signal (the trial's row carries it). On a Ray Train worker the executor
    sends update()'s values through ray.train.report instead (distributed/executor.py)."""

    def __init__(self, probe: QualityProbe, last: dict):
        self.probe, self.last = probe, last

    def update(self, step: int, losses: dict, field) -> None:
        self.last.update(self.probe(step, losses, field))
        self.last.update(nerf_loss=float(sum(losses.values())), nerf_step=step)  # the weighted total, for the record

    def __call__(self, step: int, losses: dict, field) -> None:
        from ray import tune  # heavy (~0.8 s): Ray Train workers unpickle Reporter, call only update()

        self.update(step, losses, field)
        tune.report(dict(self.last))


def _subject_images(cfg, subject):
    """The subject photos for the probe's CLIP-I / DINO (None when it scores without them)."""
    if not (cfg.metrics.clip_models or cfg.metrics.dino):
        return None
    return load_subject_images(subject, cfg.backbone.resolution)[0]


def _numbers(row: dict) -> dict:
    return {k: float(v) for k, v in row.items()
            if k.startswith(NUMBER_PREFIXES) and isinstance(v, (int, float)) and v == v}


def run_trial(config: dict) -> None:
    """Tune function trainable (see module docstring)."""
    from ray import tune  # heavy: as in Reporter.__call__

    os.environ["DB3D_QUIET"] = "1"  # the driver shows sweep progress; no bars from workers
    overrides, trial_id = trial_config(config)
    point, sweep = config["point"], config["sweep"]
    os.environ[PROGRESS_LABEL_ENV] = trial_id  # this process's progress records name the trial
    results = _results_root(sweep)
    try:
        row = _method_body(config)
        write_trial_row(results, row)
    except Exception as err:
        # the failed row names the error; a successful retry replaces it (same trial id)
        cfg = compose(overrides)
        row = result_row(cfg, Path(point["subject"]).name, point["class_noun"], point["prompt"], None, "failed",
                         f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}")
        row.update(trial_id=trial_id, sweep=sweep["name"], reuse=bool(sweep.get("reuse", True)))
        write_trial_row(results, row)
        raise
    # the trial's numbers to Tune (searchers such as Optuna optimise one of them)
    tune.report({"done": 1, "trial_id": trial_id, **_numbers(row)})
