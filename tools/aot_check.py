"""Compile every Triton kernel the wrappers launch, for an NVIDIA H100 (sm_90), on a machine without a GPU.

The interpreter (CI's kernel tests) checks what a kernel computes, but not that it compiles for a GPU: an
interpreter run accepts a `tl.dot` on tiles smaller than 16, a shared-memory budget no GPU has, and some type
mixes the compiler rejects. This script runs each op's forward and backward at GPU-sized shapes with the
kernels left as real `@triton.jit` functions; every launch is intercepted, its argument types and
compile-time constants are recorded, and Triton's ahead-of-time compiler builds it for `cuda:90` down to a
cubin (ptxas included). Nothing executes: outputs stay uninitialised, only compilation is checked.

    python tools/aot_check.py            # the failures, the specialisations that spill, and a summary; exit 1 on a failure
    python tools/aot_check.py -v         # one line per distinct kernel specialisation, with registers and spills
    python tools/aot_check.py --all-configs   # every configuration an autotuner may pick, not only its first

Registers and spills: each specialisation's PTX goes through Triton's own ptxas again with `-v` and the flags Triton
uses (`--gpu-name=sm_90a`, `--regAllocOptLevel=2`, `-lineinfo`), and its "Used N registers" and "bytes spill
stores/loads" are reported. A spill (registers kept in local memory, i.e. in L1/L2/DRAM) is a finding about speed,
not a failure: the exit status counts only compile failures and shared memory over budget.

What it does not check: numerical results on the GPU, speed.
"""
import os
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("aot_check: unset TRITON_INTERPRET (the kernels must be real @triton.jit functions here)")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

TARGET = GPUTarget("cuda", 90, 32)
SMEM_H100 = 227 * 1024  # bytes of shared memory one block may use on sm_90
DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
          torch.int64: "i64", torch.int32: "i32", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}
results: dict[tuple, str] = {}
usage: dict[tuple, tuple[int, int, int]] = {}  # key -> (registers per thread, spill store bytes, spill load bytes)


def _type_of(v) -> str:
    if isinstance(v, torch.Tensor): return "*" + DTYPES[v.dtype]
    if isinstance(v, bool): return "i1"
    if isinstance(v, int): return "i32" if -2**31 <= v < 2**31 else "i64"
    if isinstance(v, float): return "fp32"
    raise TypeError(f"no Triton type for {type(v).__name__}")


def _ptxas_usage(ptx: str, name: str, fmad: bool) -> tuple[int, int, int]:
    "(registers per thread, spill store bytes, spill load bytes) of a kernel's PTX, by ptxas -v with Triton's flags."
    arch = sm_arch_from_capability(TARGET.arch)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        cmd = [get_ptxas(TARGET.arch).path, "-lineinfo", *([] if fmad else ["--fmad=false"]), "-v", "--regAllocOptLevel=2",
               f"--gpu-name={arch}", str(src), "-o", str(src.with_suffix(".o"))]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    # the log has one "Function properties" block per function (the kernel, and any non-inlined callee)
    regs = re.search(rf"Compiling entry function '{re.escape(name)}'.*?Used (\d+) registers", log, re.S)
    spills = [tuple(map(int, m)) for m in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)]
    if regs is None or not spills: raise RuntimeError(f"unexpected ptxas -v output for {name}:\n{log}")
    return int(regs.group(1)), sum(s for s, _ in spills), sum(l for _, l in spills)


def _first_ptr(signature: dict) -> str:
    "The first pointer argument and its type (e.g. x_ptr:*bf16): tells a float32 specialisation from a bfloat16 one."
    return next((f"{n}:{t}" for n, t in signature.items() if t.startswith("*")), "")


def _compile(self: JITFunction, *args, grid, warmup, **kwargs):
    "Stands in for JITFunction.run: compile for sm_90 instead of launching."
    names = [p.name for p in self.params]
    bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    options = {k: v for k, v in kwargs.items() if k not in names and k in ("num_warps", "num_stages")}
    signature, constexprs = {}, {}
    for p in self.params:
        v = bound.get(p.name, p.default)
        if p.is_constexpr or v is None:
            signature[p.name], constexprs[p.name] = "constexpr", v
        else:
            signature[p.name] = _type_of(v)
    key = (self.fn.__module__, self.fn.__name__, tuple(signature.items()), tuple(sorted(constexprs.items(), key=str)), tuple(sorted(options.items())))
    if key in results: return None
    try:
        k = triton.compile(ASTSource(self, signature, constexprs), target=TARGET, options=options)
        shared = k.metadata.shared
        results[key] = "ok" if shared <= SMEM_H100 else f"FAIL: {shared} bytes of shared memory > {SMEM_H100}"
    except Exception as e:  # noqa: BLE001 - every compiler error is a finding
        results[key] = "FAIL: " + "".join(traceback.format_exception_only(e)).strip().splitlines()[-1][:300]
        return None
    try:  # the register report is information, never a failure
        usage[key] = regs, st, ld = _ptxas_usage(k.asm["ptx"], self.fn.__name__, k.metadata.enable_fp_fusion)
        results[key] += f" (shared {shared} B, {regs} registers, spills {st} B stored / {ld} B loaded)"
    except Exception as e:  # noqa: BLE001
        results[key] += f" (shared {shared} B, registers unknown: {str(e).splitlines()[0][:200]})"
    if "-v" in sys.argv[1:]: print(f"{len(results):3d} {self.fn.__name__} {_first_ptr(signature)}: {results[key]}", flush=True)
    return None


