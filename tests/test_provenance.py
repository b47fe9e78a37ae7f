"""Kernel provenance (effilab.grading.provenance): the reference solutions of the Triton exercises —
taken from solutions/, the single source — pass the own-work rule on real checker cases, and each
way of getting the points without one's own kernel fails it with a message naming what ran.

Cheats are written as notebook code (exec'd under a ``<…>`` filename, like a student's cell); the
token kernel they use is cheat code, never a copy of a reference kernel. Shapes stay small: Triton
runs in its interpreter on a CPU.
"""
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from effilab.grading import core, provenance
from effilab.grading.nbcode import exec_cells, solution_namespace
from effilab.grading.keys import Key
from effilab.grading.provenance import OwnWorkError, checked, kernel_rule, own_work_problem, record_call

ROOT = Path(__file__).resolve().parents[1]
NB01 = ROOT / "solutions" / "01_float_formats.ipynb"
NB08 = ROOT / "solutions" / "08_operator_fusion.ipynb"
KERNEL_EXERCISES = ["rms_norm", "swiglu", "swiglu_backward", "cross_entropy", "flash_attention", "stochastic_round_bf16"]

SETUP = """
import math, operator, importlib, threading, queue
import numpy as np
import effilab
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

@triton.jit
def token_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=m), mask=m)

def touch(src, dst):
    token_kernel[(triton.cdiv(src.numel(), 1024),)](src, dst, src.numel(), BLOCK=1024)

def eager_rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
"""


def student(src: str) -> dict:
    """Run ``src`` as a student's notebook cell (after the setup above); its namespace."""
    return exec_cells([(0, SETUP), (1, textwrap.dedent(src))], label="student")


@pytest.fixture(scope="module")
def refs():
    ns = dict(solution_namespace(NB08))
    ns["stochastic_round_bf16"] = solution_namespace(NB01)["stochastic_round_bf16"]
    return ns


def _rms_args(rows=5, cols=67):
    g = torch.Generator().manual_seed(0)
    return torch.randn(rows, cols, generator=g), torch.randn(cols, generator=g) * 0.5 + 1.0, 1e-6


def _problem(fn, *args, name="rms_norm"):
    out, rec = record_call(fn, *args, rule=kernel_rule(name))
    return own_work_problem(out, rec)


# ----------------------------------------------------------------------------------------------
# The reference solutions pass, on the checker's own cases
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KERNEL_EXERCISES)
def test_reference_solution_does_its_own_work_on_every_group(refs, name):
    ex = core.get(name)
    for group in ex.cases("public", Key.public()):
        r = core.judge_case(ex, core.run_case(ex, refs[name], group.cases[0]), group.cases[0])
        assert r.ok, f"{group.name}: {r.problem}"


def test_reference_record_shows_one_student_launch_and_no_compute(refs):
    out, rec = record_call(refs["rms_norm"], *_rms_args(), rule=kernel_rule("rms_norm"))
    assert [(ln.name, ln.student) for ln in rec.launches] == [("rms_norm_kernel", True)]
    assert rec.compute == [] and rec.escapes == [] and rec.tampered == []
    assert own_work_problem(out, rec) is None


def test_cross_entropy_epilogue_is_allowed_only_for_cross_entropy(refs):
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(9, 300, generator=g), torch.randint(0, 300, (9,), generator=g)
    out, rec = record_call(refs["cross_entropy"], logits, target, rule=kernel_rule("cross_entropy"))
    assert own_work_problem(out, rec) is None
    out, rec = record_call(refs["cross_entropy"], logits, target, rule=kernel_rule("rms_norm"))
    assert "aten::sum" in own_work_problem(out, rec)


# ----------------------------------------------------------------------------------------------
# Cheats that scored points before
# ----------------------------------------------------------------------------------------------
def test_eager_pytorch_fails():
    ns = student("def rms_norm(x, w, eps=1e-6):\n    return eager_rms(x, w, eps)\n")
    problem = _problem(ns["rms_norm"], *_rms_args())
    assert "your function computes with PyTorch ops (aten::pow, aten::mean" in problem
    assert "this exercise asks for the work in your own Triton kernel" in problem


