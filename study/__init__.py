"""Studies: the CLI and every Ray Tune, Optuna and MLflow call."""
