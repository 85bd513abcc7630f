"""MLflow: tag names, the tracking store, the child runs of a sweep, the model registry and
the leaderboard. No Ray here: the sweep layer feeds trial events to `SweepRecorder`."""
