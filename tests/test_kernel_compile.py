"""GPU readiness without a GPU: compile every autotune config of every Triton kernel ahead of
time for Ampere (sm_80) and Hopper (sm_90), through Triton's bundled ptxas, with the argument
specialisation a real launch would get, and check shared memory and register spills; and trace
the ops' CUDA path on fake CUDA tensors as torch.compile decomposes them.

The launchers run on `meta` tensors with their launches recorded (tests/_kernel_testing.py,
captured_launches): at ViT-B/16 sizes, at the MAP head's (one query; a Dense over one row per
image), in bf16 and in fp32 with TF32 on and off; each recorded launch is compiled with every
config its autotuner holds. Identical compiles are made once, in parallel over the CPU cores
(CLIPPO_COMPILE_JOBS). Also a script: `python tests/test_kernel_compile.py [--first] [--only S]`
prints a table (--first: only each table's first config; --only: the cases whose label has
S). Runs in a subprocess without TRITON_INTERPRET (the interpreter replaces the compiler).
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

# bytes of shared memory one block may use (the opt-in maximum): A100, H100/H200
SHARED_MEMORY = {80: 166912, 90: 232448}


def _cases():
    """(label, launch(empty)) for every kernel launch the library makes, at ViT sizes."""
    import importlib

    import torch
    pe = importlib.import_module("clippo.kernels.patch_embed")
    at = importlib.import_module("clippo.kernels.attention")
    ln = importlib.import_module("clippo.kernels.layer_norm")
    lin = importlib.import_module("clippo.kernels.linear")

    def patch(dtype, uint8, kept=False):
        def launch(empty):
            x = (empty(8, 1, 224, 224, dtype=torch.uint8).expand(8, 3, 224, 224) if uint8
                 else empty(8, 3, 224, 224, dtype=dtype))
            w, b = empty(768, 3, 16, 16, dtype=dtype), empty(768, dtype=dtype)
            index = empty(8, 48, dtype=torch.int32) if kept else None  # the ink patches only
            out = pe.patch_embed_fwd(x, w, b, empty(1, 196, 768, dtype=dtype), index)
            pe.patch_embed_grad_weight(x, out, 16, index)
        return launch

    def attn(dtype, lq, lk, dh, ragged=False):
        def launch(empty):
            q, k = empty(8, 12, lq, dh, dtype=dtype), empty(8, 12, lk, dh, dtype=dtype)
            lengths = empty(8, dtype=torch.int32) if ragged else None  # key padding
            out, lse = at.attention_fwd(q, k, k, dh ** -0.5, lengths)
            at.attention_bwd(out, q, k, k, out, lse, dh ** -0.5, lengths)
        return launch

    def norm(dtype):
        def launch(empty):
            x, w = empty(8, 197, 768, dtype=dtype), empty(768, dtype=dtype)
            y, mean, rstd = ln.layer_norm_fwd(x, w, w, 1e-6)
            ln.layer_norm_bwd(y, x, w, mean, rstd)
        return launch

    def dense(dtype, rows, k, n, gelu):
        def launch(empty):
            x, w, b = empty(*rows, k, dtype=dtype), empty(n, k, dtype=dtype), empty(n, dtype=dtype)
            r = None if gelu else empty(*rows, n, dtype=dtype)
            lin.linear_fwd(x, w, b, r, "gelu" if gelu else None, gelu)
        return launch

    cases = []
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).split(".")[-1]
        cases.append((f"layer_norm {name}", norm(dtype)))
        for rows in ((8, 197), (8,)):
            for k, n, gelu in ((768, 3072, True), (3072, 768, False)):
                cases.append((f"linear {name} M={rows} {k}->{n}{' gelu' if gelu else ' +res'}",
                              dense(dtype, rows, k, n, gelu)))
        for uint8 in (True, False):
            cases.append((f"patch_embed {name} {'uint8' if uint8 else 'float'}",
                          patch(dtype, uint8)))
        if dtype == torch.bfloat16:  # the ink tokens of bf16 training
            cases.append((f"patch_embed {name} uint8 kept patches", patch(dtype, True, kept=True)))
        for dh in (64, 128):
            cases.append((f"attention {name} Dh={dh}", attn(dtype, 197, 197, dh)))
            cases.append((f"attention {name} Dh={dh} one query", attn(dtype, 1, 196, dh)))
        cases.append((f"attention {name} Dh=64 key lengths", attn(dtype, 48, 48, 64, True)))
        cases.append((f"attention {name} Dh=64 one query key lengths", attn(dtype, 1, 48, 64,
                                                                            True)))
    return cases


def _signature(fn, args, kwargs):
    """What JITFunction specialisation would produce for these arguments (ints equal to 1 are
    constants, ints and pointers divisible by 16 get the divisibility hint)."""
    import torch
    from triton.compiler import ASTSource
    constexpr = {p.num for p in fn.params if p.is_constexpr}
    sig, consts, attrs = {}, {}, {}
    bound = dict(zip(fn.arg_names, args), **kwargs)
    for i, name in enumerate(fn.arg_names):
        v = bound[name]
        if i in constexpr or v is None:
            sig[name] = "constexpr"
            consts[name] = v
        elif isinstance(v, torch.Tensor):
            sig[name] = "*" + {torch.bfloat16: "bf16", torch.float16: "fp16",
                               torch.float32: "fp32", torch.uint8: "u8",
                               torch.int32: "i32", torch.int64: "i64"}[v.dtype]
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


def _jobs(first_only, only=""):
    """One job per distinct (kernel, specialisation, config, arch): dicts with the ASTSource,
    compile options and the row that describes it; `only`: the cases whose label has it."""
    import torch
    from triton.runtime.autotuner import Autotuner

    from _kernel_testing import captured_launches, tf32

    def meta_empty(*shape, dtype=torch.float32):
        return torch.empty(*shape, dtype=dtype, device="meta")

    jobs, seen = [], set()
    for label, launch in _cases():
        if only not in label:
            continue
        # fp32 with TF32 on (torch's default for convolutions) and off (for matmuls)
        settings = [(True, True), (False, False)] if "float32" in label else [(False, False)]
        for allow in settings:
            with tf32(*allow), captured_launches() as calls:
                launch(meta_empty)
            for call in calls:
                kwargs = dict(call.kwargs)
                if isinstance(call.kernel, Autotuner):
                    fn, configs = call.kernel.fn, call.kernel.configs
                    configs = configs[:1] if first_only else configs
                    options = [dict(cfg.kwargs, num_warps=cfg.num_warps,
                                    num_stages=cfg.num_stages) for cfg in configs]
                else:  # a kernel launched with fixed meta-parameters
                    fn = call.kernel
                    options = [{"num_warps": kwargs.pop("num_warps", 4)}]
                for opt in options:
                    opt = dict(opt)
                    compile_opts = {k: opt.pop(k) for k in ("num_warps", "num_stages")
                                    if k in opt}
                    src = _signature(fn, call.args, {**kwargs, **opt})
                    for arch in SHARED_MEMORY:
                        key = (fn.__name__, repr(src.signature), repr(sorted(
                            src.constants.items())), repr(src.attrs), repr(compile_opts), arch)
                        if key in seen:
                            continue
                        seen.add(key)
                        precision = kwargs.get("IN_PRECISION")
                        jobs.append(dict(src=src, arch=arch, options=compile_opts, row={
                            "arch": f"sm_{arch}", "case": label, "kernel": fn.__name__.strip("_"),
                            "precision": precision,
                            "config": ",".join(f"{k}={v}" for k, v in opt.items()),
                            "warps": compile_opts.get("num_warps"),
                            "stages": compile_opts.get("num_stages")}))
    return jobs


_JOBS = []  # set before the worker processes fork


def _compile(index):
    import triton
    from triton.backends.compiler import GPUTarget
    job = _JOBS[index]
    row = dict(job["row"])
    try:
        ck = triton.compile(job["src"], target=GPUTarget("cuda", job["arch"], 32),
                            options=job["options"])
    except Exception as e:  # reported, the test fails on it
        row["error"] = repr(e)[:500]
        return row
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(ck.asm["cubin"])
        f.flush()
        res = subprocess.run([cuobjdump, "--dump-resource-usage", f.name],
                             capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    row.update(regs=int(m.group(1)) if m else None, stack=int(m.group(2)) if m else None,
               shared=ck.metadata.shared)
    return row


def compile_all(first_only=False, only=""):
    import multiprocessing
    _JOBS[:] = _jobs(first_only, only)
    workers = int(os.environ.get("CLIPPO_COMPILE_JOBS", 0)) or os.cpu_count() or 1
    with multiprocessing.get_context("fork").Pool(min(workers, len(_JOBS))) as pool:
        return pool.map(_compile, range(len(_JOBS)), chunksize=1)


def table_configs():
    """(kernel, kind, config) for every row of every autotune table."""
    from clippo.kernels import _triton
    out = []
    for kernel in _triton.KERNELS:
        for kind in kernel.tables or ():
            for cfg in kernel.table(kind):
                out.append((kernel.name, kind, ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())
                            + f" w{cfg.num_warps} s{cfg.num_stages}"))
    return out


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
        z, pre = torch.ops.clippo.linear(x, w.reshape(768, 768), b, x, "gelu", True)
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
    import importlib.util
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = list(spec.submodule_search_locations)[0]
    return os.path.exists(os.path.join(root, "backends", "nvidia", "bin", "cuobjdump"))


def _run_script(*flags, timeout):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CLIPPO_AUTOTUNE"] = "1"  # every config
    proc = subprocess.run([sys.executable, __file__, "--json", *flags], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_nvidia = pytest.mark.skipif(not _nvidia_backend_present(),
                                  reason="triton without its NVIDIA backend")


@needs_nvidia
def test_every_config_compiles_for_ampere_and_hopper():
    result = _run_script(timeout=3600)
    rows = result["rows"]

    def listed(bad):
        return "\n".join(" ".join(f"{k}={v}" for k, v in r.items()) for r in bad)
    errors = [r for r in rows if "error" in r]
    assert not errors, listed(errors)
    too_big = [r for r in rows if r["shared"] > SHARED_MEMORY[int(r["arch"][3:])]]
    assert not too_big, "over the shared memory limit:\n" + listed(too_big)
    spills = [r for r in rows if r["stack"] != 0]  # local memory: register spills
    assert not spills, "register spills:\n" + listed(spills)
    # every row of every table compiled, for both architectures
    compiled = {(r["arch"], r["kernel"], r["config"] + f" w{r['warps']} s{r['stages']}")
                for r in rows}
    missing = [(arch, name, kind, cfg) for name, kind, cfg in result["tables"]
               for arch in ("sm_80", "sm_90") if (arch, name, cfg) not in compiled]
    assert not missing, missing
    kernels = {r["kernel"] for r in rows}
    assert {"patch_embed_fwd_kernel", "patch_embed_grad_weight_kernel", "attn_fwd_kernel",
            "attn_bwd_delta_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel",
            "layer_norm_fwd_kernel", "layer_norm_bwd_kernel", "linear_kernel"} == kernels
    assert {r["precision"] for r in rows} == {None, "ieee", "tf32"}


@needs_nvidia
def test_cuda_path_traces_to_triton_kernels():
    """As torch.compile will see the ops on a GPU: every op becomes wrap_triton kernel calls
    (1 forward + 3 backward attention kernels, 2 patch-embedding kernels, 2 layer-norm ones,
    the fused linear)."""
    codes = _run_script("--trace", timeout=600)
    assert set(codes) == {"torch.bfloat16", "torch.float32"}
    for dtype, code in codes.items():
        assert code.count("triton_kernel_wrapper_functional(") == 9, (dtype, code)
        for op in ("attention_fwd", "attention_bwd", "patch_embed", "layer_norm_fwd",
                   "layer_norm_bwd", "linear"):
            assert f"clippo.{op}" not in code, (dtype, op)


if __name__ == "__main__":
    assert not os.environ.get("TRITON_INTERPRET"), "unset TRITON_INTERPRET to compile"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]
    if "--trace" in sys.argv:
        print(json.dumps(trace_cuda_path()))
        sys.exit(0)
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""
    rows = compile_all(first_only="--first" in sys.argv, only=only)
    if "--json" in sys.argv:
        print(json.dumps({"rows": rows, "tables": table_configs()}))
    else:
        for r in rows:
            print(r)
        print(f"{len(rows)} compiles")