def test_library_op_beside_a_token_kernel_fails():
    ns = student("""
    def rms_norm(x, w, eps=1e-6):
        dummy = torch.empty_like(x)
        touch(x, dummy)                       # a kernel of mine runs...
        return F.rms_norm(x, (x.shape[-1],), w, eps)   # ...but the library does the work
    """)
    problem = _problem(ns["rms_norm"], *_rms_args())
    assert "computes with PyTorch ops" in problem and "aten::rsqrt" in problem


def test_token_kernel_copying_a_torch_result_into_the_output_fails():
    ns = student("""
    def rms_norm(x, w, eps=1e-6):
        tmp = eager_rms(x, w, eps)
        out = torch.empty_like(x)
        touch(tmp, out)                       # the kernel writes the output, torch computed it
        return out
    """)
    assert "computes with PyTorch ops" in _problem(ns["rms_norm"], *_rms_args())


def test_ops_reached_below_the_python_names_are_still_seen():
    ns = student("""
    def rms_norm(x, w, eps=1e-6):
        out = torch.empty_like(x)
        touch(x, out)
        y = torch._C._VariableFunctions.rms_norm(x, [x.shape[-1]], w, eps)
        return torch.ops.aten.mul.Tensor(y, 1.0)
    """)
    assert "computes with PyTorch ops" in _problem(ns["rms_norm"], *_rms_args())


def test_effilab_reference_kernel_is_not_the_students():
    ns = student("""
    from effilab.ops.rmsnorm import rms_norm as _theirs
    def rms_norm(x, w, eps=1e-6):
        dummy = torch.empty_like(x)
        touch(x, dummy)
        return _theirs(x, w, eps)
    """)
    problem = _problem(ns["rms_norm"], *_rms_args())
    assert "launches Triton kernels that are not yours: _rms_norm_fwd_kernel (ops/rmsnorm.py)" in problem


def test_no_kernel_at_all_fails_with_its_own_message():
    ns = student("def rms_norm(x, w, eps=1e-6):\n    return x.clone()\n")
    assert "launched no Triton kernel defined in your notebook" in _problem(ns["rms_norm"], *_rms_args())


def test_output_not_written_by_the_kernel_fails():
    ns = student("""
    def rms_norm(x, w, eps=1e-6):
        dummy = torch.empty_like(x)
        touch(x, dummy)
        return torch.zeros_like(x)
    """)
    assert "not a tensor your Triton kernel wrote" in _problem(ns["rms_norm"], *_rms_args())


def test_overwriting_the_kernels_output_afterwards_fails():
    ns = student("""
    def rms_norm(x, w, eps=1e-6):
        out = torch.empty_like(x)
        touch(x, out)
        out.fill_(0.5)
        return out
    """)
    assert "not a tensor your Triton kernel wrote" in _problem(ns["rms_norm"], *_rms_args())


# ----------------------------------------------------------------------------------------------
# Work done in Python / NumPy, and ways of switching the audit off
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("route,shown", [
    ("x.numpy()", "Tensor.numpy"),
    ("np.asarray(x)", "Tensor.__array__"),
    ("np.array(x.tolist())", "Tensor.tolist"),
    ("torch.utils.dlpack.to_dlpack(x)", "to_dlpack"),
])
def test_numpy_computation_copied_into_a_kernel_buffer_fails(route, shown):
    ns = student(f"""
    def rms_norm(x, w, eps=1e-6):
        xn = {route}
        xn = np.asarray(xn) if not isinstance(xn, np.ndarray) else xn
        y = xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + eps) * w.numpy()
        out = torch.empty_like(x)
        touch(torch.from_numpy(y), out)
        return out
    """)
    with pytest.raises(OwnWorkError, match=shown):
        checked(ns["rms_norm"], kernel_rule("rms_norm"))(*_rms_args())


def test_a_caught_trap_still_fails_the_call():
    ns = student("""
    def rms_norm(x, w, eps=1e-6):
        try:
            x.numpy()
        except Exception:
            pass
        out = torch.empty_like(x)
        touch(x, out)
        return out
    """)
    assert "Tensor.numpy takes tensor data out to Python/NumPy" in _problem(ns["rms_norm"], *_rms_args())


def test_bulk_python_data_fails():
    ns = student("""
    def rms_norm(x, w, eps=1e-6):
        out = torch.tensor([[0.0] * x.shape[1]] * x.shape[0])
        touch(out, out)
        return out
    """)
    assert "builds tensor data in Python" in _problem(ns["rms_norm"], *_rms_args())


