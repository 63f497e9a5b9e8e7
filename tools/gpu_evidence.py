#!/usr/bin/env python3
"""GPU evidence in one device call: every kernel checked on CUDA, the kernels timed, the end-to-end ratios measured.

A lent GPU machine gives minutes, not hours, so this script is built around a time budget. Its parts run in
priority order, each with a share of the budget (a part that finishes early leaves its time to the next):

  verify, parity_cema, parity_tsn, parity_attention, parity_model
      `verify_all`, a probe of Triton's scan, and every Triton path against its reference at the benchmark sizes,
      float32 and bfloat16, outputs and gradients (the CPU tests' tolerances; bfloat16 within twice PyTorch's own
      bfloat16 error against the same reference)
  kernels_cema, kernels_tsn, kernels_attention
      `do_bench` medians: CEMA forward and backward against the chunked PyTorch path and the FFT path and the
      8 B/elem floor; TimestepNorm against its floor; attention at C = 2048, d = 128, W = 1, 2 against SDPA on the
      chunk-reshaped input and the chunked PyTorch path
  train, decode
      a training step at 4K and 16K (Triton kernels, PyTorch only, the same-size Transformer) and decode per token
      at 1K / 16K / 128K with the cache's bytes
  flex, compiled
      FlexAttention (compiling it costs tens of seconds), then the training rows through torch.compile

Every row is written to $OUT/evidence.json the moment it is measured, a step whose turn comes after its part's
time is spent is recorded as skipped, and an exception is recorded with its message. A CUDA error (an illegal
address, say) leaves the process's CUDA context unusable: the worker then exits and the parent starts another,
which resumes at the next step under the same deadlines. Autotuning is off (each kernel runs its fixed default
tiles) so that no minute goes to trying tile shapes; the compiled kernels are packed into $OUT/triton_cache.tgz.

    OUT=/tmp/ev python tools/gpu_evidence.py --budget 430           # on the GPU machine
    GPU_SIM=1 OUT=/tmp/ev python tools/gpu_evidence.py --budget 300  # rehearsal on a CPU: interpreter, tiny sizes
    GPU_SIM_FAULT="cema step kernel" ...                             # rehearse the restart after a CUDA error

Back here: `python tools/gpu_evidence.py --unpack <folder with evidence.json>` files the results under
kernels/results/<gpu>/ (the notebooks read them from there).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

SIM = bool(os.environ.get("GPU_SIM"))
if __name__ == "__main__":  # as a script (imported, e.g. by a test, it leaves the environment alone)
    if SIM: os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    else: os.environ.pop("TRITON_INTERPRET", None)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from megalodon_lit import bench  # noqa: E402
from megalodon_lit.core import median_time, rel_err  # noqa: E402

DEV = torch.device("cpu" if SIM else "cuda")
# The sizes of the parts: the benchmark sizes on a GPU, tiny ones for a rehearsal under the interpreter.
S = dict(
    cema_fwd=(8, 4096, 16, 4096), cema_bwd=(2, 1024, 16, 4096), cema_near1=(2, 512, 16, 4000), cema_T=64,
    tsn=(2, 4096, 4096, 32), tsn_bench=(8, 4096, 4096, 32),
    attn_cases=[(2, 4096, 8, 128, 128, 2048, 1), (2, 4096, 8, 128, 128, 1024, 2), (1, 4096, 4, 256, 2048, 2048, 1)],
    attn_fp32=(1, 3000, 4, 64, 96, 1024, 2), attn_drop=(1, 1000, 2, 64, 64, 256, 2),
    attn_bench=dict(C=2048, d=128, H=16, tokens=65536, L=(4096, 16384)),
    decode_kernel=(32, 128, 2048), model="mega200M", train_ctx=(4096, 16384), decode_ctx=(1024, 16384, 131072),
) if not SIM else dict(
    cema_fwd=(2, 24, 4, 100), cema_bwd=(2, 8, 4, 70), cema_near1=(2, 5, 3, 45), cema_T=16,
    tsn=(2, 40, 32, 4), tsn_bench=(2, 40, 32, 4),
    attn_cases=[(1, 40, 2, 16, 16, 16, 1), (1, 40, 2, 16, 32, 16, 2)],
    attn_fp32=(1, 30, 2, 16, 24, 16, 2), attn_drop=(1, 30, 2, 16, 16, 16, 2),
    attn_bench=dict(C=16, d=16, H=2, tokens=64, L=(32,)),
    decode_kernel=(2, 16, 40), model="nano", train_ctx=(64,), decode_ctx=(32, 96),
)


class Evidence:
    """The results of this call, saved as JSON after every row; parts with deadlines; errors recorded, not raised.
    Deadlines are wall-clock times kept in the file, so a process restarted after a CUDA error (which leaves the
    process's CUDA context unusable) resumes where the last one stopped, under the same deadlines."""
    def __init__(self, out: Path, budget: float, end: float | None = None):
        self.out, self.t0 = out, time.time()
        self.path = out / "evidence.json"
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            self.end = self.data["end_time"]
        else:
            self.end = end or time.time() + budget
            self.data = dict(record=bench.device_record(DEV), budget_s=budget, end_time=self.end, sim=SIM, parts={},
                             parity=[], kernels=[], train=[], decode=[], errors=[], restarts=0)
        self.done = {r["name"] for sec in SECTIONS for r in self.data[sec]} | {e["where"] for e in self.data["errors"]}
        self.part_end = self.end
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str)); tmp.replace(self.path)

    def log(self, msg: str) -> None: print(f"[{time.strftime('%H:%M:%S')} {self.end - time.time():5.0f} s left] {msg}", flush=True)

    def left(self) -> float: return min(self.part_end, self.end) - time.time()

    @contextlib.contextmanager
    def part(self, name: str, share: float):
        "Run a part until `share` seconds after it first started (or the budget's end), recording its time and any exception."
        info = self.data["parts"].setdefault(name, dict(start=time.time(), share=share))
        self.part_end = min(self.end, info["start"] + (share or self.end))
        self.log(f"=== {name} (share {share:.0f} s)")
        try: yield
        except Exception as e: self.error(name, e)
        finally:
            info["seconds"] = time.time() - info["start"]
            self.save(); self.part_end = self.end

    def error(self, where: str, e: BaseException) -> None:
        self.data["errors"].append(dict(where=where, error=f"{type(e).__name__}: {e}"[:500], trace=traceback.format_exc()[-2000:]))
        self.done.add(where)
        self.log(f"ERROR in {where}: {type(e).__name__}: {str(e)[:300]}"); self.save()
        if "CUDA error" in str(e) or type(e).__name__ == "AcceleratorError":
            self.log("a CUDA error leaves this process's CUDA context unusable: exiting for a restart")
            os._exit(CUDA_FAULT)
        if DEV.type == "cuda": torch.cuda.empty_cache()

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row); self.save()

    def step(self, section: str, name: str, fn, **key) -> None:
        "One measurement: skipped when its part's time is spent; rows (dict or list of dicts) saved; errors recorded."
        if name in self.done: return  # measured (or failed) before a restart
        if self.left() <= 0:
            self.add(section, dict(name=name, **key, skipped="the part's time was spent")); self.log(f"{name}: skipped"); return
        t = time.time()
        try:
            if SIM and name == os.environ.get("GPU_SIM_FAULT"): raise RuntimeError("CUDA error: injected by GPU_SIM_FAULT (rehearsal)")
            rows = fn()
        except Exception as e:
            self.add(section, dict(name=name, **key, error=f"{type(e).__name__}: {e}"[:500])); self.error(name, e); return
        for r in rows if isinstance(rows, list) else [rows]:
            self.add(section, dict(name=name, **key, **r, wall_s=round(time.time() - t, 2)))
            self.log(f"{name}: " + ", ".join(f"{k}={_short(v)}" for k, v in r.items()))
        self.done.add(name)


