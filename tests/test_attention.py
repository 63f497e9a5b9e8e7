"Sweeps for megalodon_lit.attention: fast == dense reference, gradients, RoPE, streaming, DropKey, errors."
import math
import random
from decimal import Decimal, getcontext

import pytest
import torch
from hypothesis import given, settings, strategies as st

from megalodon_lit.attention import (NormalizedQK, KVCache, apply_rope, attention, attention_chunked, attention_mask,
                                     attention_ref, attention_step, rope_angles, rope_freqs)
from megalodon_lit.core import rel_err

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=40)
# Measured worst cases over 150 random sweeps of these shapes: float32 1.2e-6, float64 9.3e-15 (outputs and grads).
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _qkv(B, L, H, dz, dv, dtype, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    mk = lambda d: torch.randn(B, L, H, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_(grad)
    return mk(dz), mk(dz), mk(dv)


@SETTINGS
@given(B=st.integers(1, 2), H=st.integers(1, 3), dz=st.sampled_from([2, 6, 8]), dv=st.sampled_from([3, 8]),
       C=st.integers(1, 9), L=st.integers(1, 30), W=st.integers(1, 3), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_chunked_matches_ref(B, H, dz, dv, C, L, W, dtype):
    q, k, v = _qkv(B, L, H, dz, dv, dtype, seed=L * 31 + C, grad=True)
    a, b = attention_ref(q, k, v, C, W), attention_chunked(q, k, v, C, W)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(L * 7 + W), dtype=torch.float64).to(dtype)
    ga, gb = torch.autograd.grad(a, (q, k, v), g), torch.autograd.grad(b, (q, k, v), g)
    assert rel_err(b, a) <= TOL[dtype]
    if dtype == torch.float64:
        for x, y in zip(gb, ga): assert rel_err(x, y) <= TOL[dtype]
        return
    # float32 gradients of a softmax can cancel (dq, dk are differences of nearly equal terms for some upstream
    # gradients; seen up to 1e-4 between two correct float32 paths). Judge the fast path against the float64
    # truth: no worse than twice the float32 reference's own error, or 1e-5 (float32 paths are held to about 1e-5 relative).
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    truth = torch.autograd.grad(attention_ref(q64, k64, v64, C, W), (q64, k64, v64), g.double())
    for x, y, t in zip(gb, ga, truth): assert rel_err(x, t) <= max(TOL[dtype], 2 * rel_err(y, t))


@pytest.mark.parametrize("W", [1, 2, 3])
@pytest.mark.parametrize("L", [7, 8, 21])
def test_bfloat16_no_worse_than_twice_torch(W, L):
    # bf16 against a float64 reference: at most 2x the error of the dense bf16 reference (PyTorch's own rounding)
    q, k, v = _qkv(2, L, 2, 8, 8, torch.float64, seed=L + W)
    exact = attention_ref(q, k, v, 8, W)
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    fast, dense = attention_chunked(qb, kb, vb, 8, W), attention_ref(qb, kb, vb, 8, W)
    assert fast.dtype == torch.bfloat16
    assert rel_err(fast.double(), exact) <= 2 * rel_err(dense.double(), exact)  # measured ratio <= 1.15


@pytest.mark.parametrize("W", [1, 2, 3])
def test_gradcheck_float64(W):
    q, k, v = _qkv(1, 7, 2, 4, 3, torch.float64, seed=W, grad=True)
    for fn in (attention_ref, attention_chunked):
        assert torch.autograd.gradcheck(lambda q, k, v: fn(q, k, v, 3, W), (q, k, v))


def test_mask_rule():
    p = torch.arange(12)
    m = attention_mask(p, p, 4, 2)
    assert m[5, 0] and m[5, 5] and not m[5, 6] and not m[9, 3] and m[9, 4]
    assert torch.equal(attention_mask(p, p, 4, 1), (p[None] <= p[:, None]) & (p[None] // 4 == p[:, None] // 4))


@SETTINGS
@given(W=st.integers(1, 3), C=st.integers(1, 8), L=st.integers(1, 40), seed=st.integers(0, 1000))
def test_streaming_any_partition(W, C, L, seed):
    q, k, v = _qkv(2, L, 2, 4, 3, torch.float64, seed=seed)
    rng, cache, outs, i = random.Random(seed), None, [], 0
    while i < L:
        n = rng.randint(1, 2 * C + 1)
        o, cache = attention_step(q[:, i:i + n], k[:, i:i + n], v[:, i:i + n], cache, C, W)
        outs.append(o); i += n
        # a fixed window of the last W·C positions, whatever the position
        assert cache.k.shape[1] == cache.v.shape[1] == W * C
    assert cache.seen == L
    assert rel_err(torch.cat(outs, 1), attention_ref(q, k, v, C, W)) <= 1e-12


def test_normalized_qk():
    m = NormalizedQK(12, 3).double()
    z = torch.randn(2, 5, 12, dtype=torch.float64) * 5
    q, k = m(z)
    assert q.shape == (2, 5, 3, 4) and torch.equal(q, k)  # zero-init gamma, beta: the two maps coincide
    zh = z.view(2, 5, 3, 4)
    expect = zh / torch.sqrt(zh.pow(2).mean(-1, keepdim=True) + 1e-5) / 2.0
    assert rel_err(q, expect) <= 1e-14
    with pytest.raises(ValueError, match="divisible"): NormalizedQK(10, 3)


def test_rope_norm_and_relative():
    x = torch.randn(2, 6, 3, 8, dtype=torch.float64)
    assert rel_err(apply_rope(x, 12345).norm(dim=-1), x.norm(dim=-1)) <= 1e-14
    qa, ka = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    s = lambda m, n: float((apply_rope(qa, m) * apply_rope(ka, n)).sum())
    for m, n in ((5, 2), (10_000_003, 10_000_000), (7, 7)):
        assert abs(s(m, n) - s(m - n, 0)) <= 1e-8
    assert abs(s(5, 2) - s(4, 2)) > 1e-6  # a test that can fail: scores do depend on the difference


def test_rope_interleaved_pairs():
    x = torch.zeros(1, 1, 1, 4, dtype=torch.float64); x[..., 0] = 1.0
    y = apply_rope(x, 1)
    assert torch.allclose(y[0, 0, 0], torch.tensor([math.cos(1), math.sin(1), 0, 0], dtype=torch.float64))


def test_rope_angle_exact_at_1e7():
    getcontext().prec = 50
    two_pi = 2 * Decimal("3.14159265358979323846264338327950288419716939937510")
    pos = torch.tensor([10_000_000, 9_999_991])
    ang = rope_angles(pos, 64)
    for j in (0, 1, 5, 31):
        th = float(rope_freqs(64)[j])
        for r, p in enumerate(pos.tolist()):
            exact = float((Decimal(p) * Decimal(th)) % two_pi)
            d = abs(float(ang[r, j]) - exact); d = min(d, 2 * math.pi - d)
            assert d <= 1e-8


def test_dropkey_statistics():
    torch.manual_seed(0)
    L, C, p = 64, 16, 0.3
    q, k = torch.randn(1, L, 2, 8), torch.randn(1, L, 2, 8)
    v = torch.eye(L).expand(1, 2, L, L).transpose(1, 2)
    for fn in (attention_ref, attention_chunked):
        probs = fn(q, k, v, C, 2, dropout=p, dropkey=True).transpose(1, 2)
        vis = attention_mask(torch.arange(L), torch.arange(L), C, 2)
        frac = float(((probs == 0) & vis).sum() / (2 * vis.sum()))
        assert abs(frac - p) < 0.03
        rows = probs.sum(-1)
        assert bool((((rows - 1).abs() < 1e-5) | (rows == 0)).all())
        assert bool((probs[..., ~vis] == 0).all())
    # p close to 1: some rows lose every key and must output zeros, not NaN
    out = attention_ref(q, k, v, C, 1, dropout=0.95, dropkey=True)
    assert torch.isfinite(out).all() and (out.abs().sum(-1) == 0).any()


def test_post_softmax_dropout_is_inverted():
    torch.manual_seed(1)
    L, p = 32, 0.5
    q, k = torch.zeros(1, L, 1, 4), torch.zeros(1, L, 1, 4)
    v = torch.ones(1, L, 1, 1)
    outs = torch.stack([attention_ref(q, k, v, L, 1, dropout=p) for _ in range(200)])
    assert abs(float(outs.mean()) - 1.0) < 0.05  # unbiased: probabilities rescaled by 1/(1−p)


def test_backend_dispatch(monkeypatch):
    q, k, v = _qkv(1, 10, 2, 4, 4, torch.float64)
    assert rel_err(attention(q, k, v, 4, 2, backend="torch"), attention(q, k, v, 4, 2, backend="ref")) <= 1e-12
    # CPU tensors reach the kernel only through the interpreter; without it the error says what is needed.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA"): attention(q, k, v, 4, backend="triton")


def test_bad_inputs():
    q, k, v = _qkv(2, 5, 3, 8, 4, torch.float32)
    with pytest.raises(ValueError, match="q and k"): attention_ref(q, k[:, :4], v, 4)
    with pytest.raises(ValueError, match="v must be"): attention_chunked(q, k, v[:, :, :2], 4)
    with pytest.raises(ValueError, match="q must be"): attention_ref(q[0], k, v, 4)
    with pytest.raises(TypeError, match="float16"): attention_chunked(q.half(), k.half(), v.half(), 4)
    with pytest.raises(TypeError, match="share a dtype"): attention_ref(q, k.double(), v, 4)
    with pytest.raises(ValueError, match="chunk_size"): attention_chunked(q, k, v, 0)
    with pytest.raises(ValueError, match="attention_chunks"): attention_ref(q, k, v, 4, 0)
    with pytest.raises(ValueError, match="dropout"): attention_ref(q, k, v, 4, 1, dropout=1.0)
    with pytest.raises(ValueError, match="even head_dim"): apply_rope(torch.randn(1, 2, 1, 7))
    with pytest.raises(ValueError, match="positions"): apply_rope(q, torch.arange(4))
    with pytest.raises(TypeError, match="integer"): rope_angles(torch.arange(4.0), 8)
    _, c = attention_step(q, k, v, None, 4, 2)
    with pytest.raises(ValueError, match="another batch size"): attention_step(q[:1], k[:1], v[:1], c, 4, 2)
    with pytest.raises(ValueError, match="head configuration"):
        attention_step(q[:, :, :2], k[:, :, :2], v[:, :, :2], c, 4, 2)
    with pytest.raises(ValueError, match="head configuration"):
        attention_step(q, k, torch.randn(2, 5, 3, 6), c, 4, 2)
    with pytest.raises(TypeError, match="KVCache"): attention_step(q, k, v, (c.k, c.v, 0), 4, 2)
    with pytest.raises(TypeError, match="cache.k"): attention_step(q.double(), k.double(), v.double(), c, 4, 2)
    with pytest.raises(ValueError, match="another chunk configuration"): attention_step(q, k, v, c, 4, 3)
