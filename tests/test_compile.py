"torch.compile of the model: one graph (no break), outputs and gradients as in eager mode, on the PyTorch and the Triton paths."
import importlib.util
import shutil

import pytest
import torch

from megalodon_lit.core import rel_err
from megalodon_lit.model import MegalodonConfig, MegalodonForCausalLM

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
# aot_eager runs the very ATen ops eager mode runs (measured: identical bits, error 0.0); the bar allows a reordered
# float32 sum. Inductor fuses and reorders: measured 2.8e-7 on logits and 1.0e-6 on gradients (nano model, CPU).
TOL_AOT, TOL_INDUCTOR = 1e-6, 1e-5
BACKENDS = ["torch"] + (["triton"] if importlib.util.find_spec("triton") else [])


def _model(backend, **kw):
    torch.manual_seed(0)
    return MegalodonForCausalLM(MegalodonConfig.from_preset("nano", backend=backend, **kw)).to(DEV)


def _loss_and_grads(fn, model, ids):
    model.zero_grad()
    out = fn(ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), [p.grad.clone() for p in model.parameters()]


def _compare(model, compiler, ids_list, tol, **kw):
    compiled_model = torch.compile(model, backend=compiler, fullgraph=True, **kw)  # fullgraph: a graph break fails
    for ids in ids_list:
        eager = _loss_and_grads(model, model, ids)
        compiled = _loss_and_grads(compiled_model, model, ids)
        assert rel_err(compiled[0], eager[0]) <= tol
        for (name, _), a, b in zip(model.named_parameters(), compiled[1], eager[1]):
            assert rel_err(a, b) <= tol, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_step_is_one_graph_and_matches_eager(backend):
    """One graph for the training step. On the Triton path, two sequence lengths go through that one graph with symbolic
    shapes (the kernels' fake implementations take symbolic sizes); the PyTorch path branches on the length in Python
    (chunk count, short inputs), so it compiles per length: one length there."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset(); counters.clear()
    model = _model(backend, attention_chunks=2)
    lengths, kw = ((37, 20), dict(dynamic=True)) if backend == "triton" else ((37,), {})
    _compare(model, "aot_eager", [torch.randint(0, 256, (2, L), device=DEV) for L in lengths], TOL_AOT, **kw)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_streaming_compiled_matches_eager(backend):
    "A prefill with a cache, then one token (the decode path: step kernels and the cached-window attention)."
    torch._dynamo.reset()
    model, ids = _model(backend).eval(), torch.randint(0, 256, (2, 21), device=DEV)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        # compiled, a one-token call traces the readable decode path (notebook 09's step is eager only): compare with it
        e1 = model(ids[:, :20], use_cache=True); e2 = model(ids[:, 20:], cache=e1.cache, fast_decode=False)
        c1 = compiled(ids[:, :20], use_cache=True); c2 = compiled(ids[:, 20:], cache=c1.cache)
    assert rel_err(c1.logits, e1.logits) <= TOL_AOT and rel_err(c2.logits, e2.logits) <= TOL_AOT
    for a, b in zip(c2.cache.tensors(), e2.cache.tensors()): assert rel_err(a, b) <= TOL_AOT


def test_dropkey_under_compile_follows_the_generator():
    "Training with DropKey: the seed is drawn inside the graph from torch's generator (aot_eager draws it as eager does)."
    torch._dynamo.reset()
    backend = BACKENDS[-1]
    model = _model(backend, attention_dropout=0.3, dropkey=True).train()
    ids = torch.randint(0, 256, (2, 37), device=DEV)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    losses = []
    for fn in (model, compiled, compiled):
        torch.manual_seed(7); losses.append(fn(ids, labels=ids).loss.item())
    torch.manual_seed(8); other = compiled(ids, labels=ids).loss.item()
    assert losses[0] == losses[1] == losses[2] and other != losses[0]


@pytest.mark.skipif(shutil.which("g++") is None and not torch.cuda.is_available(), reason="inductor on the CPU needs a C++ compiler")
def test_inductor_training_step():
    "The real compiler: fused PyTorch code around the kernels' operators (about 45 s on a 2-core CPU)."
    torch._dynamo.reset()
    model = _model(BACKENDS[-1])
    _compare(model, "inductor", [torch.randint(0, 256, (2, 37), device=DEV)], TOL_INDUCTOR)


def test_bench_train_compiled(monkeypatch):
    "bench_train(compile=True) times the compiled step after a first (compiling) call; the sweep stores such rows as '+compile'."
    from megalodon_lit import bench
    real, calls = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(m) or real(m, backend="aot_eager", fullgraph=True))
    r = bench.bench_train(_model("torch"), 32, batch_size=2, device=DEV, compile=True)
    assert len(calls) == 1 and r["first_step_s"] > 0 and r["step_s"] > 0 and r["tokens_per_s"] == 64 / r["step_s"]
    res = bench.run_benchmarks(("train",), size="cpu", device=DEV, log=lambda s: None, budget_s=0, compile=True)
    assert {row["impl"] for row in res["train"]} == {"megalodon/torch+compile", "transformer+compile"}
    assert all("skipped" in row for row in res["train"])


def test_bench_decode_compiled_and_generate(monkeypatch):
    "Compiled prefill and decode for Megalodon and the Transformer baseline; model.compile() serves generate()."
    from megalodon_lit import bench
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend="aot_eager"))
    mega = _model("torch")
    for model in (mega, bench.LlamaBaseline.matching(mega.config)):
        (row,) = bench.bench_decode(model, [24], DEV, compile=True)
        assert row["decode_s"] > 0 and row["prefill_tokens_per_s"] > 0, row
    torch._dynamo.reset()
    prompt = torch.randint(0, 256, (1, 9), device=DEV)
    mega = _model("torch").eval()
    eager = mega.generate(prompt, 6, temperature=0).new_tokens
    mega.compile(backend="aot_eager")  # nn.Module.compile: the module's own calls, generate's included, run compiled
    from torch._dynamo.utils import counters
    counters.clear()
    assert torch.equal(mega.generate(prompt, 6, temperature=0).new_tokens, eager)
    assert counters["stats"]["unique_graphs"] >= 2  # the prompt and the step were compiled