SECTIONS = ("parity", "kernels", "train", "decode")
CUDA_FAULT = 3  # a child's exit status after a CUDA error: the parent starts another for the steps left


def _short(v): return f"{v:.3g}" if isinstance(v, float) else v


def bench_ms(fn, rep: int = 60, grad_to_none=None) -> float:
    "Median milliseconds of fn(): do_bench on CUDA (events), one wall-clock call under the interpreter."
    if SIM: return median_time(fn, repeats=1, warmup=0) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=10, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def wide(t: torch.Tensor) -> torch.Tensor: return t.to(torch.complex128 if t.is_complex() else torch.float64)


def leaves(ts, dtype=None):
    "Fresh leaf copies requiring gradients (real tensors cast to dtype when given)."
    return [(t.to(dtype) if dtype is not None and not t.is_complex() else t).detach().clone().requires_grad_() for t in ts]


def grads_of(outs, ins, cot):
    "Gradients of sum(out * cotangent) (complex outputs as real pairs) with respect to ins."
    loss = 0
    for o, c in zip(outs, cot):
        o = torch.view_as_real(o) if o.is_complex() else o
        loss = loss + (o.double() * c.double()).sum()
    return torch.autograd.grad(loss, ins, allow_unused=True)


def cotangents(outs):
    return [torch.randn((torch.view_as_real(o) if o.is_complex() else o).shape, device=o.device) for o in outs]


# ---------------------------------------------------------------------------------------------------------- parity
def parity_rows(prefix: str, outs, refs, names, tol, bars=None) -> list[dict]:
    rows = []
    for i, (n, a, r) in enumerate(zip(names, outs, refs)):
        if a is None and r is None: continue
        e, bar = rel_err(a, r), (bars[i] if bars is not None else tol)
        rows.append(dict(compared=f"{prefix} {n}", err=e, tol=bar, ok=bool(e <= bar)))
    return rows


