"""The sweep on Ray: the search space, objectives and the winner's selection, Optuna and
ASHA, the trainable, the Tune callback that feeds MLflow, the shared-storage check, the
runner, and the plots. The only package that imports Ray."""
