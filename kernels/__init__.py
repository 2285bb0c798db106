"""Kernels for the search ops: one folder per op (reference.py, pallas.py, ops.py).

See kernels/README.md for the pattern and for how to add an op.
"""