def cema_case(B, D, N, L, near1=False, seed=0):
    from megalodon_lit.cema import CEMAParameters
    torch.manual_seed(seed)
    m = CEMAParameters(D, N)
    if near1:
        with torch.no_grad(): m.alpha.fill_(-6.0); m.delta.fill_(-6.0)
    p, q, g = (t.detach().to(DEV) for t in m.coeffs())
    return [torch.randn(B, D, L, device=DEV), p, q, g, torch.randn(B, D, N, dtype=torch.complex64, device=DEV)]


def cema_parity(B, D, N, L, grads: bool, near1=False, dtype=torch.float32) -> list[dict]:
    "cema_triton against float64 cema_chunked on the same device: y, h and (grads) dx, dp, dq, dg, dh0."
    from megalodon_lit.cema import cema_chunked
    from megalodon_lit.ops.cema import cema_triton
    T = S["cema_T"]
    ins = cema_case(B, D, N, L, near1)
    ins[0] = ins[0].to(dtype)
    a_in, r_in = leaves(ins), [wide(t).detach().requires_grad_() for t in ins]
    outs, refs = cema_triton(*a_in, chunk_size=T), cema_chunked(*r_in, chunk_size=T)
    names, bars = ["y", "h"], None
    if dtype == torch.bfloat16:  # judged against twice PyTorch's own bfloat16 error (the chunked path fed the same bfloat16 x)
        t_in = leaves(ins)
        mine = cema_chunked(*t_in, chunk_size=T)
        bars = [2 * rel_err(mine[0], refs[0]), max(2 * rel_err(mine[1], refs[1]), 1e-5)]
    if grads:
        cot = cotangents(refs)
        ga, gr = grads_of(outs, a_in, cot), grads_of(refs, r_in, cot)
        outs, refs, names = [*outs, *ga], [*refs, *gr], names + ["dx", "dp", "dq", "dg", "dh0"]
        if bars is not None:
            gt = grads_of(mine, t_in, cot)
            bars += [max(2 * rel_err(a, r), 1e-5) for a, r in zip(gt, gr)]
    label = f"cema {str(dtype)[6:]} B={B} D={D} L={L}{' |q|~1' if near1 else ''}"
    return parity_rows(label, outs, refs, names, 1e-5, bars)


def cema_step_parity() -> list[dict]:
    "The decode step kernel (a few steps, no gradient) against the float64 recurrence."
    from megalodon_lit.cema import cema_recurrent
    from megalodon_lit.ops.cema import cema_step_triton
    x, p, q, g, h0 = cema_case(4, 1024 if not SIM else 8, 16 if not SIM else 4, 3)
    y, h = cema_step_triton(x, p, q, g, h0)
    yr, hr = cema_recurrent(*(wide(t) for t in (x, p, q, g, h0)))
    return parity_rows("cema step kernel (3 steps)", [y, h], [yr, hr], ["y", "h"], 1e-5)


