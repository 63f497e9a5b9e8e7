"""`core.KernelFunction`, the packaging every Triton path uses, on a toy forward/backward pair: eager and compiled
gradients against autograd through the same formula, gradcheck in float64, optional inputs, hidden outputs, dtypes."""
import pytest
import torch

from megalodon_lit.core import KernelFunction, rel_err


def _fwd(x, a, b, scale):
    "y = scale a x^2 + b, its row sums, and x^2 (kept for the backward, hidden from the caller)."
    sq = x * x
    y = scale * a * sq + (0 if b is None else b)
    return y, y.sum(-1), sq


def _bwd(grads, inputs, kept):
    (dy, ds), (x, a, b, scale), (sq,) = grads, inputs, kept
    d = dy + ds[..., None]
    # float64 on purpose: the helper returns each gradient in its input's dtype
    return (2 * scale * a * x * d).double(), scale * (sq * d).sum(0), None if b is None else d.sum(0)


TOY = KernelFunction("test_toy", "(Tensor x, Tensor a, Tensor? b, float scale) -> (Tensor, Tensor, Tensor)", _fwd,
                     lambda x, a, b, scale: (x.new_empty(x.shape), x.new_empty(x.shape[:-1]), x.new_empty(x.shape)),
                     _bwd, grad_for=("x", "a", "b"), keep=(2,), shown=2)


def _grads(fn, x, a, b):
    y, s = fn(x, a, b, 1.5)
    leaves = [t for t in (x, a, b) if t is not None]
    return torch.autograd.grad(y.sin().sum() + s.cos().sum(), leaves)


def _leaves(dtype):
    torch.manual_seed(0)
    return [torch.randn(*s, dtype=dtype, requires_grad=True) for s in ((3, 5), (5,), (5,))]


@pytest.mark.parametrize("with_b", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_gradients_match_autograd(compiled, with_b):
    x, a, b = _leaves(torch.float32)
    b = b if with_b else None
    fn = torch.compile(TOY, backend="aot_eager", fullgraph=True) if compiled else TOY
    expected = _grads(lambda *t: _fwd(*t)[:2], x, a, b)
    got = _grads(fn, x, a, b)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and rel_err(g, e) <= 1e-6


def test_gradcheck_float64():
    x, a, b = _leaves(torch.float64)
    assert torch.autograd.gradcheck(lambda x, a, b: TOY(x, a, b, 1.5), (x, a, b))
    assert torch.autograd.gradcheck(lambda x, a: TOY(x, a, None, 1.5), (x, a))


def test_outputs_hidden_and_no_graph_without_gradients():
    x, a, b = _leaves(torch.float32)
    out = TOY(x, a, b, 1.5)
    assert len(out) == 2 and out[0].grad_fn is not None
    with torch.no_grad(): out = TOY(x, a, b, 1.5)
    assert len(out) == 2 and out[0].grad_fn is None


def test_second_derivative_refuses():
    x, a, b = _leaves(torch.float64)
    (gx,) = torch.autograd.grad(TOY(x, a, b, 1.5)[0].sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


def test_one_output_or_one_gradient_is_refused():
    "torch reads a one-element result list as a bare tensor: the helper says so at construction, not deep inside a compile."
    one = lambda x, y: (x * y,)
    with pytest.raises(ValueError, match="two or more outputs"):
        KernelFunction("test_one_out", "(Tensor x, Tensor y) -> (Tensor)", one, one)
    two = lambda x, y: (x * y, x + y)
    with pytest.raises(ValueError, match="two or more inputs in grad_for"):
        KernelFunction("test_one_grad", "(Tensor x, Tensor y) -> (Tensor, Tensor)", two, two, lambda g, i, k: g[:1], grad_for=("x",))
