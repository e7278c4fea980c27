"""The Tune function trainable: the driver of one subject x prompt x hyperparameter point.

    1. compose the trial's config (sweep overrides + grid cell + drawn search values)
    2. run the method: inline in the trial's worker, or as Ray Train TorchTrainers (Train V2:
       trainers launched inside the Tune function, `Tuner(trainer)` no longer works): a
       one-worker trainer for the method and, with dreambooth.num_workers=N > 1, an N-worker
       data-parallel trainer for each DreamBooth run (dreambooth_train.py: the method then runs
       in passes that stop where a DreamBooth run is missing)
    3. write the trial's one Parquet row (status ok, or failed with the error) and report to Tune

Stages are content-addressed in the sweep's shared artifact store, so a retried trial (Tune's
FailureConfig) resumes from the last finished stage and the state files inside a stage. With
artifacts=URI the store is mirrored to an object store under a Ray actor's locks
(artifact_store.py), so nodes without a shared file system share stages too.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from ..artifacts import atomic_write_json, content_key
from ..config import compose, quote
from ..data import resolve_subject
from ..quality import ProbeSettings, QualityProbe
from ..results import StageMeter, cost_totals, result_row
from ..run import save_config
from .artifact_store import installed
from .dreambooth_train import (REQUEST_FILE, NeedDreamBooth, dreambooth_or_request, load_request,
                               run_dreambooth_trainer, save_request)
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


def _results_root(sweep: dict):
    """OUT/results, or the results URI when the sweep publishes to object storage."""
    return sweep.get("results") or Path(sweep["out"]) / "results"


def _method_body(config: dict, run_dreambooth=None, seconds: dict | None = None) -> dict:
    """Compose, run every stage, return the trial's row. Runs in a Tune or Train worker.

    `run_dreambooth` and `seconds` go to run_method (a method pass of a Ray Train trial).
    """
    from ..stages import run_method

    overrides, trial_id = trial_config(config)
    point, sweep = config["point"], config["sweep"]
    out = Path(sweep["out"]) / "trials" / trial_id
    store = Path(sweep["out"]) / "artifacts" if sweep.get("reuse", True) else out / "artifacts"
    cfg = compose(overrides + [f"out={quote(str(out))}", f"cache_dir={quote(str(Path(sweep['out']) / 'cache'))}",
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
    progress = make_reporter(QualityProbe(cfg, subject.path, point["prompt"], ProbeSettings(**sweep.get("quality", {})),
                                          _subject_images(cfg, subject)), last) if sweep.get("probe") else None
    meter = StageMeter(seconds if seconds is not None else {})  # peak memory per stage, as each stage ends
    with installed(sweep):  # artifacts in an object store: the sweep's lock actor and sync
        result = run_method(cfg, subject, point["prompt"], out, store=store, on_progress=progress,
                            run_dreambooth=run_dreambooth, seconds=meter)
    row = result_row(cfg, subject.name, subject.class_noun, point["prompt"], result, "ok")
    row.update(trial_id=trial_id, sweep=sweep["name"], reuse=bool(sweep.get("reuse", True)))
    gpus = float(sweep.get("resources", {}).get("gpu", 0))  # GPUs a worker holds (fractional allowed)
    workers = {"dreambooth_train": cfg.dreambooth.num_workers}  # the data-parallel DreamBooth trainers
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


def make_reporter(probe: QualityProbe, last: dict):
    """on_progress for fit_nerf: score the field (quality.*), report it with the losses to Tune."""

    def report(step: int, losses: dict, field) -> None:
        from ray import tune

        last.update(probe(step, losses, field))
        last.update(nerf_loss=float(sum(losses.values())), nerf_step=step)  # the weighted total, for the record
        tune.report(dict(last))

    return report


def _subject_images(cfg, subject):
    """The subject photos for the probe's CLIP-I / DINO (None when it scores without them)."""
    if not (cfg.metrics.clip_models or cfg.metrics.dino):
        return None
    from ..data import load_subject_images

    return load_subject_images(subject, cfg.backbone.resolution)[0]


