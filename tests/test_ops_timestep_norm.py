"""Triton TimestepNorm kernels (megalodon_lit.ops.timestep_norm) against the float64 loop `timestep_norm_ref`:
outputs, returned state and gradients (x, weight, bias, incoming mean and var), both kernel forms, streaming, edge
cases. Without a GPU the kernels run in Triton's interpreter on tiny irregular shapes.

Shapes are smaller than the notebook's (B=3, L=67, D=24/30), which CI also runs; L=37 is three tiles of 16, the last
partial, and groups of 4 and 5 channels. Measured (interpreter, float32 kernels vs float64 loop): every error <= 3e-7
on these cases; the bar is 1e-5.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from megalodon_lit.core import rel_err  # noqa: E402
from megalodon_lit.ops.timestep_norm import _tsn_triton, timestep_norm_triton  # noqa: E402
import megalodon_lit.core as core  # noqa: E402

# Kernel outputs start as NaN on every device here (not only in the interpreter): an element a kernel forgets to
# write then fails the parity checks on a GPU too.
core.POISON = True
from megalodon_lit.timestep_norm import _tsn_torch, timestep_norm, timestep_norm_ref  # noqa: E402

from conftest import KERNEL_DEVICE as DEV  # noqa: E402
TOL32 = 1e-5


def _case(B=3, L=67, D=24, G=6, prior=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x, w, b = rnd(B, L, D) * 1.5 + 0.7, rnd(D) * 0.3, rnd(D) * 0.3
    if prior: count, mean, var = torch.tensor([0, 5, 40])[:B], rnd(B, G) * 0.5, rnd(B, G).exp()
    else: count, mean, var = torch.zeros(B, dtype=torch.long), torch.zeros(B, G, dtype=torch.float64), torch.ones(B, G, dtype=torch.float64)
    mask = torch.zeros(B, L, dtype=torch.bool); mask[0, :3] = True; mask[1, L // 3: L // 2] = True; mask[-1, L - 9:] = True
    return [x, w, b, mean, var], count, mask, [rnd(B, L, D), rnd(B, G), rnd(B, G)]


def _run(fn, leaves, count, G, mask, ups, dtype, device="cpu"):
    leaves = [t.to(device, dtype).clone().requires_grad_() for t in leaves]
    x, w, b, mean, var = leaves
    y, n, M, V = fn(x, w, b, count.to(device), mean, var, G, 1e-5, None if mask is None else mask.to(device))
    gy, gm, gv = [u.to(device, dtype) for u in ups]
    grads = torch.autograd.grad((y * gy).sum() + (M * gm).sum() + (V * gv).sum(), leaves)
    return [t.detach().cpu() for t in (y, n, M, V, *grads)]


@pytest.mark.parametrize("split,chain,kw,G", [(True, False, dict(L=37, D=12, G=3), 3), (False, False, dict(L=37, D=10, G=2, prior=False), 2),
                                               (True, True, dict(L=37, D=12, G=3), 3)],
                         ids=["split-prior-D12G3", "loop-noprior-D10G2", "chained-prior-D12G3"])
def test_parity_outputs_and_gradients(split, chain, kw, G):
    leaves, count, mask, ups = _case(**kw)
    got = _run(lambda *a: _tsn_triton(*a, split=split, BT=16, chain=chain), [t.float() for t in leaves], count, G, mask, ups, torch.float32, DEV)
    ref = _run(timestep_norm_ref, [t.float() for t in leaves], count, G, mask, ups, torch.float64)
    assert torch.equal(got[1], ref[1])
    names = ("y", "count", "mean", "var", "dx", "dweight", "dbias", "dmean", "dvar")
    errs = {n: rel_err(a, e) for n, a, e in zip(names, got, ref) if n != "count"}
    assert max(errs.values()) <= TOL32, errs


def test_streaming_two_calls_equal_one():
    (x, w, b, mean, var), count, mask, _ = _case(B=3, L=45, D=8, G=2)
    x, w, b, mean, var = [t.float().to(DEV) for t in (x, w, b, mean, var)]
    count, mask = count.to(DEV), mask.to(DEV)
    whole = _tsn_triton(x, w, b, count, mean, var, 2, 1e-5, mask, BT=16)
    y1, n1, M1, V1 = _tsn_triton(x[:, :27], w, b, count, mean, var, 2, 1e-5, mask[:, :27], BT=16)
    y2, n2, M2, V2 = _tsn_triton(x[:, 27:], w, b, n1, M1, V1, 2, 1e-5, mask[:, 27:], BT=16)
    assert torch.equal(n2, whole[1])
    assert rel_err(torch.cat([y1, y2], 1), whole[0]) <= 1e-6
    assert rel_err(torch.cat([M2, V2]), torch.cat(whole[2:])) <= 1e-6


def test_all_padded_without_prior_passes_state_and_gradients_through():
    leaves, count, mask, ups = _case(B=2, L=5, D=8, G=2, prior=False)
    mask[0] = True                                   # nothing is ever counted in sequence 0
    got = _run(lambda *a: _tsn_triton(*a, BT=16), [t.float() for t in leaves], count, 2, mask, ups, torch.float32, DEV)
    ref = _run(timestep_norm_ref, [t.float() for t in leaves], count, 2, mask, ups, torch.float64)
    assert torch.equal(got[0][0], torch.zeros_like(got[0][0]))
    for a, e in zip(got, ref): assert rel_err(a, e) <= TOL32
    assert torch.equal(got[7][0], ups[1][0].float()) and torch.equal(got[8][0], ups[2][0].float())


def test_dispatch_and_errors():
    (x, w, b, mean, var), count, mask, _ = _case(B=2, L=9, D=8, G=2)
    x, w, b, mean, var = [t.float().to(DEV) for t in (x, w, b, mean, var)]
    count, mask = count.to(DEV), mask.to(DEV)
    y = timestep_norm(x, w, b, count, mean, var, 2, 1e-5, mask, backend="triton")[0]
    assert rel_err(y, _tsn_torch(x, w, b, count, mean, var, 2, 1e-5, mask)[0]) <= TOL32
    e = timestep_norm_triton(x[:, :0], w, b, count, mean, var, 2)
    assert e[0].shape == (2, 0, 8) and torch.equal(e[1], count)
    with pytest.raises(TypeError, match="float32 or bfloat16"): timestep_norm_triton(x.double(), w, b, count, mean, var, 2)
    with pytest.raises(ValueError, match="num_groups"): timestep_norm_triton(x, w, b, count, mean, var, 3)


def test_imports_without_a_device_or_the_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import megalodon_lit.ops.timestep_norm as m; print(m.timestep_norm_triton.__name__)"
    res = subprocess.run([sys.executable, "-c", code], env=env | {"CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True)
    assert res.returncode == 0 and "timestep_norm_triton" in res.stdout, res.stderr[-2000:]