def _autotune_all(self: Autotuner, *args, **kwargs):
    "Compile the configurations an autotuned kernel would time here (its own pruning applied), instead of timing them."
    self.nargs = dict(zip(self.arg_names, args))
    configs = self.prune_configs(kwargs)
    for cfg in configs if "--all-configs" in sys.argv[1:] else configs[:1]:
        self.fn.run(*args, **kwargs, **cfg.all_kwargs())


def _pretend_cuda():
    "Make the wrappers take their GPU code paths (block sizes, checks) for CPU tensors."
    torch.Tensor.is_cuda = property(lambda self: True)
    import megalodon_lit.core as core
    core.triton_interpreting = lambda: False


def exercise():
    "Forward and backward of every op, at shapes that select the GPU configurations, float32 and bfloat16."
    from megalodon_lit.cema_params import CEMAParameters
    from megalodon_lit.ops.cema import cema_triton
    from megalodon_lit.ops.timestep_norm import timestep_norm_triton
    from megalodon_lit.ops.attention import attention_triton, attention_decode_triton
    for dt in (torch.float32, torch.bfloat16):
        p, q, g = (t.detach() for t in CEMAParameters(64, 16).coeffs())
        x = torch.randn(2, 64, 300, dtype=dt, requires_grad=True)
        h0 = torch.randn(2, 64, 16, dtype=torch.complex64, requires_grad=True)
        y, h = cema_triton(x, p, q, g, h0)
        torch.autograd.grad((y.float().sum(), h.real.sum()), (x, h0), allow_unused=True)
        x = torch.randn(2, 1000, 256, dtype=dt, requires_grad=True)
        w, b = torch.zeros(256, requires_grad=True), torch.zeros(256, requires_grad=True)
        mean, var = torch.zeros(2, 16, requires_grad=True), torch.ones(2, 16, requires_grad=True)
        pad = torch.zeros(2, 1000, dtype=torch.bool)
        out = timestep_norm_triton(x, w, b, torch.zeros(2, dtype=torch.long), mean, var, 16, 1e-5, pad)
        torch.autograd.grad(out[0].float().sum(), (x, w, b, mean, var), allow_unused=True)
        for dz, dv, H in ((128, 128, 4), (256, 2048, 1)):  # the usual head, and the 7B shape
            q_, k_ = (torch.randn(1, 600, H, dz, dtype=dt, requires_grad=True) for _ in range(2))
            v_ = torch.randn(1, 600, H, dv, dtype=dt, requires_grad=True)
            for W, drop in ((1, 0.0), (2, 0.1)):
                o = attention_triton(q_, k_, v_, 256, W, drop, drop > 0)
                torch.autograd.grad(o.float().sum(), (q_, k_, v_))
            with torch.no_grad(): attention_decode_triton(q_[:, :1], k_[:, :512], v_[:, :512], 511, 256, 2)


if __name__ == "__main__":
    JITFunction.run = _compile
    Autotuner.run = _autotune_all
    _pretend_cuda()
    try:
        exercise()
    except Exception:  # a wrapper failed before or between launches: report it, with what compiled so far
        traceback.print_exc()
        results[("exercise",)] = "FAIL: the wrappers raised (traceback above)"
    def describe(key): return f"{key[1]} {_first_ptr(dict(key[2]))}  {dict(key[3])}  {dict(key[4])}" if len(key) > 1 else key[0]
    for key, res in results.items():
        if res.startswith("FAIL") or "-v" in sys.argv[1:]: print(f"{res[:4]:<5} {describe(key)}  {res}")
    spilling = [(key, u) for key, u in usage.items() if u[1] or u[2]]
    print(f"{len(spilling)} specialisations spill registers to local memory" + (":" if spilling else ""))
    for key, (regs, st, ld) in spilling: print(f"  spill {describe(key)}  {regs} registers, {st} B stored / {ld} B loaded per thread")
    bad = [r for r in results.values() if r.startswith("FAIL")]
    print(f"{len(results) - len(bad)} kernel specialisations compiled for sm_90, {len(bad)} failed")
    sys.exit(1 if bad or not results else 0)
