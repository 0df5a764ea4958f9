"""One worker of tests/test_distributed.py, started by the real mpiexec: trains a model on the
arrays of an .npz file with the data-parallel step, then saves its own params and state.

Usage: mpiexec -n K python tests/distributed_worker.py MODEL.nn DATA.npz OUT_DIR BATCH EPOCHS OPTIMIZER
Writes OUT_DIR/rank{R}.npz (param/NAME, state/NAME) on every worker R.
"""
import sys
from pathlib import Path

import numpy as np

from nncompile.train.data import Dataset
from nncompile.train.distributed import DataParallel, World
from nncompile.train.trainer import TrainConfig, Trainer


def main(model: str, data: str, out: str, batch: str, epochs: str, optimizer: str) -> None:
    world = World.detect()
    assert world is not None and world.size > 1, "start me with mpiexec -n K (K > 1)"
    config = TrainConfig(dtype="float64", batch_size=int(batch), epochs=int(epochs), optimizer=optimizer, lr=1e-2,
                         val_split=0.0, seed=7, patience=0)
    trainer = Trainer(model, config)
    trainer.parallel = DataParallel(trainer, world)
    arrays = dict(np.load(data))
    state = world.share(trainer.init_state() if world.root else None, None, trainer)
    state = trainer.train(trainer.prepare(Dataset.from_arrays(arrays)), None, state=state)
    saved = {f"param/{k}": v for k, v in state.params.items()}
    saved.update({f"state/{k}": v for k, v in (state.model_state or {}).items()})
    np.savez(Path(out) / f"rank{world.rank}.npz", steps=np.array(state.step), **saved)


if __name__ == "__main__":
    main(*sys.argv[1:])
