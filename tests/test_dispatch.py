"""The model and the dispatchers on the Triton backend, through the interpreter on CPU (tiny shapes).

Each kernel has its own parity tests (tests/test_ops_*.py, nbs/10-12); these check the wiring: that
`backend="triton"` reaches the kernels from the public functions and the model, forward, backward and the
streaming decode path, and that "auto" chooses as documented."""
import pytest
import torch

pytest.importorskip("triton")
from megalodon_lit.attention import attention_ref, attention_step
from megalodon_lit.core import rel_err, resolve_backend
from megalodon_lit.model import MegalodonConfig, MegalodonForCausalLM

TOL = 1e-5
from conftest import KERNEL_DEVICE as DEV  # noqa: E402
INTERPRET = DEV.type == "cpu"  # the kernels run in Triton's interpreter


# Smaller than the nano preset: the interpreter runs every program of a kernel in numpy, one after another.
MICRO = dict(vocab_size=64, num_layers=2, model_dim=16, num_heads=2, z_dim=8, value_dim=16, ffn_hidden_dim=32, cema_ndim=3,
             chunk_size=8, norm_num_groups=4)

def _pair(W=1):
    cfg = dict(MICRO, attention_chunks=W)
    torch.manual_seed(0)
    fast = MegalodonForCausalLM(MegalodonConfig(backend="triton", **cfg))
    ref = MegalodonForCausalLM(MegalodonConfig(backend="torch", **cfg))
    ref.load_state_dict(fast.state_dict())
    return fast.to(DEV), ref.to(DEV)


def test_model_on_kernels_matches_torch_paths():
    fast, ref = _pair(2)  # W = 2: the multi-chunk mask (W = 1 is covered by each kernel's own tests)
    ids = torch.randint(0, 64, (2, 21), device=DEV)
    a, b = fast(ids, labels=ids), ref(ids, labels=ids)
    assert rel_err(a.logits, b.logits) <= TOL
    ga = torch.autograd.grad(a.loss, list(fast.parameters()))
    gb = torch.autograd.grad(b.loss, list(ref.parameters()))
    worst = max(rel_err(x, y) for x, y in zip(ga, gb))
    assert worst <= TOL, worst


def test_streaming_decode_on_kernels_matches_one_call():
    fast, _ = _pair(2)
    fast.eval()
    ids = torch.randint(0, 64, (1, 21), device=DEV)
    with torch.no_grad():
        whole = fast(ids).logits
        outs, cache, i = [], None, 0
        for n in (1, 11, 9):  # a single token, then pieces that cross chunk boundaries (C = 8)
            o = fast(ids[:, i:i + n], cache=cache, use_cache=True); outs.append(o.logits); cache = o.cache; i += n
    assert rel_err(torch.cat(outs, 1), whole) <= TOL


def test_attention_step_uses_the_decode_kernel_for_inference(monkeypatch):
    import megalodon_lit.ops.attention as ops
    calls = []
    real = ops.attention_decode_triton
    monkeypatch.setattr(ops, "attention_decode_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    q, k, v = (torch.randn(1, 21, 2, d, device=DEV) for d in (8, 8, 12))
    with torch.no_grad():
        outs, cache, i = [], None, 0
        for n in (5, 1, 15):
            o, cache = attention_step(q[:, i:i + n], k[:, i:i + n], v[:, i:i + n], cache, 8, 2, backend="triton"); outs.append(o); i += n
    assert calls, "the decode kernel was not called"
    assert rel_err(torch.cat(outs, 1), attention_ref(q, k, v, 8, 2)) <= TOL
    # with gradients wanted the PyTorch form runs (the kernel has no backward)
    calls.clear(); qg = q.clone().requires_grad_()
    attention_step(qg, k, v, None, 8, 2, backend="triton")
    assert not calls


def test_short_cema_without_gradients_uses_the_step_kernel(monkeypatch):
    "A decode-sized CEMA call on the Triton path runs the step kernel (one launch, no tables); with gradients, the chunked one."
    import megalodon_lit.ops.cema as ops
    from megalodon_lit.cema import CEMAParameters, cema, cema_recurrent
    calls = []
    for name in ("cema_step_triton", "cema_triton"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))
    p, q, g = (t.detach().to(DEV) for t in CEMAParameters(5, 3).coeffs())
    x, h0 = torch.randn(2, 5, 3, device=DEV), torch.randn(2, 5, 3, dtype=torch.complex64, device=DEV)
    with torch.no_grad(): y, h = cema(x, p, q, g, h0, backend="triton")
    y64, h64 = cema_recurrent(x.double(), p.double(), q.to(torch.complex128), g.to(torch.complex128), h0.to(torch.complex128))
    assert calls == ["cema_step_triton"] and rel_err(y, y64) <= TOL and rel_err(h, h64) <= TOL
    calls.clear()
    cema(x.clone().requires_grad_(), p, q, g, h0, backend="triton")
    assert calls == ["cema_triton"]


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors reach the kernels only through the interpreter")
def test_auto_on_cpu_is_torch():
    x = torch.randn(2, 3)
    assert resolve_backend("auto", x, available=("ref", "torch", "triton")) == "torch"
    assert resolve_backend("triton", x, available=("ref", "torch", "triton")) == "triton"  # the interpreter is on


@pytest.mark.skipif(INTERPRET, reason="needs CUDA")
def test_auto_on_cuda_picks_kernels_except_float64():
    x = torch.randn(2, 3, device="cuda")
    assert resolve_backend("auto", x, available=("ref", "torch", "triton")) == "triton"
    assert resolve_backend("auto", x.double(), available=("ref", "torch", "triton")) == "torch"


def test_kernels_under_bf16_autocast():
    "Under bfloat16 autocast the model on the kernels is as close to the float32 step as the PyTorch paths under autocast (2x)."
    fast, ref = _pair(2)
    ids = torch.randint(0, 64, (2, 21), device=DEV)
    def step(model, autocast):
        model.zero_grad()
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(ids, labels=ids)
        out.loss.backward()
        return [out.logits.float()] + [p.grad.clone() for p in model.parameters()]
    exact, tor, tri = step(ref, False), step(ref, True), step(fast, True)
    # the floor is one bfloat16 unit: 2^-8 when casts round (GPU), 2^-7 in the interpreter, whose casts truncate
    unit = 2**-7 if INTERPRET else 2**-8
    for a, b, e in zip(tri, tor, exact):
        assert rel_err(a, e) <= 2 * max(rel_err(b, e), unit)
