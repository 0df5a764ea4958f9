"""The differential suite's machinery: PyTorch references for every op (reference.py), a .nn
model per op sample of the registry (opcases.py), the harness that compiles a .nn model and
compares it with PyTorch autograd (harness.py), and a generator of random well-typed models
written in both languages at once (models.py)."""
