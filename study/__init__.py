"""Ray Tune + Optuna study over SE placement, form, reduction, dropout and pooling."""