def _pass_files(config: dict) -> tuple[Path, Path]:
    """(outcome, DreamBooth request) of a method pass, in the trial's folder. Train V2's Result
    carries only metrics reported with a checkpoint, so a pass tells its trial through files."""
    folder = Path(config["sweep"]["out"]) / "trials" / trial_config(config)[1]
    return folder / "pass.json", folder / REQUEST_FILE


def _numbers(row: dict) -> dict:
    return {k: float(v) for k, v in row.items()
            if k.startswith(NUMBER_PREFIXES) and isinstance(v, (int, float)) and v == v}


def _train_loop(config: dict) -> None:
    """Ray Train worker of a method pass: rank 0 runs the method and writes its row, or stops
    where a DreamBooth run on N workers is missing and saves that run's request."""
    import ray.train

    os.environ["DB3D_QUIET"] = "1"
    metrics = {}
    if ray.train.get_context().get_world_rank() == 0:
        outcome, request = _pass_files(config)
        seconds = dict(config.get("seconds", {}))  # the earlier passes' stage times, added to
        try:
            row = _method_body(config, dreambooth_or_request, seconds)
        except NeedDreamBooth as need:
            save_request({**need.request, "seconds": seconds}, request)
            metrics = {"need_dreambooth": 1.0}
        else:
            write_trial_row(_results_root(config["sweep"]), row)
            metrics = _numbers(row)
        atomic_write_json(outcome, metrics)
    ray.train.report(metrics)


def run_trial(config: dict) -> None:
    """Tune function trainable (see module docstring)."""
    from ray import tune

    os.environ["DB3D_QUIET"] = "1"  # the driver shows sweep progress; no bars from workers
    overrides, trial_id = trial_config(config)
    point, sweep = config["point"], config["sweep"]
    results = _results_root(sweep)
    try:
        if sweep.get("trainer", "inline") == "ray_train":
            row = _run_in_trainer(config, trial_id)
        else:
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


def _run_in_trainer(config: dict, trial_id: str, max_passes: int = 6) -> dict:
    """The method as one-worker TorchTrainer passes (GPU when the sweep asks for one), with each
    missing DreamBooth run on N > 1 workers trained in between (dreambooth_train.py)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    sweep = config["sweep"]
    gpu = float(sweep.get("resources", {}).get("gpu", 0))
    cpu = float(sweep.get("resources", {}).get("cpu", 1))
    seconds: dict = {}  # stage -> wall time over the passes (dreambooth_train: the N-worker trainers)
    requested: set[str] = set()
    outcome, request_file = _pass_files(config)
    for n_pass in range(max_passes):
        outcome.unlink(missing_ok=True)
        # 1. a method pass: every finished stage is reused, the rest runs until done or a missing DreamBooth
        trainer = TorchTrainer(  # the trial itself holds one CPU; the worker holds the sweep's resources
            _train_loop,
            train_loop_config={**config, "seconds": seconds},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=gpu > 0,
                                         resources_per_worker={"CPU": cpu, **({"GPU": gpu} if gpu else {})}),
            run_config=RunConfig(name=f"train-{trial_id}" + (f"-{n_pass}" if n_pass else ""),
                                 storage_path=str(Path(sweep["out"]) / "ray_train"),
                                 failure_config=FailureConfig(max_failures=int(sweep.get("max_failures", 1)))),
        )
        trainer.fit()
        metrics = json.loads(outcome.read_text())
        if not metrics.get("need_dreambooth"):
            return metrics
        # 2. the DreamBooth run it stopped at, data parallel on N workers
        request = load_request(request_file)
        if request["key"] in requested:
            raise RuntimeError(f"DreamBooth run {request['key']} was trained but the method asked for it again")
        requested.add(request["key"])
        seconds = request["seconds"]
        start = time.perf_counter()
        run_dreambooth_trainer(request_file, sweep, f"dreambooth-{trial_id}-{request['key']}")
        request_file.unlink()
        seconds["dreambooth_train"] = seconds.get("dreambooth_train", 0.0) + time.perf_counter() - start
    raise RuntimeError(f"trial {trial_id}: the method did not finish in {max_passes} passes")
