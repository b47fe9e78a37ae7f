"""Authoritative grading on the GPU: repeatability and the GPU-only red-team cases.

    python benchmarks/gpu/grading_checks.py [--repeats 5] [--out DIR]

1. The correct example submission of notebook 01 is graded ``--repeats`` times by grader.verify
   (the sandbox, keyed hidden inputs): the scores must be identical; the speed ratios' coefficient
   of variation is reported.
2. Cheats that only a GPU can expose, each graded on notebook 01's speed part: work hidden on a side
   stream, detecting the warm-up/gate calls, caching on the input's identity, no Triton kernel at
   all, calling the eager reference. Each must score 0.
3. Cheats against notebook 08's RMSNorm, correctness and speed: plain eager PyTorch, a library op
   beside a token Triton kernel, torch.compile of the formula beside a token kernel, patching a torch
   function the eager baseline uses. Each must score 0 on both parts.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402

from grader.course import Course  # noqa: E402
from grader.verify import verify_notebook  # noqa: E402

A = "01_float_formats"
ALICE = ROOT / "grader" / "examples" / A / f"alice_{A}.ipynb"
SPEED = "stochastic_round_bf16_speed"

TRIVIAL = textwrap.dedent('''
    @triton.jit
    def touch_kernel(x_ptr, BLOCK: tl.constexpr):
        tl.load(x_ptr + tl.arange(0, BLOCK))

    def eager_sr(x, seed):
        g = torch.Generator(device=x.device).manual_seed(int(seed))
        bits = x.contiguous().view(torch.int32)
        noise = torch.randint(0, 1 << 16, x.shape, generator=g, device=x.device, dtype=torch.int32)
        out = torch.bitwise_right_shift(bits + noise, 16).to(torch.int16).view(torch.bfloat16)
        return torch.where(torch.isnan(x), torch.full_like(out, float("nan")), out)
''')

CHEATS = {
    "slow work hidden on a side stream": TRIVIAL + textwrap.dedent('''
        _side = torch.cuda.Stream()
        def stochastic_round_bf16(x, seed):
            touch_kernel[(1,)](x, BLOCK=16)
            with torch.cuda.stream(_side):
                out = eager_sr(x, seed)
            return out
    '''),
    "detects the gate calls, then returns garbage fast": TRIVIAL + textwrap.dedent('''
        _calls = [0]
        def stochastic_round_bf16(x, seed):
            _calls[0] += 1
            touch_kernel[(1,)](x, BLOCK=16)
            if _calls[0] <= 3:
                return eager_sr(x, seed)
            return torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    '''),
    "caches the result on the input's identity": TRIVIAL + textwrap.dedent('''
        _cache = {}
        def stochastic_round_bf16(x, seed):
            touch_kernel[(1,)](x, BLOCK=16)
            key = (x.data_ptr(), x.shape, seed)
            if key not in _cache:
                _cache[key] = eager_sr(x, seed)
            return _cache[key]
    '''),
    "no Triton kernel at all (eager ops)": TRIVIAL + "stochastic_round_bf16 = eager_sr\n",
    "calls effilab's eager version": "from effilab.formats import stochastic_round_bf16_torch as stochastic_round_bf16\n",
}

B = "08_operator_fusion"
ALICE08 = ROOT / "grader" / "examples" / B / f"alice_{B}.ipynb"
RMS_PARTS = {"rms_norm_check", "rms_norm_speed"}
TOKEN = textwrap.dedent('''
    @triton.jit
    def token_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m), mask=m)
''')
RMS_CHEATS = {
    "plain eager PyTorch": textwrap.dedent('''
        def rms_norm(x, weight, eps=1e-6):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)
    '''),
    "a library op beside a token Triton kernel": TOKEN + textwrap.dedent('''
        def rms_norm(x, weight, eps=1e-6):
            y = torch.empty_like(x)
            token_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
            xf = y.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)
    '''),
    "torch.compile of the formula beside a token kernel": TOKEN + textwrap.dedent('''
        def _formula(x, weight, eps):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)
        _fast = torch.compile(_formula)
        def rms_norm(x, weight, eps=1e-6):
            y = torch.empty_like(x)
            token_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
            return _fast(y, weight, eps)
    '''),
    "patches a torch function the eager baseline uses": textwrap.dedent('''
        import time as _t
        _rsqrt = torch.rsqrt
        def _slow_rsqrt(*a, **k):
            _t.sleep(0.01)
            return _rsqrt(*a, **k)
        torch.rsqrt = _slow_rsqrt
        torch.Tensor.rsqrt = lambda self: _slow_rsqrt(self)
    '''),
}


def _with_cell(source: str, tmp: Path, name: str) -> Path:
    nb = nbformat.read(str(ALICE), as_version=4)
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "stochastic_round_bf16_solution":
            c.source = source
    p = tmp / f"{name}.ipynb"
    nbformat.write(nb, str(p))
    return p


def _with_rms_cell(source: str, tmp: Path, name: str) -> Path:
    """Alice's notebook 08 with the RMSNorm solution cell replaced (for the patching cheat: prepended)."""
    nb = nbformat.read(str(ALICE08), as_version=4)
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("solution") and "def rms_norm(" in c.source:
            c.source = source + ("\n" + c.source if "patches" in name else "")
    p = tmp / f"rms-{abs(hash(name))}.ipynb"
    nbformat.write(nb, str(p))
    return p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--only", nargs="*", default=None, metavar="WORD",
                    help="run only the cheats whose name contains one of these words (with --repeats 0: "
                         "no repeatability runs)")
    args = ap.parse_args()
    wanted = (lambda name: args.only is None or any(w in name for w in args.only))
    tmp = Path(tempfile.mkdtemp())
    course = Course(root=tmp / "course")
    course.prepare()
    lines = ["# Authoritative grading on the GPU", ""]
    runs = []
    for i in range(args.repeats):
        res = verify_notebook(course, A, ALICE, log=lambda *a: None)
        runs.append(res)
        print(f"run {i + 1}: " + ", ".join(f"{r.grade_id}={r.points:g}" for r in res), flush=True)
    scores = [tuple((r.grade_id, r.points) for r in res) for res in runs]
    speed = [next(r for r in res if r.grade_id == SPEED) for res in runs]
    if speed:
        print(speed[0].report, flush=True)
    ratios = [float(r.details["ratio"]) for r in speed if "ratio" in r.details]
    cv = statistics.stdev(ratios) / statistics.mean(ratios) if len(ratios) > 1 else float("nan")
    lines += [f"Correct submission graded {len(runs)}× (fresh workers each time): scores identical: "
              f"**{len(set(scores)) == 1}**; total {sum(p for _, p in scores[0]) if scores else 0:g} / 13.",
              f"Speed ratios: {', '.join(f'{r:.2f}' for r in ratios)}; mean "
              f"{statistics.mean(ratios) if ratios else float('nan'):.2f}×, "
              f"CV {100 * cv:.2f} %.", "", "| GPU cheat | speed points | why |", "|---|---|---|"]
    ok = len(set(scores)) <= 1
    for name, src in CHEATS.items():
        if not wanted(name):
            continue
        res = verify_notebook(course, A, _with_cell(src, tmp, name.split()[0]), log=lambda *a: None, only={SPEED})
        r = res[0]
        why = " ".join(r.report.split())[-220:]
        lines.append(f"| {name} | {r.points:g} | {why} |")
        ok &= r.points == 0
        print(f"{name}: {r.points:g}", flush=True)
    lines += ["", "| RMSNorm cheat (notebook 08) | correctness | speed | why |", "|---|---|---|---|"]
    for name, src in RMS_CHEATS.items():
        if not wanted(name):
            continue
        res = {r.grade_id: r for r in verify_notebook(course, B, _with_rms_cell(src, tmp, name), log=lambda *a: None,
                                                       only=RMS_PARTS)}
        c, sp = res["rms_norm_check"], res["rms_norm_speed"]
        honest_correct = "patches" in name  # alice's kernel itself: correctness is hers, the speed must not rise
        why = " ".join((sp.report if honest_correct else c.report).split())[-200:]
        lines.append(f"| {name} | {c.points:g} / {c.max_points:g} | {sp.points:g} / {sp.max_points:g} | {why} |")
        print(f"{name}: correctness {c.points:g}, speed {sp.points:g}; ratio {sp.details.get('ratio')}", flush=True)
        ok &= (c.points == c.max_points if honest_correct else c.points == 0)
        ok &= sp.points == 0 or honest_correct
        if honest_correct:  # the baseline is timed in the grader's process: the patch cannot slow it
            lines.append(f"|  (baseline {sp.details.get('baseline_ms')} ms, alice's kernel {sp.details.get('yours_ms')} ms) "
                         "| | | |")
    text = "\n".join(lines)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "grading_gpu.md").write_text(text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
