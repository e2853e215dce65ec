"""The passes `optimize()` runs, in order (the contract of a pass: edgekit/passes/__init__.py).

Adding a pass is a module with `check` and `run`, a line here, and its options (a field of
OptimizeOptions and a flag of `edgekit optimize`).
"""

from edgekit.passes import prune, quantize, simplify

PIPELINE = (simplify, quantize, prune)