def test_element_by_element_python_work_fails():
    ns = student("""
    def rms_norm(x, w, eps=1e-6):
        out = torch.empty_like(x)
        touch(x, out)
        for i in range(x.shape[0]):
            ms = sum(float(v) ** 2 for v in x[i]) / x.shape[1]
            for j in range(x.shape[1]):
                out[i, j] = float(x[i, j]) / math.sqrt(ms + eps) * float(w[j])
        return out
    """)
    assert "element-by-element Python work is not allowed" in _problem(ns["rms_norm"], *_rms_args())


@pytest.mark.parametrize("escape", [
    "torch._C._DisableTorchDispatch()",
    "torch.utils._python_dispatch._disable_current_modes()",
])
def test_switching_off_the_audit_fails(escape):
    ns = student(f"""
    def rms_norm(x, w, eps=1e-6):
        out = torch.empty_like(x)
        touch(x, out)
        with {escape}:
            out.copy_(eager_rms(x, w, eps))
        return out
    """)
    with pytest.raises(OwnWorkError, match="switches off the grader's op audit"):
        checked(ns["rms_norm"], kernel_rule("rms_norm"))(*_rms_args())


@pytest.mark.parametrize("run_elsewhere", [
    "t = threading.Thread(target=lambda: box.setdefault('y', eager_rms(x, w, eps)))\n        t.start(); t.join()",
    "import concurrent.futures as cf\n        box['y'] = cf.ThreadPoolExecutor(1).submit(eager_rms, x, w, eps).result()",
])
def test_work_on_a_thread_started_in_the_call_fails(run_elsewhere):
    ns = student(f"""
    def rms_norm(x, w, eps=1e-6):
        box = {{}}
        {run_elsewhere}
        out = torch.empty_like(x)
        touch(box["y"], out)
        return out
    """)
    with pytest.raises(OwnWorkError, match="starts a thread"):
        checked(ns["rms_norm"], kernel_rule("rms_norm"))(*_rms_args())


def test_work_on_a_helper_thread_started_before_the_call_fails():
    ns = student("""
    jobs, results = queue.Queue(), queue.Queue()
    def _helper():
        while True:
            job = jobs.get()
            if job is None:
                return
            results.put(eager_rms(*job))
    helper = threading.Thread(target=_helper, daemon=True)
    helper.start()
    def rms_norm(x, w, eps=1e-6):
        jobs.put((x, w, eps))
        out = torch.empty_like(x)
        touch(results.get(), out)
        return out
    """)
    try:
        problem = _problem(ns["rms_norm"], *_rms_args())
    finally:
        ns["jobs"].put(None)
        ns["helper"].join(5)
    assert "a thread runs your code" in problem


def test_torch_randomness_in_a_stochastic_rounding_kernel_fails(refs):
    ns = student("""
    @triton.jit
    def sr_kernel(x_ptr, r_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        bits = tl.load(x_ptr + offs, mask=m).to(tl.uint32, bitcast=True)
        r = tl.load(r_ptr + offs, mask=m).to(tl.uint32)
        tl.store(out_ptr + offs, ((bits + r) >> 16).to(tl.uint16).to(tl.int16, bitcast=True), mask=m)
    def stochastic_round_bf16(x, seed):
        g = torch.Generator(device=x.device).manual_seed(seed)
        r = torch.randint(0, 1 << 16, x.shape, generator=g, device=x.device, dtype=torch.int32)
        out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
        sr_kernel[(triton.cdiv(x.numel(), 1024),)](x, r, out.view(torch.int16), x.numel(), BLOCK=1024)
        return out
    """)
    x = torch.randn(3000)
    problem = _problem(ns["stochastic_round_bf16"], x, 3, name="stochastic_round_bf16")
    assert "computes with PyTorch ops (aten::random_" in problem or "aten::randint" in problem


def test_cross_entropy_epilogue_may_not_read_the_logits(refs):
    ns = student("""
    def cross_entropy(logits, target):
        return REFERENCE(logits, target) + 0.0 * logits.sum()   # an epilogue op on the input
    """)
    ns["REFERENCE"] = refs["cross_entropy"]
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(9, 300, generator=g), torch.randint(0, 300, (9,), generator=g)
    problem = _problem(ns["cross_entropy"], logits, target, name="cross_entropy")
    assert "aten::sum on an input" in problem and "per-row losses" in problem


