"""The checker machinery: quiet execution, poisoned outputs, mutation, errors, tolerances."""
import os
import sys
import warnings

import pytest
import torch

from effilab.formats import FORMATS
from effilab.grading import TOLERANCES, check, compare_tensors, quiet
from effilab.grading.core import Case, Exercise, Group, check_correctness, poisoned_allocations
from effilab.grading.keys import Key


def test_quiet_captures_python_warnings_and_fd2(capfd):
    with quiet() as captured:
        warnings.warn("careful")
        print("to python stderr", file=sys.stderr)
        os.write(2, b"to fd 2\n")
    out, err = capfd.readouterr()
    assert err == ""
    assert any("careful" in c for c in captured)
    assert "to python stderr" in captured and "to fd 2" in captured


def test_quiet_keeps_a_librarys_deprecations_out_and_the_notebooks_in():
    """A library that uses a deprecated API of another (peft importing a torch.jit module, in notebook
    06's LoRA check) is no news to the student; a deprecated call in the notebook's own code is."""
    import types

    lib = types.ModuleType("some_library")
    exec(compile("import warnings\ndef f():\n    warnings.warn('old API', DeprecationWarning)\n",
                 "some_library.py", "exec"), lib.__dict__)
    nb = {"__name__": "__main__", "f": lib.f}
    with quiet() as captured:
        lib.f()
        exec("import warnings\nwarnings.warn('your old call', DeprecationWarning)\nwarnings.warn('x', RuntimeWarning)", nb)
    assert not any("old API" in c for c in captured), captured
    assert any("your old call" in c for c in captured) and any("RuntimeWarning" in c for c in captured), captured

def test_poisoned_allocations_fill_new_tensors():
    with poisoned_allocations():
        a = torch.empty(5)
        b = torch.empty_like(torch.zeros(3, dtype=torch.int32))
        c = torch.zeros(2).new_empty(4)
    assert torch.isnan(a).all() and torch.isnan(c).all()
    assert (b == torch.iinfo(torch.int32).min + 7).all()
    assert not torch.isnan(torch.empty(1000)).all() or True  # restored: no exception, plain allocation


class _Double(Exercise):
    name = "_double_for_tests"
    points = {"correctness": 2.0}

    def cases(self, suite, key):
        return [Group("doubles", [Case("odd length", (torch.arange(1001, dtype=torch.float32),))], "multiply by 2"),
                Group("empty", [Case("empty", (torch.zeros(0),))])]

    def judge(self, out, case, expected=None):
        return compare_tensors(out, case.args[0] * 2)


@pytest.fixture
def ex():
    return _Double()


def test_correct_function_gets_all_points(ex):
    v = check_correctness(ex, lambda x: x * 2, "public", Key.public())
    assert v.points == 2.0 and v.passed


def test_tail_left_unwritten_is_caught(ex):
    def partial(x):
        out = torch.empty_like(x)
        out[:1000] = x[:1000] * 2  # forgets the last element
        return out

    v = check_correctness(ex, partial, "public", Key.public())
    assert v.points == 1.0
    assert "never wrote" in v.groups[0].message


def test_input_mutation_is_caught(ex):
    def in_place(x):
        return x.mul_(2)

    v = check_correctness(ex, in_place, "public", Key.public())
    assert not v.groups[0].passed and "modified" in v.groups[0].message


def test_exceptions_are_reported_not_raised(ex):
    def stub(x):
        raise NotImplementedError()

    v = check_correctness(ex, stub, "public", Key.public())
    assert v.points == 0
    assert "not filled in yet" in v.groups[0].message

    def broken(x):
        return x.view(10, -1)  # 1001 elements: not divisible

    v = check_correctness(ex, broken, "public", Key.public())
    assert "RuntimeError" in v.groups[0].message


def test_check_on_a_non_function_and_an_unknown_name(capsys):
    v = check("round_to_bf16", None)
    assert v.points == 0 and "not a function" in v.report()
    with pytest.raises(KeyError, match="known"):
        check("no_such_exercise", lambda: 0)
    with pytest.raises(ValueError, match="parts"):
        check("round_to_bf16", lambda x: x, part="memory")


