"""One Megalodon block (megalodon_lit.block) against its definition: the block's output equals the layer's readable
reference `mega_layer_ref` followed by the feed-forward network written out here from its documented formula
(LayerNorm → silu(fc1) [· fc3] → fc2 [· alpha], added to the block input), outputs and every gradient, on both op
backends, for W = 1, 2, 3, lengths shorter than, equal to and not a multiple of the chunk; streaming in pieces with the
state carried equals one call (outputs, the state after the last token, and gradients through the carried state);
the norms, the initialisations and `kv_window` against their formulas; dropout only in training mode.

Measured (CPU, shapes below): float64 outputs within 1.5e-16 and gradients within 3.8e-15 of the float64 definition;
float32 outputs within 8.3e-8 and gradients within 2.7e-6. Bars: 1e-12 (float64), 1e-6 and 1e-5 (float32)."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import perturbed
from megalodon_lit.attention import KVCache, attention_step
from megalodon_lit.block import (OffsetLayerNorm, LayerState, MegalodonBlock, MegalodonLayer, NormalizedFFN, RMSNorm,
                                 init_weight_, kv_window, linear, mega_layer_ref)
from megalodon_lit.core import rel_err, seed_everything

TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-6, 1e-5)}  # (output, gradients)
D, C = 24, 8
# W, options: the block's FFN variants and the RMSNorm without a scale, one per W
VARIANTS = [(1, dict()), (2, dict(swiglu=True, rescale=True)), (3, dict(rescale=True, norm_affine=False))]


def make_block(W=1, backend="torch", dtype=torch.float64, swiglu=False, rescale=False, norm_affine=True, **layer_kw):
    "A small block (D=24, Z=16, E=20, H=2, C=8, G=4, N=5, F=40) whose zero-initialised parameters are moved off zero."
    mega = MegalodonLayer(D, 16, 20, 2, C, 4, cema_ndim=5, attention_chunks=W, norm_affine=norm_affine, backend=backend, **layer_kw)
    nffn = NormalizedFFN(D, 40, layer_id=2, swiglu=swiglu, rescale=rescale)
    return perturbed(MegalodonBlock(mega, nffn).to(dtype))


def ffn_by_definition(f: NormalizedFFN, y, x):
    "x + FFN(LayerNorm(y)) from the formula, with the module's parameters (scales stored as offsets from 1)."
    u = F.layer_norm(y, (y.shape[-1],), f.norm.weight + 1, f.norm.bias, f.norm.eps)
    hidden = F.silu(u @ f.fc1.weight.T)
    if f.swiglu: hidden = hidden * (u @ f.fc3.weight.T)
    out = hidden @ f.fc2.weight.T
    return x + (out * f.alpha if f.alpha is not None else out)


def block_by_definition(blk: MegalodonBlock, x):
    return ffn_by_definition(blk.nffn, mega_layer_ref(blk.mega, x), x)


def float64_twin(blk, W, opts):
    "The same block in float64 on the reference ops."
    twin = make_block(W, "ref", torch.float64, **opts)
    twin.load_state_dict(blk.state_dict())
    return twin


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["ref", "torch"])
@pytest.mark.parametrize("W,opts", VARIANTS)
@pytest.mark.parametrize("L", [1, 5, 8, 37])  # one token, under a chunk, one chunk, four chunks and a partial one
def test_block_equals_its_definition(L, W, opts, backend, dtype):
    seed_everything(100 * W + L)
    blk = make_block(W, backend, dtype, **opts)
    ref_blk = float64_twin(blk, W, opts)
    x = torch.randn(2, L, D, dtype=dtype, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    out, state = blk(x)
    ref = block_by_definition(ref_blk, x64)
    assert state is None and out.dtype == dtype
    tol_out, tol_grad = TOL[dtype]
    assert rel_err(out, ref) <= tol_out
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *blk.parameters()], g.to(dtype))
    want = torch.autograd.grad(ref, [x64, *ref_blk.parameters()], g)
    names = ["x"] + [n for n, _ in blk.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert a is not None and rel_err(a, b) <= tol_grad, name


def test_the_definition_check_sees_a_change():
    "The comparison above is sharp: one parameter moved by 1e-6 of its size, or the FFN's residual taken from y instead of x, fails it."
    seed_everything(0)
    blk = make_block(2)
    x = torch.randn(2, 19, D, dtype=torch.float64)
    with torch.no_grad():
        out = blk(x)[0]
        assert rel_err(out, block_by_definition(blk, x)) <= TOL[torch.float64][0]
        y = mega_layer_ref(blk.mega, x)
        assert rel_err(out, ffn_by_definition(blk.nffn, y, y)) > 1e-3
        for name in ("mega.wv.bias", "mega.cema.theta", "mega.timenorm.weight", "nffn.fc2.weight"):
            other = make_block(2); other.load_state_dict(blk.state_dict())
            p = dict(other.named_parameters())[name]
            p.mul_(1 + 1e-6)
            assert rel_err(other(x)[0], out) > TOL[torch.float64][0], name


def pieces(blk, x, cuts):
    outs, state, i = [], None, 0
    for n in cuts:
        o, state = blk(x[:, i:i + n], state, return_state=True)
        outs.append(o); i += n
    assert i == x.shape[1]
    return torch.cat(outs, 1), state


def random_cuts(L, seed, most):
    g, cuts = torch.Generator().manual_seed(seed), []
    while L:
        n = min(L, int(torch.randint(1, most + 1, (1,), generator=g))); cuts.append(n); L -= n
    return cuts


@pytest.mark.parametrize("W,opts", VARIANTS)
@pytest.mark.parametrize("seed", range(3))
def test_pieces_with_state_equal_one_call(W, opts, seed):
    "Outputs and the state after the last token (norm count/mean/var, CEMA state, attention window, position)."
    seed_everything(seed)
    blk = make_block(W, **opts).eval()
    L = 45  # crosses five chunk boundaries; W·C = 8, 16, 24: the window is full and wraps
    x = torch.randn(2, L, D, dtype=torch.float64)
    with torch.no_grad():
        full, full_state = blk(x, return_state=True)
        for cuts in ([1] * L, random_cuts(L, seed, 2 * C + 3)):
            got, state = pieces(blk, x, cuts)
            assert rel_err(got, full) <= 1e-12, cuts
            assert state.kv.seen == full_state.kv.seen == L
            for a, b in zip(state.tensors(), full_state.tensors()): assert rel_err(a, b) <= 1e-12, cuts


def test_gradients_through_the_carried_state():
    "Two pieces with the state carried (not detached): the same gradients for x and every parameter as one call."
    seed_everything(3)
    blk = make_block(2, swiglu=True)
    x = torch.randn(2, 29, D, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 29, D, dtype=torch.float64)
    params = [x, *blk.parameters()]
    want = torch.autograd.grad(blk(x)[0], params, g)
    got = torch.autograd.grad(pieces(blk, x, [13, 16])[0], params, g)
    for (name, a, b) in zip(["x"] + [n for n, _ in blk.named_parameters()], got, want): assert rel_err(a, b) <= 1e-12, name
    # detached between the pieces, the first piece's parameters get gradients only from its own outputs
    out1, state = blk(x[:, :13], return_state=True)
    out2, _ = blk(x[:, 13:], state.detach())
    gx = torch.autograd.grad(torch.cat([out1, out2], 1), x, g)[0]
    assert rel_err(gx[:, 13:], want[0][:, 13:]) <= 1e-12 and rel_err(gx[:, :13], want[0][:, :13]) > 1e-6


def test_gradcheck_float64():
    seed_everything(4)
    blk = make_block(2, swiglu=True, rescale=True)
    x = torch.randn(1, 11, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: blk(x)[0], (x,))


def test_one_call_state_equals_the_token_by_token_cache():
    "`kv_window` leaves the window `attention_step` would have left: zeros before position 0, then the last W·C keys/values."
    seed_everything(5)
    B, H, dz, dv = 2, 2, 4, 3
    for L, cap in ((5, 16), (16, 16), (37, 16)):
        k, v = torch.randn(B, L, H, dz, dtype=torch.float64), torch.randn(B, L, H, dv, dtype=torch.float64)
        kv = kv_window(k, v, cap)
        assert kv.k.shape == (B, cap, H, dz) and kv.seen == L
        n = min(L, cap)
        assert torch.equal(kv.k[:, cap - n:], k[:, L - n:]) and torch.equal(kv.v[:, cap - n:], v[:, L - n:])
        assert not kv.k[:, :cap - n].any() and not kv.v[:, :cap - n].any()
        state = KVCache.empty(B, H, dz, dv, cap, torch.float64, None)
        for t in range(L):
            _, state = attention_step(k[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], state, cap, 1)
        assert state.seen == L and torch.equal(state.k, kv.k) and torch.equal(state.v, kv.v)


def test_state_size_is_constant_and_detach_cuts_the_graph():
    seed_everything(6)
    blk = make_block(2).float()
    sizes, state = set(), None
    for _ in range(3 * 2 * C):
        _, state = blk(torch.randn(2, 1, D), state, return_state=True)
        sizes.add(state.nbytes)
    assert len(sizes) == 1 and isinstance(state, LayerState)
    assert any(t.requires_grad for t in state.tensors())
    assert not any(t.requires_grad for t in state.detach().tensors())


def test_norms_against_their_formulas():
    seed_everything(7)
    x = torch.randn(3, 5, 16, dtype=torch.float64) * 4 + 2
    rms, ln = RMSNorm(16).double(), OffsetLayerNorm(16).double()
    with torch.no_grad():
        for p in (rms.weight, ln.weight, ln.bias): p.normal_()
        want_rms = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + rms.eps) * (1 + rms.weight)
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        want_ln = (x - mu) / torch.sqrt(var + ln.eps) * (1 + ln.weight) + ln.bias
        assert rel_err(rms(x), want_rms) <= 1e-14 and rel_err(ln(x), want_ln) <= 1e-14
        assert RMSNorm(16, affine=False).weight is None
        plain = RMSNorm(16, affine=False).double()(x)
        assert rel_err(plain, x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)) <= 1e-14
        # bfloat16 in, bfloat16 out, computed in float32: within one bfloat16 rounding of the float64 result
        for norm, want in ((rms, want_rms), (ln, want_ln)):
            got = norm.float()(x.bfloat16())
            assert got.dtype == torch.bfloat16 and rel_err(got, norm.double()(x.bfloat16().double())) <= 2 ** -8


def test_initialisations():
    torch.manual_seed(8)
    fan_out, fan_in = 512, 300
    w = init_weight_(torch.empty(fan_out, fan_in), "he")
    assert abs(w.var().item() * 3 * fan_in - 1) < 0.05  # N(0, 1/(3 fan_in)); the estimate's spread is ~0.4%
    w = init_weight_(torch.empty(fan_out, fan_in), "gaussian")
    std = fan_in ** -0.5
    # normal truncated at ±3 std: variance std² (1 - 6 φ(3) / (2 Φ(3) - 1)) = 0.9733 std²
    assert w.abs().max() <= 3 * std and abs(w.var().item() / std ** 2 - 0.9733) < 0.05
    w = init_weight_(torch.empty(fan_out, fan_in), "bert")
    assert abs(w.std().item() / 0.02 - 1) < 0.05
    w = init_weight_(torch.empty(fan_out, fan_in), "xavier")
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    lin = linear(fan_in, fan_out, True, "he")
    assert not lin.bias.any() and abs(lin.weight.var().item() * 3 * fan_in - 1) < 0.05
    assert linear(fan_in, fan_out, True, "none").bias.any()  # "none": PyTorch's own initialisation, bias included
    with pytest.raises(ValueError, match="init_mode"): init_weight_(torch.empty(3, 3), "kaiming")


def test_dropout_only_in_training():
    seed_everything(9)
    blk = make_block(2, dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1)
    blk.nffn.p_drop = blk.nffn.p_hidden = 0.1
    x = torch.randn(2, 19, D, dtype=torch.float64)
    with torch.no_grad():
        blk.eval()
        a = blk(x)[0]
        assert rel_err(a, block_by_definition(blk, x)) <= 1e-12  # no dropout in eval mode
        blk.train()
        torch.manual_seed(1); b = blk(x)[0]
        torch.manual_seed(1); c = blk(x)[0]
        torch.manual_seed(2); d = blk(x)[0]
        assert torch.equal(b, c) and rel_err(b, a) > 1e-3 and rel_err(d, b) > 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible by num_heads"): MegalodonLayer(24, 15, 20, 2, 8, 4)
    with pytest.raises(ValueError, match="must divide"): MegalodonLayer(24, 16, 20, 2, 8, 5)
    with pytest.raises(ValueError, match="backend"): MegalodonLayer(24, 16, 20, 2, 8, 4, backend="cuda")