# ----------------------------------------------------------------------------------------------
# The recorder itself
# ----------------------------------------------------------------------------------------------
def test_recording_is_not_reentrant_and_restores_the_hooks(refs):
    import triton.runtime.interpreter as interp

    before = vars(interp.InterpretedFunction)["run"]
    with provenance.recording():
        assert vars(interp.InterpretedFunction)["run"] is not before
        with pytest.raises(RuntimeError, match="already active"):
            with provenance.recording():
                pass
    assert vars(interp.InterpretedFunction)["run"] is before
    assert torch.Tensor.numpy is torch._C.TensorBase.numpy  # the in-call trap is gone again


def test_kernel_defined_outside_notebook_code_is_not_the_students():
    ns = student("")
    jit_fn = ns["token_kernel"]
    code = jit_fn.fn.__code__
    assert provenance.is_student_code(code)
    assert not provenance.is_student_code(code, student_files={"<your cell rms_norm_solution>"})
    assert not provenance.is_student_code(provenance.own_work_problem.__code__)
    # a cell run by ipykernel (Jupyter, nbclient) is compiled under a temp-file name
    assert provenance.is_student_code(compile("x = 1", "/tmp/ipykernel_4242/3141592653.py", "exec"))
    assert not provenance.is_student_code(compile("x = 1", "/tmp/ipykernel_4242/helper.py", "exec"))


# ----------------------------------------------------------------------------------------------
# GPU time share: the matching, on recorded event lists (CPU); the real profile on a GPU
# ----------------------------------------------------------------------------------------------
def test_share_counts_student_kernels_including_specialised_names():
    events = [("rms_norm_kernel", 90.0), ("rms_norm_kernel_0d1d2d3de", 5.0), ("Memcpy DtoD (Device -> Device)", 5.0)]
    share = provenance.share_from_events(events, Counter({"rms_norm_kernel": 2}))
    assert share["share"] == pytest.approx(0.95) and share["library"] == []
    assert provenance.share_problem(share) is None


def test_share_is_limited_to_the_number_of_student_launches():
    # a library kernel that happens to carry the student's kernel name is not hers
    events = [("my_kernel", 10.0), ("my_kernel", 90.0)]
    share = provenance.share_from_events(events, Counter({"my_kernel": 1}))
    assert share["share"] == pytest.approx(0.1)
    assert "only 10 % of your call's GPU time" in provenance.share_problem(share)


@pytest.mark.parametrize("library", [
    "triton_red_fused_add_mean_mul_pow_rsqrt_0",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64",
    "cutlass::Kernel2<cutlass_80_tensorop_s16816gemm_f16_128x128_32x4_nn_align8>",
])
def test_a_library_kernel_fails_even_under_ten_percent(library):
    share = provenance.share_from_events([("rms_norm_kernel", 97.0), (library, 3.0)], {"rms_norm_kernel": 1})
    assert share["library"] == [library] and share["share"] == pytest.approx(0.97)
    assert "library kernels do part of the work" in provenance.share_problem(share)
    assert provenance.share_problem(share, allow_library=True) is None


def test_share_without_student_time_or_any_time_fails():
    assert "no GPU work was recorded" in provenance.share_problem(provenance.share_from_events([], {}))
    share = provenance.share_from_events([("Memcpy HtoD (Pageable -> Device)", 50.0)], {"rms_norm_kernel": 1})
    assert "none of the timed call's GPU time is in a Triton kernel of yours" in provenance.share_problem(share)


def test_gpu_time_share_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        provenance.gpu_time_share(lambda: None)


@pytest.mark.gpu
def test_gpu_share_of_the_reference_and_of_a_cheat(refs):
    x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    ref = refs["rms_norm"]
    ref(x, w, 1e-6)
    share = provenance.gpu_time_share(lambda: ref(x, w, 1e-6))
    assert provenance.share_problem(share) is None, share
    assert share["share"] >= provenance.MIN_GPU_SHARE
    ns = student("""
    def rms_norm(x, w, eps=1e-6):
        out = torch.empty_like(x)
        touch(x, out)
        return eager_rms(x.float(), w.float(), eps).to(x.dtype)
    """)
    cheat = ns["rms_norm"]
    cheat(x, w, 1e-6)
    share = provenance.gpu_time_share(lambda: cheat(x, w, 1e-6))
    assert share["library"] and provenance.share_problem(share) is not None
