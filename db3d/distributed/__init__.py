"""Ray: every `import ray` of db3d lives in this package (the library below runs without Ray).

    spec.py     sweeps/*.yaml -> trial points (no Ray)
    sink.py     hive-partitioned Parquet rows, written atomically (no Ray)
    trial.py    the Tune function trainable: one subject x prompt x hyperparameter point
    sweep.py    the driver: ray.init / attach, Tuner (or Tuner.restore), progress, summary
"""
