"""Experiment tracking: Ray Tune's logger callbacks, turned on by the sweep file's `tracking:` key.

    tracking: [tensorboard, mlflow, wandb]      # default []: none

    tensorboard  TBXLoggerCallback: event files in each Tune trial folder (OUT/ray/<sweep>/<trial>/),
                 `tensorboard --logdir OUT/ray`
    mlflow       MLflowLoggerCallback to a local file store, OUT/mlruns (`mlflow ui --backend-store-uri
                 file://OUT/mlruns`), one experiment per sweep, one run per trial
    wandb        WandbLoggerCallback offline, under OUT/wandb (`wandb sync OUT/wandb/wandb/offline-run-*`)

Each tracker gets every scalar a trial reports (the quality signal and losses of the last NeRF
stage every nerf.checkpoint_every steps, then the row's metric.*, seconds.*, cost columns) and,
when the trial ends, its turntable GIF (TensorBoard: an image summary holding the GIF, which
TensorBoard animates; MLflow: an artifact; W&B: a wandb.Video). The packages are optional: a
tracker whose package is missing fails the sweep before Ray starts, naming the package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from PIL import Image

from .spec import SweepError

PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
GIF = "turntable_rgb.gif"


def check_trackers(tracking: list[str]) -> None:
    missing = [f"{t} needs `pip install {PACKAGES[t]}`" for t in tracking if importlib.util.find_spec(PACKAGES[t]) is None]
    if missing:
        raise SweepError("tracking: " + "; ".join(missing))


def trial_gif(trial, sweep: dict) -> Path | None:
    """The finished trial's turntable GIF (its exports folder in the sweep's work folder), if any."""
    from .trial import trial_config  # heavy (~2.5 s: torch, the method): `db3d sweep` imports this module first

    if not trial.config or "point" not in trial.config:
        return None
    _, trial_id = trial_config(trial.config)  # Tune's results carry Tune's own trial_id, not db3d's
    path = Path(sweep["out"]) / "trials" / trial_id / "exports" / GIF
    return path if path.is_file() else None


def tracking_callbacks(tracking: list[str], sweep: dict) -> list:
    """The Tune callbacks for the named trackers (none for an empty list)."""
    if not tracking:
        return []
    check_trackers(tracking)
    out = Path(sweep["out"])
    callbacks = []
    if "tensorboard" in tracking:
        callbacks.append(_tensorboard(sweep)())
    if "mlflow" in tracking:
        # MLflow 3 keeps the file store in maintenance mode and refuses it unless told; a database
        # store needs SQLAlchemy (not in mlflow-skinny): the file store is what a local run has
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        callbacks.append(_mlflow(sweep)(tracking_uri=(out / "mlruns").resolve().as_uri(),
                                        experiment_name=sweep["name"]))
    if "wandb" in tracking:
        (out / "wandb").mkdir(parents=True, exist_ok=True)
        callbacks.append(_wandb(sweep)(project=sweep["name"], mode="offline", dir=str((out / "wandb").resolve())))
    return callbacks


def _tensorboard(sweep: dict):
    from ray.tune.logger import TBXLoggerCallback  # heavy (~0.8 s): only when a tracker is asked for

    class TensorBoard(TBXLoggerCallback):
        def log_trial_end(self, trial, failed: bool = False):
            gif = trial_gif(trial, sweep)
            writer = self._trial_writer.get(trial)
            if gif is not None and writer is not None:
                from tensorboardX.summary import Summary  # optional: the tracking extra

                width, height = Image.open(gif).size
                image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif.read_bytes())
                step = int((trial.last_result or {}).get("training_iteration", 0))
                writer.file_writer.add_summary(Summary(value=[Summary.Value(tag="turntable", image=image)]), step)
            super().log_trial_end(trial, failed)

    return TensorBoard


def _mlflow(sweep: dict):
    from ray.air.integrations.mlflow import MLflowLoggerCallback  # heavy: as in _tensorboard

    class MLflow(MLflowLoggerCallback):
        def log_trial_end(self, trial, failed: bool = False):
            gif = trial_gif(trial, sweep)
            run_id = self._trial_runs.get(trial)
            if gif is not None and run_id is not None:
                from mlflow.tracking import MlflowClient  # optional: the tracking extra

                MlflowClient(tracking_uri=self.tracking_uri).log_artifact(run_id, str(gif))
            super().log_trial_end(trial, failed)

    return MLflow


def _wandb(sweep: dict):
    from ray.air.integrations.wandb import WandbLoggerCallback  # heavy: as in _tensorboard

    class Wandb(WandbLoggerCallback):
        def log_trial_end(self, trial, failed: bool = False):
            gif = trial_gif(trial, sweep)
            if gif is not None and trial in self._trial_queues:
                import wandb  # optional: the tracking extra

                step = int((trial.last_result or {}).get("training_iteration", 0))
                self.log_trial_result(step, trial, {"turntable": wandb.Video(str(gif), format="gif"),
                                                    "training_iteration": step})
            super().log_trial_end(trial, failed)

    return Wandb
