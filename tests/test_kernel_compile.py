"""GPU readiness without a GPU: compile every Triton kernel ahead of time for Hopper (sm_90,
through Triton's bundled ptxas) with the argument specialisation a real launch would get, and
check shared memory, registers and spills; and trace the ops' CUDA path on fake CUDA tensors
as torch.compile decomposes them.

The launchers are called on `meta` tensors with the launch intercepted, so the kernels are
compiled with exactly the arguments, dtypes and constexprs that the real launchers pass. By
default only each kernel's first (default) config is compiled; CLIPPO_COMPILE_ALL=1 compiles
every autotune config. Also a script: `python tests/test_kernel_compile.py [--all]` prints
a table. Runs in a subprocess without TRITON_INTERPRET (the interpreter replaces the compiler).
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

HOPPER_SMEM = 232448  # bytes of shared memory a block may use on H100/H200 (227 KiB)


def _cases():
    """(label, launcher, args builder) for every kernel launch the library makes."""
    import torch
    meta = "meta"

    def patch(dtype, uint8):
        def build():
            if uint8:
                x = torch.empty(8, 1, 224, 224, dtype=torch.uint8, device=meta)
                x = x.expand(8, 3, 224, 224)
            else:
                x = torch.empty(8, 3, 224, 224, dtype=dtype, device=meta)
            w = torch.empty(768, 3, 16, 16, dtype=dtype, device=meta)
            b = torch.empty(768, dtype=dtype, device=meta)
            pos = torch.empty(1, 196, 768, dtype=dtype, device=meta)
            return x, w, b, pos
        return build

    def attn(dtype, lq, lk, dh):
        def build():
            q = torch.empty(8, 12, lq, dh, dtype=dtype, device=meta)
            k = torch.empty(8, 12, lk, dh, dtype=dtype, device=meta)
            return q, k, k.clone()
        return build

    def norm(dtype):
        def build():
            x = torch.empty(8, 196, 768, dtype=dtype, device=meta)
            w = torch.empty(768, dtype=dtype, device=meta)
            return x, w, w.clone()
        return build

    def dense(dtype, k, n, gelu):
        def build():
            x = torch.empty(8, 197, k, dtype=dtype, device=meta)
            w = torch.empty(n, k, dtype=dtype, device=meta)
            b = torch.empty(n, dtype=dtype, device=meta)
            r = None if gelu else torch.empty(8, 197, n, dtype=dtype, device=meta)
            return x, w, b, r, "gelu" if gelu else None
        return build

    cases = []
    for dtype in (torch.bfloat16, torch.float32):
        cases.append((f"layer_norm {str(dtype).split('.')[-1]}", "norm", norm(dtype)))
        for k, n, gelu in ((768, 3072, True), (3072, 768, False)):
            cases.append((f"linear {str(dtype).split('.')[-1]} {k}->{n}"
                          f"{' gelu' if gelu else ' +res'}", "linear", dense(dtype, k, n, gelu)))
        name = str(dtype).split(".")[-1]
        for uint8 in (True, False):
            cases.append((f"patch_embed {name} {'uint8' if uint8 else 'float'}", "patch",
                          patch(dtype, uint8)))
        for dh in (64, 128):
            cases.append((f"attention {name} Dh={dh}", "attention", attn(dtype, 197, 197, dh)))
    return cases


def _capture(pe, at, ln, lin, torch):
    """Patch the modules' `launcher` so a launch records (kernel, args, kwargs) instead."""
    calls = []

    class Capture:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def call(*args, **kwargs):
                calls.append((self.kernel, args, kwargs))
            return call

    pe.launcher = at.launcher = ln.launcher = lin.launcher = Capture
    return calls


