"""The sharpness of a loss: the largest eigenvalue of its Hessian, by power iteration on the
compiled module's hvp(), checked against the eigenvalues of its dense hessian().

Gradient descent with learning rate lr is stable along a direction of curvature lam only while
lr < 2 / lam: the sharpness says how large a step this model can take here.

    python examples/curvature.py
"""
from pathlib import Path

import numpy as np

from nncompile.compiler import compile_and_load

model = compile_and_load(Path(__file__).with_name("curvature.nn"), dtype="float64")
rng = np.random.default_rng(0)
X = rng.standard_normal((60, 2))
y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)   # three classes, by two lines
params = model.init_params(seed=0)

v = {name: rng.standard_normal(p.shape) for name, p in params.items()}
for _ in range(300):   # power iteration: v <- H v / |H v| (the eigenvalue largest in size)
    hv = model.hvp(params, v, X=X, y=y)
    norm = np.sqrt(sum(np.sum(a ** 2) for a in hv.values()))
    v = {name: a / norm for name, a in hv.items()}
sharpness = sum(np.sum(a * b) for a, b in zip(model.hvp(params, v, X=X, y=y).values(), v.values()))

eigenvalues = np.linalg.eigvalsh(model.hessian(params, X=X, y=y))
print(f"params: {eigenvalues.size}; Hessian eigenvalues from {eigenvalues[0]:.4g} to {eigenvalues[-1]:.4g}")
print(f"sharpness by power iteration on hvp(): {sharpness:.6g} (largest eigenvalue of hessian(): "
      f"{eigenvalues[-1]:.6g})")
print(f"gradient descent is stable here for a learning rate below 2 / sharpness = {2 / sharpness:.4g}")
