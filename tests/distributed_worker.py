"""One worker of tests/test_distributed.py, started by the real mpiexec: trains a model on the
arrays of an .npz file with the data-parallel step, then saves its own params and state.

Usage: mpiexec -n K python tests/distributed_worker.py MODEL.nn DATA.npz OUT_DIR BATCH EPOCHS OPTIMIZER [VAL]
The last VAL examples of DATA.npz (default 0) are the validation split, validated every epoch.
Writes OUT_DIR/rank{R}.npz on every worker R: param/NAME, state/NAME, steps, the all-reduces
of value_and_grad's own buffer (module_buffers) and of copies (copied), the examples this
worker validated (validated), and the epochs' validation figures (val/loss, val/acc, val/data_loss).
"""
import sys
from pathlib import Path

import numpy as np

from nncompile.train.data import Dataset
from nncompile.train.distributed import DataParallel, World
from nncompile.train.trainer import TrainConfig, Trainer


def main(model: str, data: str, out: str, batch: str, epochs: str, optimizer: str, val: str = "0") -> None:
    world = World.detect()
    assert world is not None and world.size > 1, "start me with mpiexec -n K (K > 1)"
    config = TrainConfig(dtype="float64", batch_size=int(batch), epochs=int(epochs), optimizer=optimizer, lr=1e-2,
                         val_split=0.0, seed=7, patience=0, val_every=1)
    trainer = Trainer(model, config)
    parallel = trainer.parallel = DataParallel(trainer, world)
    counts = {"module_buffers": 0, "copied": 0, "validated": 0}
    summed, evaluate = parallel.sum, trainer.evaluate

    def counting_sum(buffer, *more):
        counts["copied" if np.shares_memory(buffer, parallel.flat) else "module_buffers"] += 1
        summed(buffer, *more)

    def counting_evaluate(params, part, model_state=None):
        counts["validated"] += len(part)
        return evaluate(params, part, model_state)

    parallel.sum, trainer.evaluate = counting_sum, counting_evaluate
    arrays = dict(np.load(data))
    held = len(next(iter(arrays.values()))) - int(val)
    train = trainer.prepare(Dataset.from_arrays({k: v[:held] for k, v in arrays.items()}))
    validation = trainer.prepare(Dataset.from_arrays({k: v[held:] for k, v in arrays.items()})) if int(val) else None
    state = world.share(trainer.init_state() if world.root else None, None, trainer)
    state = trainer.train(train, validation, state=state)
    saved = {f"param/{k}": v for k, v in state.params.items()}
    saved.update({f"state/{k}": v for k, v in (state.model_state or {}).items()})
    if validation is not None:
        saved.update({f"val/{k}": np.array([r[f"val_{k}"] for r in state.history], dtype=np.float64)
                      for k in ("loss", "acc", "data_loss")})
    np.savez(Path(out) / f"rank{world.rank}.npz", steps=np.array(state.step), **counts, **saved)


if __name__ == "__main__":
    main(*sys.argv[1:])