def _signature(fn, args, kwargs, cfg):
    """What JITFunction specialisation would produce for these arguments (ints equal to 1 are
    constants, ints and pointers divisible by 16 get the divisibility hint)."""
    import torch
    from triton.compiler import ASTSource
    names = fn.arg_names
    sig, consts, attrs = {}, {}, {}
    bound = dict(zip(names, args), **kwargs, **cfg)
    for i, name in enumerate(names):
        v = bound[name]
        is_constexpr = i in [p.num for p in fn.params if p.is_constexpr]
        if is_constexpr or v is None:
            sig[name] = "constexpr"
            consts[name] = v
        elif isinstance(v, torch.Tensor):
            ty = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
                  torch.uint8: "u8"}[v.dtype]
            sig[name] = "*" + ty
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            if v == 1:
                sig[name] = "constexpr"
                consts[name] = 1
                continue
            sig[name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{name}: {type(v)}")
    return ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)


def compile_all(all_configs):
    import importlib

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.autotuner import Autotuner

    pe = importlib.import_module("clippo.kernels.patch_embed")
    at = importlib.import_module("clippo.kernels.attention")
    ln = importlib.import_module("clippo.kernels.layer_norm")
    lin = importlib.import_module("clippo.kernels.linear")
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    target = GPUTarget("cuda", 90, 32)
    calls = _capture(pe, at, ln, lin, torch)
    for label, kind, build in _cases():
        start = len(calls)
        if kind == "patch":
            x, w, b, pos = build()
            out = pe.patch_embed_fwd(x, w, b, pos)
            pe.patch_embed_grad_weight(x, out, 16)
        elif kind == "norm":
            x, w, b = build()
            y, mean, rstd = ln.layer_norm_fwd(x, w, b)
            ln.layer_norm_bwd(y, x, w, mean, rstd)
        elif kind == "linear":
            x, w, b, r, act = build()
            lin.linear_fwd(x, w, b, r, act, save_pre=act is not None)
        else:
            q, k, v = build()
            out, lse = at.attention_fwd(q, k, v)
            at.attention_bwd(out, q, k, v, out, lse)
        for kernel, args, kwargs in calls[start:]:
            if isinstance(kernel, Autotuner):
                configs = kernel.configs if all_configs else kernel.configs[:1]
                fn = kernel.fn
            else:  # plain kernels: num_warps as launched (default 4)
                configs = [triton.Config({}, num_warps=kwargs.pop("num_warps", 4), num_stages=2)]
                fn = kernel
            for cfg in configs:
                src = _signature(fn, args, kwargs, cfg.kwargs)
                row = {"case": label, "kernel": fn.__name__.strip("_"),
                       "config": ",".join(f"{k}={v}" for k, v in cfg.kwargs.items()),
                       "warps": cfg.num_warps, "stages": cfg.num_stages}
                try:
                    ck = triton.compile(src, target=target, options={
                        "num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
                except Exception as e:  # reported, the test fails on it
                    row["error"] = repr(e)[:500]
                    yield row
                    continue
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(ck.asm["cubin"])
                    f.flush()
                    res = subprocess.run([cuobjdump, "--dump-resource-usage", f.name],
                                         capture_output=True, text=True).stdout
                m = re.search(r"REG:(\d+) STACK:(\d+)", res)
                row.update(regs=int(m.group(1)) if m else None,
                           stack=int(m.group(2)) if m else None, shared=ck.metadata.shared)
                yield row


def trace_cuda_path():
    """Trace the ops on fake CUDA tensors through AOT autograd, which decomposes each triton_op
    into its body: runs the CUDA launch code (argument lists, grid functions of every autotune
    config, the fp32/half config choice) and returns, per dtype, the traced graph's code."""
    import torch
    from functorch.compile import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    import clippo.kernels  # noqa: F401  (registers the ops)

    def f(q, k, v, img, w, b, pos):
        o, lse = torch.ops.clippo.attention_fwd(q, k, v, 0.125)
        dq, dk, dv = torch.ops.clippo.attention_bwd(o, q, k, v, o, lse, 0.125)
        x = torch.ops.clippo.patch_embed(img, w, b, pos)
        gw = torch.ops.clippo.patch_embed_grad_weight(img, x, 16)
        # (no indexing of fake CUDA tensors here: a CPU build of torch cannot do it)
        y, mean, rstd = torch.ops.clippo.layer_norm_fwd(x, b, b, 1e-6)
        dx, dln_w, dln_b = torch.ops.clippo.layer_norm_bwd(y, x, b, mean, rstd)
        z, pre = torch.ops.clippo.linear(x, w.reshape(768, 768), b, x, True, True)
        return o, dq, dk, dv, x, gw, dx, dln_w, z, pre

    codes = {}
    for dtype in (torch.bfloat16, torch.float32):
        graphs = []

        def keep(gm, _):
            graphs.append(gm)
            return gm
        with FakeTensorMode(allow_non_fake_inputs=True):
            q = torch.empty(2, 12, 197, 64, device="cuda", dtype=dtype)
            img = torch.empty(2, 1, 224, 224, device="cuda", dtype=torch.uint8)
            img = img.expand(2, 3, 224, 224)
            w = torch.empty(768, 3, 16, 16, device="cuda", dtype=dtype)
            b = torch.empty(768, device="cuda", dtype=dtype)
            pos = torch.empty(1, 196, 768, device="cuda", dtype=dtype)
            try:
                aot_function(f, fw_compiler=keep)(q, q.clone(), q.clone(), img, w, b, pos)
            except RuntimeError:
                if torch.cuda.is_available():
                    raise
                # a CPU build cannot run the traced graph; the trace is what is checked
        codes[str(dtype)] = graphs[0].code if graphs else ""
    return codes


def _nvidia_backend_present():
    # without importing triton here: the interpreter-tier test modules in the same pytest
    # process need TRITON_INTERPRET=1 set before triton's first import
    import importlib.util
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = list(spec.submodule_search_locations)[0]
    return os.path.exists(os.path.join(root, "backends", "nvidia", "bin", "cuobjdump"))


@pytest.mark.skipif(not _nvidia_backend_present(), reason="triton without its NVIDIA backend")
def test_kernels_compile_for_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CLIPPO_AUTOTUNE"] = "1"  # all configs present; the script picks the first by default
    proc = subprocess.run([sys.executable, __file__, "--json"]
                          + (["--all"] if os.environ.get("CLIPPO_COMPILE_ALL") == "1" else []),
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rows, "no kernel was compiled"
    kernels = {r["kernel"] for r in rows}
    assert {"patch_embed_fwd_kernel", "patch_embed_grad_weight_kernel", "attn_fwd_kernel",
            "attn_bwd_delta_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel",
            "layer_norm_fwd_kernel", "layer_norm_bwd_kernel", "linear_kernel"} <= kernels
    errors = [r for r in rows if "error" in r]
    assert not errors, errors
    for r in rows:
        assert r["shared"] <= HOPPER_SMEM, r
        assert r["stack"] == 0, f"register spills in a default config: {r}"


@pytest.mark.skipif(not _nvidia_backend_present(), reason="triton without its NVIDIA backend")
def test_cuda_path_traces_to_triton_kernels():
    """As torch.compile will see the ops on a GPU: every op becomes wrap_triton kernel calls
    (1 forward + 3 backward attention kernels, 2 patch-embedding kernels, 2 layer-norm ones,
    the fused linear)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__, "--trace"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(codes) == {"torch.bfloat16", "torch.float32"}
    for dtype, code in codes.items():
        assert code.count("triton_kernel_wrapper_functional(") == 9, (dtype, code)
        for op in ("attention_fwd", "attention_bwd", "patch_embed", "layer_norm_fwd",
                   "layer_norm_bwd", "linear"):
            assert f"clippo.{op}" not in code, (dtype, op)


if __name__ == "__main__":
    assert not os.environ.get("TRITON_INTERPRET"), "unset TRITON_INTERPRET to compile"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if "--trace" in sys.argv:
        print(json.dumps(trace_cuda_path()))
        sys.exit(0)
    rows = list(compile_all("--all" in sys.argv))
    if "--json" in sys.argv:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(r)
