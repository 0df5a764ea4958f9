"""Hyperparameter sweeps: ``nncompile sweep``, many trainer runs sharing one Optuna study.

Modules, one job each: ``space`` (the --space text), ``settings`` (what a trial may vary, and
its model file and config), ``study`` (storage, joining, the heartbeat that fails a dead
worker's trial), ``worker`` (the trial loop), ``report`` (trials.csv, trials.png, --show) and
``cli`` (the verb). Optuna is the optional extra ``pip install 'nncompile[sweep]'``, imported
only when a sweep runs.
"""
