"""`db3d sweep sweep=NAME out=DIR [reuse=false] [max_concurrent=N] [trainer=ray_train] [gpu=0.25]
[work=DIR] [artifacts=URI] [host=ADDRESS] [overrides...]`

A local Ray (no RAY_ADDRESS) listens on 127.0.0.1 only, unless host= names this machine's address
(local_ray.py); its token file, when Ray token auth is on, is private to the user (0600).

out=URI puts results and exports in object storage; artifacts=URI (default <out>/artifacts when
out is a URI) mirrors the stage artifacts there too, under a Ray actor's locks, so nodes share
stages without a shared file system (artifact_store.py; work= must be the same path on every node).

    1. load the sweep file and expand it into points (subjects x prompts x grid cells)
    2. compose every point's config up front: bad input fails before Ray starts
    3. attach to RAY_ADDRESS when set, else start a local Ray
    4. run the Tuner (or Tuner.restore when OUT/ray holds an unfinished run of this sweep)
    5. print progress while it runs, and a summary of the Parquet results at the end
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from db3d.core.config import ConfigError, compose, quote
from db3d.core.overrides import key_values
from db3d.core.progress import PROGRESS_DIR_ENV

from .artifact_store import start_locks
from .local_ray import LOOPBACK, host_problem, start_local_ray
from .sink import harmonize, read_results
from .spec import SweepError, expand, load_spec, resolve_metric
from .storage import is_uri, join, work_dir
from .tracking import check_trackers, tracking_callbacks

SWEEP_KEYS = ("sweep", "out", "reuse", "max_concurrent", "trainer", "max_failures", "data_root", "num_cpus",
              "cpu", "gpu", "work", "artifacts", "host", "scheduler")


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    """Sweep keys (sweep=, out=, ...) and the remaining Hydra overrides for every trial."""
    # `--no-reuse` (any number of leading dashes) is reuse=false, in its place among the arguments
    argv = ["reuse=false" if arg.split("=", 1)[0].lstrip("-") == "no-reuse" else arg for arg in argv]
    opts, overrides = key_values(argv, SWEEP_KEYS, lstrip="-")
    if "sweep" not in opts or "out" not in opts:
        raise SweepError("db3d sweep needs sweep=NAME_OR_PATH and out=DIR")
    return opts, overrides


def _param_space(spec, points, sweep: dict) -> dict:
    from ray import tune

    if len(points) == 1:  # one point (an Optuna cell): a plain value, no grid_search
        space = {"point": points[0].__dict__ | {"overrides": list(points[0].overrides)}, "sweep": sweep}
    else:
        space = {"point": tune.grid_search([p.__dict__ | {"overrides": list(p.overrides)} for p in points]),
                 "sweep": sweep}
    if spec.search:
        kinds = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
        space["search"] = {k: (tune.choice(v["choice"]) if "choice" in v else kinds[next(iter(v))](*next(iter(v.values()))))
                           for k, v in spec.search.items()}
    return space


class _Progress:
    """The sweep's progress line: trials done / running / failed, an ETA, and each running trial's
    stage and step (from the records its worker's progress bars write, db3d/progress.py).

    Printed on every trial start, completion and error, and at least every ``every_s`` seconds in
    between: Tune calls ``on_step_end`` about every 0.1 s, and ``tick`` prints when the last line is
    ``every_s`` old. Trial states are kept across the sweep's Tuners (one per grid point with
    Optuna), keyed by ``group`` (the Tuner's name) and Tune's trial id. Tune calls
    ``on_trial_start`` / ``on_trial_complete`` / ``on_trial_error`` before it sets the trial's new
    status, so the event's own trial is counted with the status the event means.
    """

    def __init__(self, total: int, progress_dir: Path | None = None, every_s: float = 10.0,
                 clock=time.time, out=None):
        self.total, self.progress_dir, self.every_s, self.clock = total, progress_dir, every_s, clock
        self.out = out or (lambda line: print(line, flush=True))
        self.start = clock()
        self.last_line = float("-inf")
        self.group = ""  # the Tuner now running (sweep.py sets it)
        self.trials: dict[tuple[str, str], tuple[str, str]] = {}  # (group, Tune id) -> (status, db3d trial id)
        self._callback = None

    @property
    def callback(self):
        """The Tune callback feeding this object (built on first use: Ray is imported then)."""
        if self._callback is None:
            from ray.tune import Callback

            outer = self

            class _CB(Callback):
                def on_trial_start(self, iteration, trials, trial, **info):
                    outer.event(trials, trial, "RUNNING")

                def on_trial_complete(self, iteration, trials, trial, **info):
                    outer.event(trials, trial, "TERMINATED")

                def on_trial_error(self, iteration, trials, trial, **info):
                    outer.event(trials, trial, "ERROR")

                def on_step_end(self, iteration, trials, **info):
                    outer.observe(trials)
                    outer.tick()

            self._callback = _CB()
        return self._callback

    def observe(self, trials, trial=None, status: str | None = None) -> None:
        """Record every trial's status (``trial``: the one an event is about, with ``status``)."""
        for t in trials:
            key = (self.group, str(t.trial_id))
            self.trials[key] = (status if t is trial else str(t.status), _trial_key(t))

    def event(self, trials, trial, status: str) -> None:
        self.observe(trials, trial, status)
        self.report()

    def tick(self) -> None:
        if self.clock() - self.last_line >= self.every_s:
            self.report()

    def report(self) -> None:
        from db3d.core.progress import read_records

        now = self.clock()
        records = read_records(self.progress_dir) if self.progress_dir is not None else []
        self.out(progress_line(self.trials, records, self.total, now - self.start, now))
        self.last_line = now


def _trial_key(trial) -> str:
    """db3d's trial id (results, folders) of a Tune trial, or "" when its config has no point."""
    config = getattr(trial, "config", None) or {}
    if "point" not in config:
        return ""
    from .trial import trial_config

    return trial_config(config)[1]


def progress_line(trials: dict, records: list[dict], total: int, elapsed: float, now: float) -> str:
    """``[db3d sweep] 2/12 done, 2 running, 0 failed, elapsed 95s, ETA 475s | <trial>: <stage> <step>/<total>
    (<age>s ago); ...`` from the trials' statuses and the workers' progress records.

    trials: (group, Tune trial id) -> (status, db3d trial id). A record belongs to a running trial
    when its "trial" is the Tune trial id or names the db3d trial id (a Ray Train run's name does);
    the newest one is shown. A closed record shows as "after <stage>" (the trial is between loops).
    """
    statuses = [status for status, _ in trials.values()]
    done, failed, running = (sum(s == k for s in statuses) for k in ("TERMINATED", "ERROR", "RUNNING"))
    finished = done + failed
    # time per finished trial x trials left; unknown until one has finished
    eta = f"{elapsed / finished * (total - finished):.0f}s" if finished else "after the first trial"
    line = f"[db3d sweep] {done}/{total} done, {running} running, {failed} failed, elapsed {elapsed:.0f}s, ETA {eta}"
    parts = []
    for (_, tune_id), (status, key) in sorted(trials.items()):
        if status != "RUNNING":
            continue
        mine = [r for r in records if r.get("trial") == tune_id or (key and key in str(r.get("trial", "")))]
        name = key or tune_id
        if not mine:
            parts.append(f"{name}: starting")
            continue
        r = max(mine, key=lambda r: r.get("time", 0.0))
        step = f"{r.get('step', 0)}/{r['total']}" if r.get("total") else f"{r.get('step', 0)}"
        where = f"after {r.get('stage', '?')}" if r.get("closed") else f"{r.get('stage', '?')}"
        parts.append(f"{name}: {where} {step} ({max(0.0, now - r.get('time', now)):.0f}s ago)")
    return line + (" | " + "; ".join(parts) if parts else "")


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """Set environment variables for the duration of the block (restored after)."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


TRAIN_HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_HEALTH_CHECK_S = "0.5"
"""How often a Ray Train controller polls its workers (Ray's default: 2 s). A stage's Train run
(trainer=ray_train) ends only at the poll after its workers finish, so the default cost ~2 s per
stage run; at 0.5 s the Ray Train test (7 Train runs) took 116.5 / 115.3 s against 128.1 / 127.2 s, and a
no-op run's wait after its worker returned fell from 3.0 s to 1.0 s (2 cores). A value the user
set is kept."""


def worker_env(progress_dir: Path) -> dict[str, str]:
    """The environment the sweep's Ray workers get: the progress folder and Ray Train's poll interval."""
    return {PROGRESS_DIR_ENV: str(progress_dir),
            TRAIN_HEALTH_CHECK_ENV: os.environ.get(TRAIN_HEALTH_CHECK_ENV, TRAIN_HEALTH_CHECK_S)}


def tune_setup(spec, sweep: dict, concurrent: int | None = None) -> tuple:
    """(search_alg, scheduler, metric, mode) for a Tuner: Optuna and ASHA on the metric and mode the
    sweep resolved (spec.resolve_metric: a quality signal by default, never the weighted loss)."""
    metric, mode = sweep.get("metric") or None, sweep.get("mode") or None
    search_alg = scheduler = None
    if spec.search_alg == "random" and spec.search:  # seeded draws: reruns try the same settings
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=spec.search_seed, max_concurrent=concurrent or 0)
    if spec.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=metric, mode=mode, seed=0)
    if spec.scheduler:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, **spec.scheduler["asha"])
    if spec.search_alg == "optuna" or scheduler is not None:
        return search_alg, scheduler, None, None  # the searcher and the scheduler hold metric and mode
    return search_alg, scheduler, metric if spec.metric else None, mode if spec.metric else None


def _fit_one(tune, trainable, spec, points, sweep: dict, storage: Path, name: str, opts: dict, progress) -> None:
    path = storage / name
    space = _param_space(spec, points, sweep)
    if tune.Tuner.can_restore(str(path)):
        print(f"[db3d sweep] resuming the sweep found at {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True, param_space=space)
    else:
        concurrent = int(opts.get("max_concurrent", spec.max_concurrent)) or None
        search_alg, scheduler, metric, mode = tune_setup(spec, sweep, concurrent)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(num_samples=max(1, spec.num_samples), search_alg=search_alg,
                                        scheduler=scheduler, metric=metric, mode=mode, reuse_actors=spec.reuse_actors,
                                        max_concurrent_trials=concurrent if search_alg is None or
                                        spec.search_alg == "optuna" else None),
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      callbacks=[progress.callback, *tracking_callbacks(spec.tracking, sweep)],
                                      failure_config=tune.FailureConfig(max_failures=int(opts.get("max_failures", 1))),
                                      verbose=0),
        )
    grid = tuner.fit()
    _record_stopped(grid, sweep)


def _record_stopped(grid, sweep: dict) -> None:
    """Trials that ended without a row (stopped early by the scheduler): a `stopped` row each."""
    from db3d.core.config import compose
    from db3d.core.results import result_row

    from .sink import trial_file, write_trial_row
    from .trial import trial_config

    results = sweep["results"] or Path(sweep["out"]) / "results"
    for res in grid:
        if res.config is None or "point" not in res.config:
            continue
        overrides, trial_id = trial_config(res.config)
        point = res.config["point"]
        target = trial_file(results, compose(overrides).method.name, point["subject_name"], trial_id)
        if isinstance(target, Path) and target.exists():
            continue
        if not isinstance(target, Path) and trial_id in set(read_results(results).get("trial_id", [])):
            continue
        status, error = ("failed", str(res.error)) if res.error else ("stopped", "stopped early by the scheduler")
        row = result_row(compose(overrides), point["subject_name"], point["class_noun"], point["prompt"], None,
                         status, error)
        row.update(trial_id=trial_id, sweep=sweep["name"], reuse=bool(sweep.get("reuse", True)))
        metrics = res.metrics or {}
        row.update({k: float(v) for k, v in metrics.items()
                    if (k in ("nerf_loss", "nerf_step") or k.startswith("quality.")) and isinstance(v, (int, float))})
        if isinstance(metrics.get("time_total_s"), (int, float)):  # what the trial cost until it was stopped
            seconds = float(metrics["time_total_s"])
            resources = sweep.get("resources", {})
            row.update({"seconds.total": seconds, "cpu_seconds.total": seconds * float(resources.get("cpu", 1)),
                        "gpu_seconds.total": seconds * float(resources.get("gpu", 0))})
        write_trial_row(results, row)


def _sweep_captions(points, overrides: list[str], spec, out: Path) -> list[str]:
    """R-precision retrieves each trial's prompt among the sweep's prompt set (DreamFusion's
    protocol), written to OUT/captions.txt, unless a caption file is given (metrics.captions=)."""
    if any(o.startswith("metrics.captions=") for o in [*overrides, *spec.overrides]):
        return []
    prompts = sorted({p.prompt for p in points})
    if len(prompts) < 2:  # one prompt retrieves itself: keep the subject's templates as candidates
        return []
    out.mkdir(parents=True, exist_ok=True)
    (out / "captions.txt").write_text("\n".join(prompts) + "\n")
    return [f"metrics.captions={quote(str(out / 'captions.txt'))}"]


def run_trial(config: dict) -> None:
    """The Tune trainable: trial.run_trial, imported in the trial's worker. The driver never imports
    the trial's modules (torch and the method: ~2 s), so it reaches Ray sooner."""
    from .trial import run_trial as run  # heavy (torch, the method), in the worker only

    run(config)


def run_sweep(argv: list[str]) -> int:
    # 1.-2. the sweep, its points, every trial's config checked before Ray starts
    opts, overrides = parse_args(argv)
    if host_problem(opts.get("host", LOOPBACK)):
        raise SweepError(host_problem(opts["host"]))
    spec = load_spec(opts["sweep"])
    if opts.get("scheduler", "").lower() in ("none", "off", "false"):  # the same sweep without early stopping
        spec.scheduler = {}
    elif opts.get("scheduler"):
        raise SweepError(f"scheduler={opts['scheduler']}: only scheduler=none (drop the sweep file's scheduler)")
    for key in ("cpu", "gpu"):  # per-trial resources from the command line (fractional GPUs allowed)
        if key in opts:
            spec.resources[key] = float(opts[key])
    uri = opts["out"] if is_uri(opts["out"]) else ""
    if uri:  # results to object storage; stages, trials and Tune state in a work folder
        out = Path(opts.get("work") or work_dir(uri, spec.name)).expanduser().resolve()
    else:
        out = Path(opts["out"]).expanduser().resolve()
    points = expand(spec, out, data_root=opts.get("data_root"))
    if not points:
        raise SweepError(f"{spec.path}: the sweep has no trials")
    from db3d.eval.models import check_metric_weights

    overrides = overrides + _sweep_captions(points, overrides, spec, out)
    configs = []
    for p in points:
        cfg = compose(list(p.overrides) + overrides)
        check_metric_weights(cfg)
        configs.append((cfg, p.subject))
        if cfg.dreambooth.num_workers > 1 and opts.get("trainer", "inline") != "ray_train":
            raise SweepError(f"dreambooth.num_workers={cfg.dreambooth.num_workers}: data-parallel DreamBooth runs "
                             "as a Ray Train TorchTrainer of that many workers; add trainer=ray_train")
    metric, mode = resolve_metric(spec, configs)  # ASHA / Optuna's metric, computable by every trial
    check_trackers(spec.tracking)
    reuse = opts.get("reuse", "true").lower() not in ("false", "0", "no")
    sweep = {"name": spec.name, "out": str(out), "reuse": reuse, "overrides": overrides,
             "trainer": opts.get("trainer", "inline"), "resources": spec.resources,
             "max_failures": int(opts.get("max_failures", 1)),
             "results": join(uri, "results") if uri else "", "views": join(uri, "views") if uri else "",
             "publish": join(uri, "trials") if uri else "", "scheduler": bool(spec.scheduler),
             "metric": metric, "mode": mode, "quality": dict(spec.quality),
             "probe": bool(spec.scheduler or metric.startswith("quality.") or spec.tracking),
             "artifacts": opts.get("artifacts") or (join(uri, "artifacts") if uri else "")}
    n_trials = len(points) * max(1, spec.num_samples)
    print(f"[db3d sweep] {spec.name}: {n_trials} trials -> {uri or out} (reuse={'on' if reuse else 'off'}"
          f"{', work folder ' + str(out) if uri else ''}"
          f"{f', {metric} ({mode})' if spec.scheduler or spec.search_alg == 'optuna' else ''})", flush=True)

    import ray  # heavy (~1 s): after the input checks, so bad input fails at once
    from ray import tune

    # 3. attach to a cluster (RAY_ADDRESS) or start a local Ray on loopback (host= to open it); the
    #    workers get the folder for their progress records (db3d/progress.py; the driver reads it, so
    #    on a cluster only the workers on a file system shared with the driver show their stage)
    progress_dir = out / "progress"
    shutil.rmtree(progress_dir, ignore_errors=True)  # an earlier run's records
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(runtime_env={"env_vars": worker_env(progress_dir)})
        else:
            with _environ(worker_env(progress_dir)):  # the local raylet's workers inherit it
                node_ip = start_local_ray(opts.get("host", LOOPBACK),
                                          num_cpus=int(opts["num_cpus"]) if "num_cpus" in opts else None)
            print(f"[db3d sweep] local Ray on {node_ip}", flush=True)

    # artifacts in an object store: the lock actor, owned by this driver for the sweep's lifetime
    locks = start_locks(sweep["artifacts"]) if reuse and sweep["artifacts"] else None

    # 4. the Tuner (one per grid point with Optuna, which cannot take grid_search); resume an
    #    interrupted run of the same sweep
    trial_resources = {k: v for k, v in spec.resources.items() if v}
    if sweep["trainer"] == "ray_train":  # the TorchTrainer's worker takes the GPU, the trial a CPU
        trial_resources = {"cpu": 1}
    trainable = tune.with_resources(run_trial, trial_resources)
    progress = _Progress(n_trials, progress_dir)
    # a trial whose last NeRF stage was already computed (reuse) reports no intermediate loss
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    groups = [(spec.name, points)] if spec.search_alg == "random" else \
        [(f"{spec.name}-{p.id}", [p]) for p in points]
    for name, group in groups:
        progress.group = name
        _fit_one(tune, trainable, spec, group, sweep, out / "ray", name, opts, progress)

    del locks  # held until every trial is done (a named actor without handles is collected)

    # 5. summary from the Parquet dataset (the source of truth, not Tune's own records)
    results = sweep["results"] or out / "results"
    for dataset in (results, sweep["views"] or out / "views"):  # every part with every column (nulls elsewhere)
        harmonize(dataset)
    df = read_results(results)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    ok, stopped, failed = (int(counts.get(k, 0)) for k in ("ok", "stopped", "failed"))
    print(f"[db3d sweep] finished: {ok}/{n_trials} trials ok, {stopped} stopped early, {failed} failed; "
          f"results in {results}")
    if len(df):
        swept = [c for c in df.columns if c.startswith("config.") and df[c].astype(str).nunique() > 1
                 and c not in ("config.out", "config.subject", "config.prompt", "config.class_noun")]
        cols = [c for c in ("method", "subject", "prompt", *swept, "status", "seconds.total") if c in df.columns]
        print(df[cols].to_string(index=False, max_rows=40))
    return 0 if failed == 0 and ok + stopped == n_trials else 1


def main(argv: list[str]) -> int:
    try:
        return run_sweep(argv)
    except (SweepError, ConfigError, FileNotFoundError) as err:
        print(f"db3d sweep: invalid input:\n{err}", file=sys.stderr)
        return 2