def test_check_writes_nothing_to_stderr_even_when_student_code_warns(capfd):
    def noisy(x):
        warnings.warn("student warning")
        os.write(2, b"compiler chatter\n")
        bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        r = torch.where(torch.isnan(x), 0x7FC0, r)
        return torch.where(r >= 0x8000, r - 0x10000, r).to(torch.int16).view(torch.bfloat16)

    v = check("round_to_bf16", noisy)
    out, err = capfd.readouterr()
    assert err == ""
    assert "student warning" in out and v.points == 3.0


def test_compare_reports_shape_dtype_and_values():
    e = torch.ones(3, 4)
    assert "shape" in compare_tensors(torch.ones(4, 3), e)
    assert "dtype" in compare_tensors(torch.ones(3, 4, dtype=torch.float64), e)
    assert "torch.Tensor" in compare_tensors([1, 2], e)
    msg = compare_tensors(torch.full((3, 4), 1.1), e)
    assert "12 of 12" in msg and "at [0, 0]" in msg and "yours 1.1" in msg
    inf = torch.tensor([float("inf"), float("nan"), 1.0])
    assert compare_tensors(inf.clone(), inf) is None
    assert compare_tensors(torch.tensor([float("inf"), 1.0, 1.0]), inf) is not None


def _through(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).to(x.dtype)


@pytest.mark.parametrize("dtype,lower", [(torch.float32, torch.bfloat16), (torch.float32, torch.float16),
                                         (torch.float16, torch.bfloat16), (torch.float16, torch.float8_e4m3fn),
                                         (torch.bfloat16, torch.float8_e4m3fn), (torch.float8_e4m3fn, torch.float8_e5m2)])
def test_each_tolerance_accepts_its_dtype_and_rejects_a_lower_precision(dtype, lower):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4096, generator=g, dtype=torch.float64) * 3
    expected = ref.to(dtype)
    # the same value computed in the dtype itself, with a few ops of rounding error, passes
    same = ((ref * 1.0001).to(dtype).to(torch.float64) / 1.0001).to(dtype)
    assert compare_tensors(same, expected) is None, f"{dtype} tolerance rejects its own rounding"
    # one that went through a lower precision fails
    low = ref.to(lower).to(dtype)
    assert compare_tensors(low, expected) is not None, f"{dtype} tolerance accepts {lower}"
    assert dtype in TOLERANCES


def test_decompose_inputs_are_big_enough():
    from effilab.grading import get

    groups = get("decompose").cases("public", Key.public())
    assert len({c.args[1].name for g in groups for c in g.cases}) == len(FORMATS)
    assert all(len(g.cases) >= 5 for g in groups)
    assert all(c.args[0].numel() >= 65536 for g in groups for c in g.cases)


def test_an_unsolved_exercise_says_its_cause_once():
    def unsolved(*args, **kwargs):
        raise NotImplementedError("write decompose")

    v = check("decompose", unsolved, verbose=False)
    text = v.report()
    assert v.points == 0 and len(v.groups) >= 3
    assert text.count("raised NotImplementedError") == 1 and text.count("hint:") == 1, text
    assert text.count("the same failure as above") == len(v.groups) - 1, text


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available(),
                    reason="Triton's interpreter (a CPU) wraps kernel errors; a GPU reports them at compile time")
def test_an_error_in_a_kernels_body_names_the_kernel_line():
    import linecache

    import triton
    import triton.language as tl

    from effilab.grading.calls import describe_exception

    src = ("@triton.jit\ndef bad_kernel(x_ptr, n, BLOCK: tl.constexpr):\n    offs = tl.arange(0, BLOCK)\n"
           "    x = tl.load(x_ptr + offs, mask=offs < n)\n    tl.store(x_ptr + offs, tl.sum(x, axis=5), mask=offs < n)\n"
           "\ndef launch(x):\n    bad_kernel[(1,)](x, x.numel(), BLOCK=16)\n    return x\n")
    name = "<your cell bad_kernel>"
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    ns = {"triton": triton, "tl": tl}
    exec(compile(src, name, "exec"), ns)
    with pytest.raises(Exception) as info:
        ns["launch"](torch.zeros(16))
    msg, _ = describe_exception(info.value)
    assert msg.startswith("your function raised ValueError inside your Triton kernel: axis 5"), msg
    assert msg.splitlines()[-1].strip().startswith("in bad_kernel (your notebook, line 5): tl.store("), msg


