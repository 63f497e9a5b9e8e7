"""CEMA: the three computation paths agree (outputs, final state, gradients), streaming, coefficients, init, input errors.

The reference is `cema_recurrent` run in float64 on the same (upcast) inputs; `cema_fft` and `cema_chunked`
are judged against it with the normwise `rel_err` of `megalodon_lit.core`. Tolerances come from measured
error levels (see the comment above each constant).
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from megalodon_lit.cema import ComplexEMA, cema_chunked, cema_coeffs, cema_fft, cema_recurrent
from megalodon_lit.core import assert_close, rel_err

# Tolerances, from the worst errors measured over these sweeps (and ~300 more random cases) with |q| up to 0.9988,
# L <= 451, unit-scale inputs:
#   float64, fft/chunked vs the float64 recurrence: y, h <= 3e-14; gradients <= 2.1e-14 (theta), else <= 9e-15.
#   float32 vs the float64 recurrence on the same float32 inputs and coefficients: y, h <= 9e-7 (the float32
#   recurrence itself 6e-7); gradients <= 1.0e-6, except d theta <= 5.4e-6 (the float32 recurrence itself;
#   fft 4.2e-6, chunked 3.5e-6): theta's gradient is one sum per channel over B*N*L terms that largely cancel.
#   bf16 input: ||y - y64|| / ||round_bf16(y64) - y64|| <= 1.00; h identical to the float32 run on the same input.
#   Streaming (split calls vs one call): float64 <= 7e-15, float32 <= 3e-7.
TOL64 = 1e-12
TOL32 = 1e-5
TOL32_DTHETA = 1e-5  # the acceptance target; measured worst 5.4e-6 (the float32 recurrence itself)
TOL_STREAM64 = 1e-12

# Deterministic examples (same cases on every run), no example database written into the repository.
SWEEP = settings(max_examples=60, deadline=None, database=None, derandomize=True)

PATHS = {
    "recurrent": lambda x, p, q, g, h0, T: cema_recurrent(x, p, q, g, h0),
    "fft": lambda x, p, q, g, h0, T: cema_fft(x, p, q, g, h0),
    "chunked": lambda x, p, q, g, h0, T: cema_chunked(x, p, q, g, h0, chunk_size=T),
}
CDTYPE = {torch.float64: torch.complex128, torch.float32: torch.complex64, torch.bfloat16: torch.complex64}


def make_params(D, N, seed, dtype=torch.float64):
    "alpha, delta, theta, gamma with |q| spread over about (0.5, 0.999) (long and short memories), nonzero imag gamma."
    gen = torch.Generator().manual_seed(seed)
    alpha = torch.randn(D, N, 1, generator=gen, dtype=torch.float64) * 0.5
    delta = torch.rand(D, N, 1, generator=gen, dtype=torch.float64) * 7 - 6
    theta = torch.randn(D, 1, 1, generator=gen, dtype=torch.float64) * 2
    gamma = torch.randn(D, N, 2, generator=gen, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (alpha, delta, theta, gamma))


def make_inputs(B, D, N, L, with_h0, seed, dtype=torch.float64):
    "x [B, D, L] in `dtype` and h0 [B, D, N] (complex of the matching width) or None."
    gen = torch.Generator().manual_seed(seed + 7919)
    x = torch.randn(B, D, L, generator=gen, dtype=torch.float64).to(dtype)
    h0 = None
    if with_h0:
        h0 = torch.complex(torch.randn(B, D, N, generator=gen, dtype=torch.float64),
                           torch.randn(B, D, N, generator=gen, dtype=torch.float64)).to(CDTYPE[dtype])
    return x, h0


def up(t):
    "Upcast to float64 / complex128 (None passes through)."
    if t is None: return None
    return t.to(torch.complex128) if t.is_complex() else t.to(torch.float64)


def reference(x, p, q, g, h0):
    "The float64 recurrence on the upcast inputs: the ground truth for every comparison."
    return cema_recurrent(up(x), up(p), up(q), up(g), up(h0))


def check_out(y, h, x, N):
    B, D, L = x.shape
    assert y.shape == (B, D, L), f"y shape {tuple(y.shape)}"
    assert y.dtype == x.dtype, f"y dtype {y.dtype} for x dtype {x.dtype}"
    assert h.shape == (B, D, N), f"h shape {tuple(h.shape)}"
    assert h.dtype == CDTYPE[x.dtype], f"h dtype {h.dtype} for x dtype {x.dtype}"


def run_case(B, D, N, L, T, with_h0, seed, dtype):
    "Run every path on one case; return {path: (rel_err y, rel_err h)} against the float64 recurrence."
    pdtype = torch.float32 if dtype == torch.bfloat16 else dtype
    p, q, g = cema_coeffs(*make_params(D, N, seed, pdtype))
    x, h0 = make_inputs(B, D, N, L, with_h0, seed, dtype)
    y_ref, h_ref = reference(x, p, q, g, h0)
    errs = {}
    for name, fn in PATHS.items():
        y, h = fn(x, p, q, g, h0, T)
        check_out(y, h, x, N)
        errs[name] = (rel_err(y, y_ref), rel_err(h, h_ref))
    return errs


def assert_errs(errs, tol, case):
    bad = {k: v for k, v in errs.items() if not (v[0] <= tol and v[1] <= tol)}
    assert not bad, f"{case}: (rel err y, rel err h) above {tol:.0e}: {bad}"


# Hand-picked edge cases: (B, D, N, L, chunk, with_h0). L < chunk, L == chunk, L a multiple of the chunk,
# L one past a multiple, chunk 1, L 1, N 1, D 1, non-powers of two everywhere.
CASES = [
    (1, 1, 1, 1, 1, False),
    (1, 1, 1, 1, 64, True),
    (2, 3, 2, 7, 7, True),
    (3, 5, 5, 16, 3, False),
    (2, 9, 16, 80, 16, True),
    (1, 7, 16, 79, 16, True),
    (3, 6, 5, 65, 64, True),
    (2, 9, 2, 63, 64, False),
    (1, 3, 16, 40, 7, True),
    (2, 5, 1, 33, 1, True),
    (3, 1, 16, 17, 16, False),
    (1, 9, 5, 64, 64, True),
]

sweep = given(
    B=st.integers(1, 3), D=st.integers(1, 9), N=st.sampled_from([1, 2, 5, 16]), L=st.integers(1, 80),
    T=st.sampled_from([1, 3, 7, 16, 64]), with_h0=st.booleans(), seed=st.integers(0, 2**31 - 1))


# 1. outputs and final state: fft and chunked == recurrence

@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL64), (torch.float32, TOL32)], ids=["f64", "f32"])
@pytest.mark.parametrize("B,D,N,L,T,with_h0", CASES)
def test_paths_agree_cases(B, D, N, L, T, with_h0, dtype, tol):
    assert_errs(run_case(B, D, N, L, T, with_h0, seed=B * 1000 + D * 100 + L, dtype=dtype), tol, (B, D, N, L, T, with_h0))


@settings(SWEEP)
@sweep
def test_paths_agree_sweep_f64(B, D, N, L, T, with_h0, seed):
    assert_errs(run_case(B, D, N, L, T, with_h0, seed, torch.float64), TOL64, (B, D, N, L, T, with_h0, seed))


@settings(SWEEP)
@sweep
def test_paths_agree_sweep_f32(B, D, N, L, T, with_h0, seed):
    assert_errs(run_case(B, D, N, L, T, with_h0, seed, torch.float32), TOL32, (B, D, N, L, T, with_h0, seed))


def _bf16_case(B, D, N, L, T, with_h0, seed):
    p, q, g = cema_coeffs(*make_params(D, N, seed, torch.float32))
    x, h0 = make_inputs(B, D, N, L, with_h0, seed, torch.bfloat16)
    y64, h64 = reference(x, p, q, g, h0)
    # House-style rule 5: the bf16 output may be at most twice as far from the float64 truth as the truth
    # merely rounded to bf16.
    e_round = rel_err(y64.to(torch.bfloat16), y64)
    for name, fn in PATHS.items():
        y, h = fn(x, p, q, g, h0, T)
        check_out(y, h, x, N)
        y32, h32 = fn(x.float(), p, q, g, h0, T)
        case = (name, B, D, N, L, T, with_h0, seed)
        # "computed in float32, returned in bf16": y is the float32 result on the same input, rounded once
        # (bf16 keeps 8 significant bits: rounding moves a value by at most 2^-8 of itself), plus float32 noise.
        assert rel_err(y, y32) <= 2.0**-8 + TOL32, (case, rel_err(y, y32))
        assert rel_err(h, h32) <= TOL32, (case, rel_err(h, h32))
        assert rel_err(y, y64) <= 2 * e_round, (case, rel_err(y, y64), e_round)
        assert rel_err(h, h64) <= TOL32, (case, rel_err(h, h64))


@pytest.mark.parametrize("B,D,N,L,T,with_h0", CASES[2:8])
def test_paths_bf16_input_cases(B, D, N, L, T, with_h0):
    _bf16_case(B, D, N, L, T, with_h0, seed=L)


@settings(SWEEP, max_examples=30)
@sweep
def test_paths_bf16_input_sweep(B, D, N, L, T, with_h0, seed):
    _bf16_case(B, D, N, L, T, with_h0, seed)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL64), (torch.float32, TOL32)], ids=["f64", "f32"])
@pytest.mark.parametrize("L", [300, 451])
def test_fft_and_chunked_default_chunk_long(L, dtype, tol):
    "Longer sequences, with chunked at its default chunk_size (L not a multiple of it)."
    B, D, N = 2, 5, 16
    p, q, g = cema_coeffs(*make_params(D, N, L, dtype))
    x, h0 = make_inputs(B, D, N, L, True, L, dtype)
    y64, h64 = reference(x, p, q, g, h0)
    for fn in (cema_fft, cema_chunked):
        y, h = fn(x, p, q, g, h0)
        check_out(y, h, x, N)
        assert_close(y, y64, tol, f"{fn.__name__} y")
        assert_close(h, h64, tol, f"{fn.__name__} h")


# 2. gradients of all three paths agree

def grads(path, T, x, params, h0, gy, gh, coeff_values=None):
    """Gradients of <y, gy> + Re<h, gh> w.r.t. x, alpha, delta, theta, gamma, h0 (through cema_coeffs).

    `coeff_values` (p, q, g), if given, replace the values of the computed coefficients while keeping their
    derivatives: the float64 reference for a float32 run uses the float32-rounded coefficients, exactly as the
    output comparisons do, so that what is measured is the error of the path, not of rounding q to float32
    (which alone moves gradients by ~L * 6e-8 relative when |q| is near 1; `cema_coeffs` is tested on its own)."""
    leaves = [x.detach().clone().requires_grad_()] + [t.detach().clone().requires_grad_() for t in params]
    h0l = None if h0 is None else h0.detach().clone().requires_grad_()
    coeffs = cema_coeffs(*leaves[1:])
    if coeff_values is not None:
        coeffs = [c + (up(v) - c).detach() for c, v in zip(coeffs, coeff_values)]
    y, h = PATHS[path](leaves[0], *coeffs, h0l, T)
    loss = (y * gy).sum() + (h.real * gh.real + h.imag * gh.imag).sum()
    inputs = leaves + ([h0l] if h0l is not None else [])
    return dict(zip(["x", "alpha", "delta", "theta", "gamma", "h0"], torch.autograd.grad(loss, inputs)))


GRAD_CASES = [(2, 24, 16, 63, 16, True), (2, 24, 16, 63, 16, False), (3, 9, 5, 40, 7, True), (1, 5, 2, 17, 64, True),
              (9, 5, 4, 21, 8, True)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL64), (torch.float32, TOL32)], ids=["f64", "f32"])
@pytest.mark.parametrize("B,D,N,L,T,with_h0", GRAD_CASES)
def test_gradients_agree(B, D, N, L, T, with_h0, dtype, tol):
    seed = 17 * L + D
    params = make_params(D, N, seed, dtype)
    x, h0 = make_inputs(B, D, N, L, with_h0, seed, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    gy = torch.randn(B, D, L, generator=gen, dtype=torch.float64)
    gh = torch.complex(torch.randn(B, D, N, generator=gen, dtype=torch.float64),
                       torch.randn(B, D, N, generator=gen, dtype=torch.float64))
    ref = grads("recurrent", T, up(x), [up(t) for t in params], up(h0), gy, gh, cema_coeffs(*params))
    for path in PATHS:
        got = grads(path, T, x, params, h0, gy.to(dtype), gh.to(CDTYPE[dtype]))
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k].dtype == (CDTYPE[dtype] if k == "h0" else dtype), (path, k, got[k].dtype)
            ktol = TOL32_DTHETA if (k == "theta" and dtype == torch.float32) else tol
            assert_close(got[k], ref[k], ktol, f"{path} d{k} ({B},{D},{N},{L},T={T},h0={with_h0})")


# 3. gradcheck in float64

@pytest.mark.parametrize("path,T", [("chunked", 4), ("chunked", 1), ("chunked", 64), ("fft", 4), ("recurrent", 4)])
def test_gradcheck(path, T):
    B, D, N, L = 2, 3, 4, 11
    alpha, delta, theta, gamma = make_params(D, N, 5)
    x, h0 = make_inputs(B, D, N, L, True, 5)

    def f(x, alpha, delta, theta, gamma, h0):
        y, h = PATHS[path](x, *cema_coeffs(alpha, delta, theta, gamma), h0, T)
        return y, torch.view_as_real(h)

    inputs = tuple(t.clone().requires_grad_() for t in (x, alpha, delta, theta, gamma, h0))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# 4. streaming: one call on L == successive calls with the state carried

@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("pieces", [(23, 27), (16, 34), (1, 49), (49, 1), (5, 11, 34), (32, 18)])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL_STREAM64), (torch.float32, TOL32)], ids=["f64", "f32"])
def test_streaming_identity(path, pieces, with_h0, dtype, tol):
    B, D, N, L, T = 2, 5, 16, sum(pieces), 16
    p, q, g = cema_coeffs(*make_params(D, N, 3, dtype))
    x, h0 = make_inputs(B, D, N, L, with_h0, 3, dtype)
    fn = PATHS[path]
    y_full, h_full = fn(x, p, q, g, h0, T)
    ys, h, s = [], h0, 0
    for n in pieces:
        y, h = fn(x[..., s:s + n], p, q, g, h, T)
        ys.append(y); s += n
    assert_close(torch.cat(ys, -1), y_full, tol, f"{path} streamed y {pieces}")
    assert_close(h, h_full, tol, f"{path} streamed h {pieces}")


@pytest.mark.parametrize("path", list(PATHS))
def test_zero_state_equals_none(path):
    B, D, N, L = 2, 3, 5, 21
    p, q, g = cema_coeffs(*make_params(D, N, 11))
    x, _ = make_inputs(B, D, N, L, False, 11)
    y0, h0 = PATHS[path](x, p, q, g, None, 8)
    y1, h1 = PATHS[path](x, p, q, g, torch.zeros(B, D, N, dtype=torch.complex128), 8)
    assert_close(y1, y0, TOL64, "y"); assert_close(h1, h0, TOL64, "h")


# 5. coefficients, dtype rules, ComplexEMA

@pytest.mark.parametrize("D,N", [(1, 1), (7, 5), (9, 16)])
def test_cema_coeffs_formulas(D, N):
    alpha, delta, theta, gamma = make_params(D, N, D * N)
    alpha = alpha * 8  # reach saturated sigmoids too
    p, q, g = cema_coeffs(alpha, delta, theta, gamma)
    assert p.shape == q.shape == g.shape == (D, N)
    assert p.dtype == torch.float64 and q.dtype == g.dtype == torch.complex128
    assert not p.is_complex() and q.is_complex() and g.is_complex()
    assert ((p > 0) & (p < 1)).all()
    assert ((q.abs() > 0) & (q.abs() < 1)).all()
    sa, sd = torch.sigmoid(alpha[..., 0]), torch.sigmoid(delta[..., 0])
    assert_close(p, sa, 1e-15, "p")
    assert_close(q.abs(), 1 - sa * sd, 1e-14, "|q|")
    k = torch.arange(1, N + 1, dtype=torch.float64)
    phase = k * torch.sigmoid(theta[:, 0]) * 2 * math.pi / N  # [D, N]
    wrapped = torch.remainder(q.angle() - phase + math.pi, 2 * math.pi) - math.pi
    assert wrapped.abs().max() < 1e-12, wrapped.abs().max()
    assert_close(q, torch.polar(1 - sa * sd, phase), 1e-14, "q")
    assert_close(g, torch.complex(gamma[..., 0], gamma[..., 1]) / math.sqrt(N), 1e-15, "g")


def test_cema_coeffs_dtypes():
    D, N = 5, 3
    params = make_params(D, N, 0)
    p, q, g = cema_coeffs(*(t.float() for t in params))
    assert (p.dtype, q.dtype, g.dtype) == (torch.float32, torch.complex64, torch.complex64)
    p64, q64, g64 = cema_coeffs(*params)
    assert_close(p, p64, 1e-6, "p f32"); assert_close(q, q64, 1e-6, "q f32"); assert_close(g, g64, 1e-6, "g f32")
    # bf16 parameters: upcast to float32 first, i.e. equal to the float32 coefficients of the bf16-rounded values
    bf = tuple(t.to(torch.bfloat16) for t in params)
    pb, qb, gb = cema_coeffs(*bf)
    assert (pb.dtype, qb.dtype, gb.dtype) == (torch.float32, torch.complex64, torch.complex64)
    pr, qr, gr = cema_coeffs(*(t.float() for t in bf))
    assert torch.equal(pb, pr) and torch.equal(qb, qr) and torch.equal(gb, gr)


def test_complex_ema_parameters_and_init():
    torch.manual_seed(0)
    D, N = 1024, 16
    m = ComplexEMA(embed_dim=D, ndim=N)
    shapes = {n: tuple(t.shape) for n, t in m.named_parameters()}
    assert shapes == {"alpha": (D, N, 1), "delta": (D, N, 1), "theta": (D, 1, 1), "gamma": (D, N, 2), "omega": (D, 1)}
    assert all(t.dtype == torch.float32 for t in m.parameters())
    # Sample statistics (4 standard errors): 16384 draws for alpha/delta/gamma, 1024 for omega.
    for name in ("alpha", "delta"):
        t = getattr(m, name).detach()
        assert abs(t.mean().item()) < 4 * 0.2 / math.sqrt(t.numel()), (name, t.mean())
        assert abs(t.std().item() - 0.2) < 4 * 0.2 / math.sqrt(2 * t.numel()), (name, t.std())
    gamma = m.gamma.detach()
    assert torch.equal(gamma[..., 1], torch.zeros(D, N))
    assert abs(gamma[..., 0].mean().item()) < 4 / math.sqrt(D * N)
    assert abs(gamma[..., 0].std().item() - 1) < 4 / math.sqrt(2 * D * N)
    omega = m.omega.detach()
    assert omega.abs().max() <= 1
    assert abs(omega.mean().item()) < 4 * 0.25 / math.sqrt(D)
    assert abs(omega.std().item() - 0.25) < 4 * 0.25 / math.sqrt(2 * D)
    f = torch.sigmoid(m.theta.detach().double()).flatten()
    ladder = torch.exp(-torch.arange(1, D + 1, dtype=torch.float64) * math.log(D) / D)
    assert_close(f.sort().values, ladder.sort().values, 1e-6, "sigmoid(theta) vs ladder")
    assert not (f[1:] <= f[:-1]).all() and not (f[1:] >= f[:-1]).all(), "theta ladder is not permuted"


@pytest.mark.parametrize("D,N", [(1, 4), (2, 1), (7, 16)])
def test_complex_ema_small_widths(D, N):
    "Upstream's ladder has f = 1 (infinite logit) at D = 1; the layer must still be finite and usable."
    torch.manual_seed(D)
    m = ComplexEMA(embed_dim=D, ndim=N)
    assert all(torch.isfinite(t).all() for t in m.parameters())
    y, h = m(torch.randn(2, D, 9))
    assert torch.isfinite(y).all() and torch.isfinite(torch.view_as_real(h)).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL64), (torch.float32, TOL32)], ids=["f64", "f32"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_complex_ema_forward_backends(dtype, tol, with_h0):
    torch.manual_seed(1)
    B, D, N, L = 2, 7, 5, 45
    m = ComplexEMA(embed_dim=D, ndim=N).to(dtype)
    x, h0 = make_inputs(B, D, N, L, with_h0, 1, dtype)
    out = {}
    for backend in ("ref", "torch", "auto"):
        m.zero_grad()
        xl = x.clone().requires_grad_()
        y, h = m(xl, h0, backend=backend)
        check_out(y, h, x, N)
        (y.square().sum() + h.abs().square().sum()).backward()
        out[backend] = (y.detach(), h.detach(), xl.grad, {n: t.grad.clone() for n, t in m.named_parameters()})
    with torch.no_grad():
        p, q, g = cema_coeffs(up(m.alpha), up(m.delta), up(m.theta), up(m.gamma))
        y_ref, h_ref = cema_recurrent(up(x), p, q, g, up(h0))
        y_ref = y_ref + up(m.omega) * up(x)
    for backend, (y, h, dx, dparams) in out.items():
        assert_close(y, y_ref, tol, f"{backend} y vs cema + omega*x")
        assert_close(h, h_ref, tol, f"{backend} h")
        assert_close(dx, out["ref"][2], tol, f"{backend} dx")
        for n in dparams: assert_close(dparams[n], out["ref"][3][n], tol, f"{backend} d{n}")


# 6. clear errors on bad input

def _names(msg, *tokens):
    "True if `msg` mentions one of `tokens` as a whole word."
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(t)}(?![A-Za-z0-9_])", msg) for t in tokens)


def _raises(exc, fn, *tokens):
    with pytest.raises(exc) as info: fn()
    assert _names(str(info.value), *tokens), f"message {str(info.value)!r} names none of {tokens}"


def _shape_tokens(t):
    s = list(t.shape)
    return [str(s), str(tuple(s))]


def _good(B=2, D=3, N=4, L=6):
    p, q, g = cema_coeffs(*make_params(D, N, 0, torch.float32))
    x, h0 = make_inputs(B, D, N, L, True, 0, torch.float32)
    return x, p, q, g, h0


@pytest.mark.parametrize("path", list(PATHS))
def test_error_float16(path):
    x, p, q, g, h0 = _good()
    _raises(TypeError, lambda: PATHS[path](x.half(), p, q, g, h0, 4), "float16")


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("arg", ["x", "p", "q", "g", "h0"])
@pytest.mark.parametrize("change", ["drop", "add"])
def test_error_wrong_rank(path, arg, change):
    args = dict(zip(["x", "p", "q", "g", "h0"], _good()))
    t = args[arg]
    args[arg] = t[0] if change == "drop" else t.unsqueeze(0)
    _raises(ValueError, lambda: PATHS[path](*args.values(), 4), arg, *_shape_tokens(args[arg]))


MISMATCH = {  # which argument gets which wrong shape (B=2, D=3, N=4, L=6), and what the message may name
    "p D": ("p", (4, 4), ("p", "D")),
    "q D": ("q", (2, 4), ("q", "D")),
    "g D": ("g", (4, 4), ("g", "D")),
    "q N": ("q", (3, 5), ("q", "N")),
    "g N": ("g", (3, 3), ("g", "N")),
    "p N": ("p", (3, 5), ("p", "N")),
    "h0 B": ("h0", (3, 3, 4), ("h0", "B")),
    "h0 D": ("h0", (2, 4, 4), ("h0", "D")),
    "h0 N": ("h0", (2, 3, 5), ("h0", "N")),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("which", list(MISMATCH))
def test_error_mismatched_sizes(path, which):
    args = dict(zip(["x", "p", "q", "g", "h0"], _good()))
    arg, shape, tokens = MISMATCH[which]
    t = args[arg]
    args[arg] = torch.ones(shape, dtype=t.dtype)
    _raises(ValueError, lambda: PATHS[path](*args.values(), 4), *tokens, *_shape_tokens(args[arg]))


@pytest.mark.parametrize("arg", ["alpha", "delta", "theta", "gamma"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_error_nonfinite_params(arg, bad):
    params = dict(zip(["alpha", "delta", "theta", "gamma"], make_params(3, 4, 0, torch.float32)))
    params[arg].view(-1)[-1] = bad
    _raises(ValueError, lambda: cema_coeffs(*params.values()), arg)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("arg,bad", [("p", math.nan), ("p", math.inf), ("q", complex(0, math.nan)),
                                     ("q", complex(math.inf, 0)), ("g", complex(math.nan, 0)), ("g", complex(0, -math.inf))])
def test_error_nonfinite_coeffs(path, arg, bad):
    args = dict(zip(["x", "p", "q", "g", "h0"], _good()))
    args[arg] = args[arg].clone()
    args[arg][1, 2] = bad
    _raises(ValueError, lambda: PATHS[path](*args.values(), 4), arg)


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_error_chunk_size(chunk_size):
    x, p, q, g, h0 = _good()
    _raises(ValueError, lambda: cema_chunked(x, p, q, g, h0, chunk_size=chunk_size), "chunk_size")


def test_error_backend():
    m = ComplexEMA(embed_dim=3, ndim=4)
    _raises(ValueError, lambda: m(torch.randn(1, 3, 5), backend="bogus"), "backend", "'bogus'", "bogus")


@pytest.mark.parametrize("path", [cema_chunked, cema_fft])
def test_paths_ignore_autocast(path):
    "Under bfloat16 autocast the paths still compute in float32: the same bits as without it (and no crash in torch.complex)."
    torch.manual_seed(0)
    p, q, g = (t.detach() for t in ComplexEMA(12, 4).coeffs())
    x, h0 = torch.randn(2, 12, 70), torch.randn(2, 12, 4, dtype=torch.complex64)
    y, h = path(x, p, q, g, h0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ac, h_ac = path(x, p, q, g, h0)
    assert y_ac.dtype == torch.float32 and torch.equal(y_ac, y) and torch.equal(h_ac, h)