def tsn_case(B, L, D, G, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, device=DEV)
    x = rnd(B, L, D) * 1.5 + 0.7
    count = torch.arange(B, device=DEV) * 7
    mask = torch.zeros(B, L, dtype=torch.bool, device=DEV); mask[0, L // 3: L // 2] = True; mask[-1, -max(L // 8, 1):] = True
    return x, rnd(D) * 0.3, rnd(D) * 0.3, count, rnd(B, G) * 0.5, rnd(B, G).exp(), mask


def tsn_parity() -> list[dict]:
    "The three forms of the TimestepNorm kernel against the float64 vectorised form; bfloat16 against twice PyTorch's error."
    from megalodon_lit.timestep_norm import _tsn_torch
    from megalodon_lit.ops.timestep_norm import _tsn_triton
    B, L, D, G = S["tsn"]
    x, w, b, count, mean, var, mask = tsn_case(B, L, D, G, seed=1)
    cot = None
    def run(fn, dtype):
        nonlocal cot
        ls = [t.to(dtype).clone().requires_grad_() for t in (x, w, b, mean, var)]
        y, _, M, V = fn(ls[0], ls[1], ls[2], count, ls[3], ls[4], G, 1e-5, mask)
        if cot is None: cot = cotangents([y, M, V])
        return [y, M, V, *grads_of([y, M, V], ls, cot)]
    names = ["y", "mean", "var", "dx", "dweight", "dbias", "dmean0", "dvar0"]
    ref = run(_tsn_torch, torch.float64)
    rows = []
    for form, kw in (("split", dict(split=True)), ("one program", dict(split=False)), ("chained", dict(chain=True))):
        rows += parity_rows(f"timestep_norm float32 {form} B={B} L={L} D={D}", run(lambda *a: _tsn_triton(*a, **kw), torch.float32), ref, names, 1e-5)
    ref32 = run(_tsn_torch, torch.float32)
    tri16, tor16 = run(lambda *a: _tsn_triton(*a, split=True), torch.bfloat16), run(_tsn_torch, torch.bfloat16)
    rows += parity_rows(f"timestep_norm bfloat16 split B={B} L={L} D={D}", tri16, ref32, names, None,
                        [2 * rel_err(t, r) for t, r in zip(tor16, ref32)])
    return rows


def qkv(B, L, H, dz, dv, dtype, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    q, k = (torch.randn(B, L, H, dz, device=DEV, generator=g) / dz ** 0.25 for _ in range(2))
    return [t.to(dtype) for t in (q, k, torch.randn(B, L, H, dv, device=DEV, generator=g))]


def attn_grads(fn, q, k, v, g):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v)
    return [o.detach(), *torch.autograd.grad(o, (q, k, v), g.to(o.dtype))]


def attention_parity(B, L, H, dz, dv, C, W, dtype) -> list[dict]:
    "attention_triton against float64 attention_chunked, outputs and gradients; bfloat16 within twice SDPA's bfloat16 error."
    from megalodon_lit.attention import attention_chunked
    from megalodon_lit.ops.attention import attention_triton
    q, k, v = qkv(B, L, H, dz, dv, dtype)
    g = torch.randn(B, L, H, dv, device=DEV)
    ref = attn_grads(lambda *t: attention_chunked(*t, C, W), *(wide(t) for t in (q, k, v)), g.double())
    ours = attn_grads(lambda *t: attention_triton(*t, C, W), q, k, v, g)
    bars = None
    if dtype == torch.bfloat16:
        torch_own = attn_grads(lambda *t: attention_chunked(*t, C, W), q, k, v, g)
        bars = [2 * rel_err(s, r) for s, r in zip(torch_own, ref)]
    return parity_rows(f"attention {str(dtype)[6:]} B={B} L={L} H={H} dz={dz} dv={dv} C={C} W={W}", ours, ref,
                       ["out", "dq", "dk", "dv"], 1e-5, bars)


def dropkey_parity() -> list[dict]:
    "In-kernel DropKey: the same seed gives the same output, and it equals the float64 reference under the kernel's mask."
    from megalodon_lit.attention import _softmax_attend
    from megalodon_lit.ops.attention import attention_triton, dropkey_mask
    B, L, H, dz, dv, C, W = S["attn_drop"]
    q, k, v = qkv(B, L, H, dz, dv, torch.float32)
    o1, o2 = (attention_triton(q, k, v, C, W, 0.3, True, seed=77) for _ in range(2))
    keep = dropkey_mask(B, H, L, C, W, 0.3, 77, device=DEV)
    ref = _softmax_attend(*(wide(t).transpose(1, 2) for t in (q, k, v)), keep, 0.0, False).transpose(1, 2)
    return [dict(compared="attention DropKey p=0.3 same seed, same output", err=float((o1 - o2).abs().max()), tol=0.0,
                 ok=bool(torch.equal(o1, o2))), *parity_rows(f"attention DropKey p=0.3 L={L} C={C} W={W}", [o1], [ref], ["out"], 1e-5)]


def decode_kernel_parity() -> list[dict]:
    "The decode attention (one new query against the cached window) against the chunked reference's last row."
    from megalodon_lit.attention import attention_chunked
    from megalodon_lit.ops.attention import attention_decode_triton
    H, d, n = S["decode_kernel"]
    rows = []
    for W in (1, 2):
        q, k, v = qkv(1, n, H, d, d, torch.float32, seed=W)
        C = max(16, n // 2)
        ref = attention_chunked(*(wide(t) for t in (q, k, v)), C, W)[:, -1:]
        keep = (W * C) if n > W * C else n  # the cache holds at most the W chunks a new token can see
        lo = max(0, ((n - 1) // C - W + 1) * C)
        out = attention_decode_triton(q[:, -1:], k[:, lo:], v[:, lo:], n - 1, C, W)
        rows += parity_rows(f"attention decode kernel float32 H={H} d={d} keys={n - lo} C={C} W={W}", [out], [ref], ["out"], 1e-5)
        del keep
    return rows


def model_parity() -> list[dict]:
    "A small model on CUDA: backend 'auto' (the kernels) against 'torch', logits and every gradient; streamed == one call."
    from megalodon_lit.model import MegalodonConfig, MegalodonForCausalLM
    torch.manual_seed(0)
    cfg = MegalodonConfig.from_preset("tiny", attention_chunks=2, chunk_size=64 if not SIM else 16)
    m_t = MegalodonForCausalLM(cfg.__class__(**{**cfg.to_dict(), "backend": "torch"})).to(DEV)
    m_a = MegalodonForCausalLM(cfg.__class__(**{**cfg.to_dict(), "backend": "auto"})).to(DEV)
    m_a.load_state_dict(m_t.state_dict())
    L = 300 if not SIM else 40
    ids = torch.randint(0, cfg.vocab_size, (2, L), device=DEV)
    rows = []
    outs = []
    for m in (m_a, m_t):
        o = m(ids, labels=ids)
        o.loss.backward()
        outs.append((o.logits.detach(), torch.cat([p.grad.flatten() for p in m.parameters()])))
    rows += parity_rows("model tiny W=2 float32 auto vs torch", list(outs[0]), list(outs[1]), ["logits", "all gradients"], 1e-5)
    with torch.no_grad():
        full, pieces, cache, i = m_a(ids).logits, [], None, 0
        for n in (1, L // 8, 5, 1, 1, L - L // 8 - 8):  # uneven pieces, single tokens among them
            o = m_a(ids[:, i:i + n], cache=cache, use_cache=True); pieces.append(o.logits); cache = o.cache; i += n
    rows += parity_rows("model tiny auto streamed in 6 uneven pieces vs one call", [torch.cat(pieces, 1)], [full], ["logits"], 1e-5)
    return rows


@triton.jit
def _probe_combine(a1, b1, a2, b2): return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_probe_kernel(a_ptr, b_ptr, out_ptr, BC: tl.constexpr, BN: tl.constexpr, REVERSE: tl.constexpr):
    o = tl.arange(0, BC)[:, None] * BN + tl.arange(0, BN)[None, :]
    _, s = tl.associative_scan((tl.load(a_ptr + o), tl.load(b_ptr + o)), 0, _probe_combine, reverse=REVERSE)
    tl.store(out_ptr + o, s)


def scan_probe() -> list[dict]:
    "Triton's tl.associative_scan, forward and reverse=True, with a non-commutative combine (first-order linear), against a loop."
    rows = []
    for BC, BN, warps in ((16, 16, 8), (16, 16, 4), (64, 16, 4)):
        a, b = torch.rand(BC, BN, device=DEV) * 0.5 + 0.5, torch.randn(BC, BN, device=DEV)
        for rev in (False, True):
            out = torch.full_like(b, float("nan"))
            _scan_probe_kernel[(1,)](a, b, out, BC=BC, BN=BN, REVERSE=rev, num_warps=warps)
            ref, s = torch.empty_like(b, dtype=torch.float64), torch.zeros(BN, dtype=torch.float64, device=DEV)
            for i in (range(BC - 1, -1, -1) if rev else range(BC)):
                s = a[i].double() * s + b[i].double(); ref[i] = s
            rows.append(dict(compared=f"tl.associative_scan{' reverse=True' if rev else ''} [{BC}, {BN}] num_warps={warps}",
                             err=rel_err(out, ref), tol=1e-5, ok=bool(rel_err(out, ref) <= 1e-5), probe=True))
    return rows


def part_verify(ev: Evidence) -> None:
    from megalodon_lit.cli import verify_all
    def verify():
        tab = verify_all()
        return [dict(compared=n, err=e, tol=t, ok=bool(e <= t)) for n, e, t in tab.rows]
    ev.step("kernels", "machine limits", machine_limits, kernel="limits")  # the copy bandwidth and matmul rate every fraction refers to
    ev.step("parity", "verify_all", verify)
    ev.step("parity", "triton scan probe", scan_probe)


def part_parity_cema(ev: Evidence) -> None:
    B, D, N, L = S["cema_bwd"]
    ev.step("parity", "cema fwd+bwd float32", lambda: cema_parity(B, D, N, L, True))
    ev.step("parity", "cema fwd+bwd float32 |q|~1", lambda: cema_parity(*S["cema_near1"], True, near1=True))
    ev.step("parity", "cema fwd+bwd bfloat16", lambda: cema_parity(B, D, N, L, True, dtype=torch.bfloat16))
    ev.step("parity", "cema step kernel", cema_step_parity)
    ev.step("parity", "cema fwd float32 (benchmark size)", lambda: cema_parity(*S["cema_fwd"], False))


def part_parity_tsn(ev: Evidence) -> None:
    ev.step("parity", "timestep_norm", tsn_parity)


def part_parity_attention(ev: Evidence) -> None:
    for c in S["attn_cases"]: ev.step("parity", f"attention bf16 {c}", lambda c=c: attention_parity(*c, torch.bfloat16))
    ev.step("parity", "attention fp32", lambda: attention_parity(*S["attn_fp32"], torch.float32))
    ev.step("parity", "attention DropKey", dropkey_parity)
    ev.step("parity", "attention decode kernel", decode_kernel_parity)


def part_parity_model(ev: Evidence) -> None:
    ev.step("parity", "model", model_parity)


# --------------------------------------------------------------------------------------------------------- kernels
def machine_limits() -> dict:
    "The copy bandwidth and matmul rate every fraction refers to, measured as the benchmarks measure them."
    return dict(copy_GBps=bench.copy_bandwidth(DEV) / 1e9, bf16_matmul_TFLOPs=bench.matmul_rate(DEV) / 1e12)


def cema_speed(name: str, fn, B, D, N, L, dtype, bwd: bool) -> dict:
    "Forward (no grad) and forward + backward medians of one CEMA path, with effective GB/s against the floor bytes."
    x, p, q, g, h0 = cema_case(B, D, N, L)
    x = x.to(dtype)
    e, elem = x.element_size(), x.numel()
    with torch.no_grad(): f = bench_ms(lambda: fn(x, p, q, g, h0))
    r = dict(path=name, dtype=str(dtype)[6:], B=B, D=D, N=N, L=L, fwd_ms=f, fwd_GBps=2 * e * elem / f / 1e6)
    if bwd:
        ls = leaves([x, p, q, g])
        dy = torch.randn_like(x)
        fb = bench_ms(lambda: torch.autograd.backward(fn(*ls, h0)[0], dy), grad_to_none=ls)
        # forward + backward floor: read x, write y; read x, dy, write dx (12 B/elem in float32 for the backward)
        r.update(fwd_bwd_ms=fb, bwd_ms=fb - f, bwd_GBps=3 * e * elem / (fb - f) / 1e6)
    return r


def tsn_speed(name: str, fn, dtype) -> dict:
    B, L, D, G = S["tsn_bench"]
    x, w, b, count, mean, var, _ = tsn_case(B, L, D, G)
    ls = [t.to(dtype).detach().requires_grad_() for t in (x, w, b, mean, var)]
    call = lambda: fn(ls[0], ls[1], ls[2], count, ls[3], ls[4], G, 1e-5, None)
    e, n = ls[0].element_size(), ls[0].numel()
    with torch.no_grad(): f = bench_ms(call)
    dy = torch.randn_like(ls[0])
    fb = bench_ms(lambda: torch.autograd.grad(call()[0], ls, dy))
    return dict(path=name, dtype=str(dtype)[6:], B=B, L=L, D=D, G=G, fwd_ms=f, fwd_GBps=2 * e * n / f / 1e6,
                bwd_ms=fb - f, bwd_GBps=3 * e * n / (fb - f) / 1e6)


def attn_speed(name: str, fn, xs, flops: float) -> dict:
    xs = [t.detach().requires_grad_() for t in xs]
    f = bench_ms(lambda: fn(*xs))
    g = torch.randn_like(fn(*xs))
    fb = bench_ms(lambda: torch.autograd.grad(fn(*xs), xs, g))
    return dict(path=name, fwd_ms=f, bwd_ms=fb - f, fwd_TFLOPs=flops / f / 1e9, bwd_TFLOPs=2.5 * flops / (fb - f) / 1e9)


def part_kernels_cema(ev: Evidence) -> None:
    from megalodon_lit.cema import cema_chunked, cema_fft
    from megalodon_lit.ops.cema import cema_triton
    B, D, N, L = S["cema_fwd"]
    T = S["cema_T"]
    for name, fn in (("triton", lambda *a: cema_triton(*a, chunk_size=T)), ("chunked", lambda *a: cema_chunked(*a, chunk_size=T)), ("fft", cema_fft)):
        ev.step("kernels", f"cema {name} float32", lambda name=name, fn=fn: cema_speed(name, fn, B, D, N, L, torch.float32, True), kernel="cema")
    ev.step("kernels", "cema triton bfloat16", lambda: cema_speed("triton", lambda *a: cema_triton(*a, chunk_size=T), B, D, N, L, torch.bfloat16, True), kernel="cema")


def part_kernels_tsn(ev: Evidence) -> None:
    from megalodon_lit.timestep_norm import _tsn_torch
    from megalodon_lit.ops.timestep_norm import _tsn_triton
    for name, fn in (("triton split", lambda *a: _tsn_triton(*a, split=True)), ("triton one program per (b, g)", lambda *a: _tsn_triton(*a, split=False)),
                     ("torch vectorised", _tsn_torch)):
        ev.step("kernels", f"timestep_norm {name} float32", lambda name=name, fn=fn: tsn_speed(name, fn, torch.float32), kernel="timestep_norm")
    ev.step("kernels", "timestep_norm triton split bfloat16", lambda: tsn_speed("triton split", lambda *a: _tsn_triton(*a, split=True), torch.bfloat16), kernel="timestep_norm")


def part_kernels_attention(ev: Evidence) -> None:
    from megalodon_lit.attention import attention_chunked
    from megalodon_lit.ops.attention import attention_triton
    A = S["attn_bench"]
    C, d, H = A["C"], A["d"], A["H"]
    for L in A["L"]:
        Bt = A["tokens"] // L
        q, k, v = qkv(Bt, L, H, d, d, torch.bfloat16 if not SIM else torch.float32)
        flops = lambda W: Bt * H * L * bench.visible_keys(L, C, W) * 2 * (d + d)  # QK^T and PV products over the visible keys
        key = dict(kernel="attention", L=L, B=Bt, H=H, d=d, C=C)
        for W in (1, 2):
            ev.step("kernels", f"attention triton W={W} L={L}", lambda W=W: attn_speed(f"triton W={W}", lambda *t: attention_triton(*t, C, W), (q, k, v), flops(W)), W=W, **key)
        qc, kc, vc = (t.reshape(Bt * L // C, C, H, d).transpose(1, 2).contiguous() for t in (q, k, v))
        ev.step("kernels", f"attention SDPA chunk-reshaped W=1 L={L}",
                lambda: attn_speed("SDPA chunk-reshaped W=1", lambda *t: F.scaled_dot_product_attention(*t, is_causal=True, scale=1.0), (qc, kc, vc), flops(1)), W=1, **key)
        ev.step("kernels", f"attention torch chunked W=2 L={L}", lambda: attn_speed("torch chunked W=2", lambda *t: attention_chunked(*t, C, 2), (q, k, v), flops(2)), W=2, **key)
        del qc, kc, vc


# ------------------------------------------------------------------------------------------------------ end to end
def train_row(model, L: int, compile: bool = False) -> dict:
    "One training step of `bench.bench_train` (forward, loss, backward, AdamW; bf16 autocast on CUDA), batch 1, as an evidence row."
    r = bench.bench_train(model, L, 1, DEV, compile=compile)
    model.zero_grad(set_to_none=True)
    if "error" in r: raise RuntimeError(f"training step at L={L}: {r['error']}")
    row = dict(seq_len=L, step_ms=r["step_s"] * 1e3, tokens_per_s=r["tokens_per_s"])
    if "first_step_s" in r: row["first_step_s"] = r["first_step_s"]
    if r.get("peak_bytes") is not None: row["peak_GiB"] = r["peak_bytes"] / 2 ** 30
    return row


def decode_rows(model, contexts, dtype) -> list[dict]:
    "Prefill once per context (timed), then the per-token decode step (do_bench), with the cache's bytes."
    model = model.to(DEV, dtype).eval()
    V = model.config.vocab_size if hasattr(model, "config") else model.vocab_size
    rows = []
    with torch.no_grad():
        for n in contexts:
            ids = torch.randint(0, V, (1, n), device=DEV)
            t0 = time.monotonic(); cache = model(ids, use_cache=True).cache
            if not SIM: torch.cuda.synchronize()
            pre = time.monotonic() - t0
            tok = ids[:, -1:]
            state = [model(tok, cache=cache).cache]  # each timed step continues from the last, as generation does
            def step(): state[0] = model(tok, cache=state[0]).cache
            step_ms = bench_ms(step, rep=100)
            rows.append(dict(context=n, decode_ms=step_ms, decode_ops=bench.count_ops(step), prefill_s_incl_first_call=pre,
                             cache_bytes=bench._cache_bytes(cache)))
            del cache, state
            if not SIM: torch.cuda.empty_cache()
    return rows


_BUILT = {}

def _model(impl: str, fresh: bool = False):
    "One model per implementation (a 200M-parameter init costs seconds), shared by the training and decode rows; fresh for compiling."
    from megalodon_lit.bench import LlamaBaseline, _config, _megalodon
    name = S["model"]
    make = {"megalodon/auto": lambda: _megalodon(name, None, "auto"), "megalodon/torch": lambda: _megalodon(name, None, "torch"),
            "transformer": lambda: LlamaBaseline.matching(_config(name, None))}[impl]
    if fresh: return make()
    if impl not in _BUILT: torch.manual_seed(0); _BUILT[impl] = make()
    return _BUILT[impl]


def part_train(ev: Evidence, compiled: bool = False) -> None:
    tag = "+compile" if compiled else ""
    for L in S["train_ctx"]:
        for impl in ("megalodon/auto", "transformer") if compiled else ("megalodon/auto", "megalodon/torch", "transformer"):
            ev.step("train", f"train {S['model']} {impl}{tag} L={L}", lambda impl=impl, L=L: train_row(_model(impl, compiled), L, compiled),
                    model=S["model"], impl=impl + tag)


def part_decode(ev: Evidence) -> None:
    dt = torch.bfloat16 if not SIM else torch.float32
    for impl in ("megalodon/auto", "transformer"):
        for n in S["decode_ctx"]:
            ev.step("decode", f"decode {S['model']} {impl} context {n}", lambda impl=impl, n=n: decode_rows(_model(impl), [n], dt),
                    model=S["model"], impl=impl, dtype=str(dt)[6:])


def part_flex(ev: Evidence) -> None:
    "FlexAttention (compiled) on the attention benchmark's longest shape, W = 1 and 2: after the end-to-end rows, since compiling it costs tens of seconds."
    if SIM: return
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    A = S["attn_bench"]
    C, d, H, L = A["C"], A["d"], A["H"], A["L"][-1]
    Bt = A["tokens"] // L
    q, k, v = (t.transpose(1, 2).contiguous() for t in qkv(Bt, L, H, d, d, torch.bfloat16))
    flex = torch.compile(flex_attention)
    def row(W):
        def rule(b, h, qi, kj): return (kj <= qi) & (kj // C >= qi // C - W + 1)
        bm = create_block_mask(rule, None, None, L, L, device=str(DEV))
        return attn_speed(f"FlexAttention W={W}", lambda *t: flex(*t, block_mask=bm, scale=1.0), (q, k, v), Bt * H * L * bench.visible_keys(L, C, W) * 2 * (d + d))
    for W in (1, 2): ev.step("kernels", f"attention FlexAttention W={W} L={L}", lambda W=W: row(W), kernel="attention", L=L, B=Bt, H=H, d=d, C=C, W=W)


# ------------------------------------------------------------------------------------------------------------- main
def pack_cache(out: Path) -> None:
    cache = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    if cache.is_dir():
        with tarfile.open(out / "triton_cache.tgz", "w:gz") as tar: tar.add(cache, arcname="triton_cache")


def unpack(folder: Path) -> None:
    """File a call's evidence.json under kernels/results/<gpu slug>/evidence.json (the notebooks and README read it there).
    Several calls merge: each row is tagged with its call's start time, a measured row replaces the rows of the same
    step from earlier calls (so a step re-run after a fix shows the fixed result), and every call's errors are kept."""
    data = json.loads((folder / "evidence.json").read_text())
    when = data["record"]["when"]
    for sec in SECTIONS:
        for r in data[sec]: r.setdefault("call", when)
    for e in data["errors"]: e.setdefault("call", when)
    dest = ROOT / "kernels" / "results" / bench.device_slug(data["record"]["device"])
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "evidence.json"
    calls = [dict(record=data["record"], parts=data["parts"], restarts=data["restarts"])]
    if target.exists():
        old = json.loads(target.read_text())
        for sec in SECTIONS:
            measured = {r["name"] for r in data[sec] if "skipped" not in r and "error" not in r}
            old_names = {r["name"] for r in old[sec]}
            data[sec] = [r for r in old[sec] if r["name"] not in measured] + [r for r in data[sec] if r["name"] in measured or r["name"] not in old_names]
        data["errors"] = old["errors"] + data["errors"]
        calls = old["calls"] + calls
    data["calls"] = calls
    for k in ("parts", "restarts", "end_time", "budget_s"): data.pop(k, None)
    target.write_text(json.dumps(data, indent=1))
    print(f"wrote {target}: " + ", ".join(f"{len(data[sec])} {sec} rows" for sec in SECTIONS) + f", {len(data['errors'])} errors, {len(calls)} calls")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=430, help="seconds for all parts (start no measurement after)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated, run in this order (default: all, in priority order)")
    ap.add_argument("--shares", default="30,60,35,45,25,40,25,45,70,60,0,0", help="seconds each part may use at most (0: until the budget's end)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--unpack", type=Path, help="file the evidence.json in this folder under kernels/results/ and exit")
    a = ap.parse_args(argv)
    if a.unpack: unpack(a.unpack); return 0
    out = Path(os.environ.get("OUT", ROOT / "build" / "gpu_evidence")); out.mkdir(parents=True, exist_ok=True)
    if not SIM and not torch.cuda.is_available(): sys.exit("no CUDA device (GPU_SIM=1 rehearses on the CPU)")
    if not a.child:  # the parent: children do the work, and one that a CUDA error ends is followed by another
        (out / "evidence.json").unlink(missing_ok=True)
        end = time.time() + a.budget
        args = [sys.executable, __file__, "--child", "--parts", a.parts, "--shares", a.shares, "--budget", str(a.budget)]
        for attempt in range(8):
            rc = subprocess.call(args, env={**os.environ, "GPU_EVIDENCE_END": str(end)})
            if rc != CUDA_FAULT or time.time() > end: break
            data = json.loads((out / "evidence.json").read_text()); data["restarts"] += 1
            (out / "evidence.json").write_text(json.dumps(data, indent=1))
        if not SIM: pack_cache(out)
        return summary(json.loads((out / "evidence.json").read_text()))
    from megalodon_lit.ops import attention as ops_attention
    ops_attention.AUTOTUNE = False  # the fixed default tiles: no minutes spent trying tile shapes
    ev = Evidence(out, a.budget, float(os.environ.get("GPU_EVIDENCE_END", 0)) or None)
    ev.log(f"{ev.data['record']}")
    for name, share in zip(a.parts.split(","), [float(x) for x in a.shares.split(",")]):
        with ev.part(name, share): PARTS[name](ev)
    return 0


PARTS = dict(verify=part_verify, parity_cema=part_parity_cema, parity_tsn=part_parity_tsn, parity_attention=part_parity_attention,
             parity_model=part_parity_model, kernels_cema=part_kernels_cema, kernels_tsn=part_kernels_tsn,
             kernels_attention=part_kernels_attention, train=part_train, decode=part_decode, flex=part_flex,
             compiled=lambda ev: part_train(ev, compiled=True))


def summary(data: dict) -> int:
    "Print the parity verdict and the errors; exit status 1 if a row is over its tolerance or a step failed."
    bad = [r for r in data["parity"] if r.get("ok") is False]
    print(f"parity: {sum(r.get('ok') is True for r in data['parity'])} rows within tolerance, {len(bad)} over; "
          f"{len(data['errors'])} errors; {data['restarts']} restarts after a CUDA error")
    for r in bad: print(f"  OVER: {r['compared']}: {r['err']:.3e} > {r['tol']:.1e}")
    for e in data["errors"]: print(f"  ERROR {e['where']}: {e['error'][:200]}")
    return 1 if bad or data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
