#!/usr/bin/env python3
"""Localise a CEMA-backward fault on a GPU: each kernel's outputs (and intermediates) against the interpreter's.

    python tools/cema_bwd_diag.py make REF.pt      # here, CPU interpreter: inputs and every intermediate, GPU tile sizes
    python tools/cema_bwd_diag.py check REF.pt     # on the GPU: the same launches, variant by variant, rel. errors
"""
import os, sys
if sys.argv[1] == "make" or os.environ.get("GPU_SIM"): os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch
from megalodon_lit.cema import CEMAParameters
from megalodon_lit.core import rel_err, out_buffer
from megalodon_lit.ops import cema as oc
import triton

SHAPES = [(2, 6, 4, 37, 64), (2, 8, 16, 300, 64), (1, 4, 16, 1100, 64), (2, 3, 16, 200, 16)]

def run(x, dy, dh, p, q, g, h0, T, dev, BC=16, BN=16, prec=None, warps_dx=8, warps_par=8, E_in=None):
    "Forward with states, then the two backward kernels as _chunk_bwd launches them; every buffer returned."
    x, dy, dh, p, q, g, h0 = (t.to(dev) for t in (x, dy, dh, p, q, g, h0))
    prec = prec or oc.DOT_PRECISION
    y, h, s = oc._chunk_fwd(x, p, q, g, h0, T, True, BC=BC, BN=BN, prec=prec)
    B, D, L = x.shape; N = p.shape[1]
    NC = triton.cdiv(L, T); r = L - (NC - 1) * T
    dhp = oc._as_pairs(dh)
    weights = oc._bwd_weights(q, T)
    k, w1, v1, g32, p32, cqT, cqr, fT, fr = oc._bwd_tables(p, q, g, T, r, weights)
    f = lambda *sh: torch.full(sh, float("nan"), device=dev)
    dx, dh0, E, es, GS, GE, M = f(B, D, L), f(B, D, N, 2), f(B, D, NC, 2, N), f(D, N, 2), f(D, 2, N, T), f(D, 2, N, T), f(D, T, T)
    blocks = dict(T=T, BC=BC, BN=BN, PREC=prec)
    oc._cema_chunk_bwd_dx_kernel[(B * D,)](dy, dhp, dx, dh0, E, k, w1, v1, g32, p32, cqT, cqr, B, D, L, N, NC, **blocks, num_warps=warps_dx)
    if dev != "cpu": torch.cuda.synchronize()
    E_used = E if E_in is None else E_in.to(dev)
    oc._cema_chunk_bwd_params_kernel[(D,)](x, dy, s, E_used, dhp, es, GS, GE, M, fT, fr, B, D, L, N, NC, **blocks, num_warps=warps_par)
    if dev != "cpu": torch.cuda.synchronize()
    return dict(y=y, h=torch.view_as_real(h), s=s, dx=dx, dh0=dh0, E=E, es=es, GS=GS, GE=GE, M=M)

def make(path):
    cases = []
    for i, (B, D, N, L, T) in enumerate(SHAPES):
        torch.manual_seed(i)
        p, q, g = (t.detach() for t in CEMAParameters(D, N).coeffs())
        x, dy = torch.randn(B, D, L), torch.randn(B, D, L)
        h0, dh = (torch.randn(B, D, N, dtype=torch.complex64) for _ in range(2))
        ins = dict(x=x, dy=dy, dh=dh, p=p, q=q, g=g, h0=h0, T=T)
        cases.append(dict(ins=ins, ref={k: v.cpu() for k, v in run(**ins, dev="cpu").items()}))
        print("made", SHAPES[i])
    torch.save(cases, path)

def check(path):
    cases = torch.load(path)
    variants = [dict(), dict(warps_dx=4), dict(warps_par=4), dict(warps_dx=4, warps_par=4), dict(prec="ieee"), dict(E_from_ref=True)]
    if os.environ.get("DIAG_QUICK"): cases, variants = cases[:2], variants[:1]  # e.g. under compute-sanitizer
    for c, shape in zip(cases, SHAPES):
        for v in variants:
            v = dict(v); use_ref_E = v.pop("E_from_ref", False)
            try:
                out = run(**c["ins"], dev="cpu" if os.environ.get("GPU_SIM") else "cuda", **v, E_in=c["ref"]["E"] if use_ref_E else None)
                errs = {k: rel_err(out[k].cpu(), c["ref"][k]) for k in out}
                nan = [k for k in out if torch.isnan(out[k]).any()]
                print(shape, v, "E from interpreter" if use_ref_E else "", " ".join(f"{k}={e:.1e}" for k, e in errs.items()), "NaN left in:", nan, flush=True)
            except Exception as e:
                print(shape, v, "FAILED", type(e).__name__, str(e)[:200], flush=True); return

if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]](sys.argv[2])