def test_cases_use_bf16_only_where_the_hardware_has_it(monkeypatch):
    """A Colab T4 (compute capability 7.5) gets fp16 cases only; an Ampere or newer GPU bf16 too."""
    import types

    import effilab.device
    from effilab.grading.core import half_dtypes

    assert half_dtypes() == ([torch.float16, torch.bfloat16] if torch.cuda.is_available() and effilab.device.info().bf16
                             else [torch.float16])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(effilab.device, "info", lambda *a: types.SimpleNamespace(bf16=False))
    assert half_dtypes() == [torch.float16]
    monkeypatch.setattr(effilab.device, "info", lambda *a: types.SimpleNamespace(bf16=True))
    assert half_dtypes() == [torch.float16, torch.bfloat16]


def test_hints_after_the_first_failure_are_offered_for_what_remains():
    """A wrong divisor fails every RMSNorm group; the fp16 group's hint about .to(tl.float32) would
    mislead as a plain instruction, so only the first failure's hint is given as one."""
    class Two(Exercise):
        name = "two_groups"
        points = {"correctness": 2.0}

        def cases(self, suite, key):
            return [Group("basic", [Case("x 1", (torch.ones(3),))], "divide by the row length"),
                    Group("fp16", [Case("x 2", (torch.ones(3, dtype=torch.float16),))], "load with .to(tl.float32)")]

        def judge(self, out, case, expected=None):
            return f"off by {float(out.float().sum()) - 3:g}"

    v = check_correctness(Two(), lambda x: x * 2, "public", Key.public())
    text = v.report()
    assert "      hint: divide by the row length" in text
    assert "hint (if this remains once the failure above is fixed): load with .to(tl.float32)" in text, text


def test_wall_rule_allows_host_bound_calls_and_catches_side_stream_work():
    from effilab.grading.measure import wall_exceeds

    # a 15 µs kernel whose Python launch costs 45 µs of host time: the wall (59 µs) is the launch, not hidden work
    assert not wall_exceeds(stream_ms=0.015, wall_ms=0.059, host_ms=0.045)
    # the same wall with a fast host launch: 44 µs of device time the timed stream did not see
    assert wall_exceeds(stream_ms=0.015, wall_ms=0.059, host_ms=0.005)
    # a token kernel on the timed stream, 2 ms of eager work on a side stream (the host returns at once)
    assert wall_exceeds(stream_ms=0.05, wall_ms=2.1, host_ms=0.08)
    # an honest GPU-bound call
    assert not wall_exceeds(stream_ms=1.0, wall_ms=1.1, host_ms=0.05)


def test_speed_threshold_follows_the_gpu_class_and_says_when_it_was_not_calibrated_there():
    from effilab.grading.measure import SpeedPart

    part = SpeedPart(inputs=lambda: (), baseline=None, threshold=2.0, per_gpu={"T4": 1.3})
    assert part.threshold_on("H200") == 2.0 and part.threshold_on(None) == 2.0
    assert part.threshold_on("T4") == 1.3
    assert part.threshold_note("H200") == "" and part.threshold_note("T4") == ""
    note = part.threshold_note("A100")
    assert "calibrated on an H200" in note and "A100" in note


def test_a_speed_goal_of_one_reads_as_at_least_as_fast():
    """A ratio of 1 is "at least as fast as" the baseline, not "≥ 1× faster" (notebooks 05 and 06 on a CPU)."""
    from effilab.grading.measure import SpeedPart, decide_speed, faster_than

    assert faster_than(1.0, "bitsandbytes") == "at least as fast as bitsandbytes"
    assert faster_than(1.6, "bitsandbytes") == "≥ 1.6× faster than bitsandbytes"

    class Quick(Exercise):
        name = "quick"
        points = {"speed": 1.0}

    if not torch.cuda.is_available():
        part = SpeedPart(inputs=lambda: (), baseline=None, threshold=1.0, baseline_name="the library's kernel")
        text = decide_speed(Quick(), part, {}, {}).report()
        assert "at least as fast as the library's kernel" in text and "1×" not in text, text
