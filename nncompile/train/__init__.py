"""Training compiled models: the trainer, datasets, learning-rate schedules and the CLI verb.

The optimisers themselves are compiled into the generated module (nncompile.optim); this
package feeds that module mini-batches and keeps the run's books. Optional dependencies
(scikit-learn for the digits set, tqdm, matplotlib) come with ``pip install 'nncompile[train]'``
and are imported only when used.
"""
from .checkpoint import TrainState
from .command import RunReport, run
from .data import Dataset, bind, load_source
from .history import History
from .schedules import Schedule, make_schedule
from .trainer import (
    GradCheck,
    LossCheck,
    Metrics,
    OverfitResult,
    TrainConfig,
    Trainer,
)

__all__ = [
    "Dataset", "GradCheck", "History", "LossCheck", "Metrics", "OverfitResult", "RunReport", "Schedule", "TrainConfig",
    "TrainState", "Trainer", "bind", "load_source", "make_schedule", "run",
]
