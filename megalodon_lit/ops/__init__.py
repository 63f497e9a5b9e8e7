"""Triton kernels for the hot paths: `ops.cema`, `ops.timestep_norm`, `ops.attention`.

Written by hand (nbdev does not create package folders' `__init__`); the modules themselves are exported from
nbs/10–12. Importing them needs `triton`; launching a kernel needs a CUDA device or `TRITON_INTERPRET=1`."""
