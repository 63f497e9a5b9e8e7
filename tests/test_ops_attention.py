"Triton attention kernels (megalodon_lit.ops.attention) in the CPU interpreter: forward, backward, DropKey, decode."
import random

import pytest
import torch

pytest.importorskip("triton")

from megalodon_lit.attention import _softmax_attend, attention_mask, attention_ref
from megalodon_lit.core import rel_err
from megalodon_lit.ops.attention import attention_decode_triton, attention_triton, dropkey_mask

from conftest import KERNEL_DEVICE as DEV
# Measured in the interpreter (notebook 12): float32 outputs and gradients within 1e-6 of the float64 reference.
TOL = 1e-5


def _qkv(B, L, H, dz, dv, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, H, d, generator=g, dtype=torch.float64).to(DEV).requires_grad_() for d in (dz, dz, dv)]


def _masked_ref(q, k, v, allowed):
    return _softmax_attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), allowed, 0.0, False).transpose(1, 2)


def _check(q, k, v, ref, C, W, p=0.0, seed=0, blocks=None):
    g = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, (q, k, v), g)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    out = attention_triton(q32, k32, v32, C, W, p, dropkey=p > 0, seed=seed, blocks=blocks)
    g_out = torch.autograd.grad(out, (q32, k32, v32), g.float())
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *g_out), (ref, *g_ref)):
        assert rel_err(a, b) <= TOL, (name, rel_err(a, b))
    return out


@pytest.mark.parametrize("W,L,blocks", [(1, 37, None), (2, 29, (16, 16, 32))])
def test_matches_reference(W, L, blocks):
    q, k, v = _qkv(2, L, 3, 16, 24, seed=L)
    _check(q, k, v, attention_ref(q, k, v, 16, W), 16, W, blocks=blocks)


@pytest.mark.parametrize("B,L,H,dz,dv,C,W", [(2, 5, 3, 6, 3, 64, 3), (1, 20, 1, 4, 40, 3, 5), (1, 1, 1, 8, 8, 4, 1)])
def test_odd_shapes(B, L, H, dz, dv, C, W):
    "C > L, W beyond the first chunk, head dims below one tile, dv spread over three value tiles, a single token."
    q, k, v = _qkv(B, L, H, dz, dv, seed=B + L)
    _check(q, k, v, attention_ref(q, k, v, C, W), C, W)


def test_dropkey_same_mask_and_empty_rows():
    L, W, p, seed = 37, 2, 0.3, 4321
    q, k, v = _qkv(2, L, 2, 16, 32, seed=3)
    keep = dropkey_mask(2, 2, L, 16, W, p, seed, device=DEV)
    visible = attention_mask(*[torch.arange(L, device=DEV)] * 2, 16, W)
    assert not (keep & ~visible).any() and 0.2 < 1 - keep.sum().item() / (4 * visible.sum().item()) < 0.4
    out = _check(q, k, v, _masked_ref(q, k, v, keep), 16, W, p, seed)
    empty = ~keep.any(-1)
    assert empty.any() and (out.transpose(1, 2)[empty] == 0).all()


def test_decode_stream_matches_one_call():
    C, W, L = 16, 2, 45
    q, k, v = (t.detach().float() for t in _qkv(1, L, 2, 16, 32, seed=9))
    ck, cv, seen, outs, rng = q.new_zeros(1, W * C, 2, 16), q.new_zeros(1, W * C, 2, 32), 0, [], random.Random(0)
    while seen < L:
        n = min(rng.randint(1, 2 * C), L - seen, C - seen % C)
        ck, cv = torch.cat([ck, k[:, seen:seen + n]], 1), torch.cat([cv, v[:, seen:seen + n]], 1)
        outs.append(attention_decode_triton(q[:, seen:seen + n], ck, cv, seen, C, W))
        ck, cv, seen = ck[:, -W * C:], cv[:, -W * C:], seen + n
    assert rel_err(torch.cat(outs, 1), attention_ref(q.double(), k.double(), v.double(), C, W)) <= TOL


def test_errors():
    q, k, v = (t.detach().float() for t in _qkv(1, 8, 1, 16, 16, seed=0))
    with pytest.raises(NotImplementedError, match="backend='torch'"): attention_triton(q, k, v, 4, dropout=0.1)
    with pytest.raises(TypeError, match="float32 or bfloat16"): attention_triton(q.double(), k.double(), v.double(), 4)
    with pytest.raises(ValueError, match="new queries"): attention_decode_triton(q, k[:, :4], v[:, :4], 0, 4, 1)


def test_autotuned_launch_path(monkeypatch):
    "The GPU launch path (triton.autotune, grid from the chosen config) in the interpreter, with a stand-in timer."
    import megalodon_lit.ops.attention as ops
    monkeypatch.setattr(ops, "_TUNED", {})
    timings = iter(range(1000, 0, -1))  # each config timed faster than the one before: the last one wins
    fake_bench = lambda fn, quantiles: (fn(), [float(next(timings))] * 3)[1]
    for kernel in (ops._attention_fwd_kernel, ops._attention_bwd_dq_kernel, ops._attention_bwd_dkdv_kernel):
        ops._TUNED[kernel.__name__] = ops._autotuned(kernel, [(16, 16, 4, 2), (16, 32, 4, 2)], do_bench=fake_bench)
    q64, k64, v64 = _qkv(1, 40, 2, 16, 24, seed=2)
    ref = attention_ref(q64, k64, v64, 16, 2)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(DEV)
    g_ref = torch.autograd.grad(ref, (q64, k64, v64), g)
    q, k, v = (t.detach().float() for t in (q64, k64, v64))
    o, lse = ops._attention_fwd(q, k, v, 16, 2, 0.0, 0, tune=True)
    o_fix, lse_fix = ops._attention_fwd(q, k, v, 16, 2, 0.0, 0, tune=False)
    assert rel_err(o, ref) <= TOL and rel_err(o_fix, ref) <= TOL and rel_err(lse, lse_fix) <= TOL
    # both launch paths against the float64 reference (two float32 summation orders differ from each other by up
    # to ~2e-6 on their own: comparing them directly at 1e-6 failed for some upstream gradients)
    tuned = ops._attention_bwd(g.float(), q, k, v, o_fix, lse_fix, 16, 2, 0.0, 0, tune=True)
    fixed = ops._attention_bwd(g.float(), q, k, v, o_fix, lse_fix, 16, 2, 0.0, 0, tune=False)
    assert all(rel_err(a, r) <= TOL and rel_err(b, r) <= TOL for a, b, r in zip(tuned, fixed, g_ref))
    assert all(t.best_config.kwargs["BN"] == 32 for t in ops._TUNED.values())
