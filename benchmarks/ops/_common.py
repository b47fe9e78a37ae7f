"""Shared plumbing of the benchmarks/ops scripts: arguments, timing, memory, tables and plots.

Timing is ``triton.testing.do_bench(..., return_mode="median")`` (warm-up, L2 flush between
repetitions, CUDA events). Rates count every input read once and every output written once
(GB/s), or the FLOPs of the algorithm (TFLOP/s), and are compared with the ceilings measured on the
GPU that runs the script (``effilab.device.measured_rates``: H200 4250 GB/s copy and 716 TFLOP/s
bf16 matmul; H100 2990 and 710; other GPUs: the H100 values, said in the table header). The
"floor" of a row is the time its bytes (or FLOPs) take at that ceiling; "frac of floor" is
floor / time. Every report also writes ``<stem>.json``, from which ``summarize.py`` builds the
side-by-side table of ``run_all.sh``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
import traceback

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: find the effilab package
    sys.path.insert(0, str(ROOT))

import effilab  # noqa: E402,F401  (must precede triton)
import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

# EFFILAB_BENCH_SMOKE=1: run every script end to end on the CPU (Triton interpreter), on tiny
# shapes, with a perf_counter timer and no torch.compile: checks the scripts, not the speed.
SMOKE = os.environ.get("EFFILAB_BENCH_SMOKE") == "1"
DEVICE = "cpu" if SMOKE else "cuda"


def _ceilings() -> tuple[float, float, str]:
    """(copy GB/s, bf16 matmul TFLOP/s, where they come from) for this machine's GPU 0."""
    from effilab import device

    name = "" if SMOKE or not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    m = device.measured_rates(name) if name else None
    if m is not None and m.bandwidth_gbs and m.bf16_tflops:
        return float(m.bandwidth_gbs), float(m.bf16_tflops), m.source
    return 2990.0, 710.0, "H100 ceilings (none measured for this GPU)"


COPY_GBS, MATMUL_TFLOPS, CEILING_SOURCE = _ceilings()  # device-to-device copy GB/s, bf16 matmul TFLOP/s


def parse_args(description: str, extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for the .md table and .png plot")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines (saves compile time)")
    p.add_argument("--no-sweep", action="store_true", help="time only the default launch configuration")
    p.add_argument("--rep", type=int, default=None, help="do_bench repetition budget per candidate, ms (100; --quick 30)")
    p.add_argument("--quick", action="store_true",
                   help="short repetition budget and the sweeps trimmed to their likely winners (run_all --quick)")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    if args.rep is None:
        args.rep = 30 if args.quick else 100
    if SMOKE:
        args.no_compile = True
    elif not torch.cuda.is_available():
        sys.exit("these benchmarks need a CUDA GPU (run them on the GPU machine; EFFILAB_BENCH_SMOKE=1 for a CPU dry run)")
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    return args


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
def pick(real, smoke):
    """The real benchmark shape, or a tiny one in smoke mode."""
    return smoke if SMOKE else real


def synchronize() -> None:
    if not SMOKE:
        torch.cuda.synchronize()


def time_ms(fn, rep: int = 100, grad_to_none=None) -> float:
    """Median milliseconds per call of ``fn``."""
    if SMOKE:
        fn()
        samples = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return sorted(samples)[0]
    return float(triton.testing.do_bench(fn, warmup=min(25, rep), rep=rep, grad_to_none=grad_to_none,
                                         return_mode="median"))


def extra_peak_bytes(fn) -> int:
    """Peak device memory allocated during one call of ``fn`` beyond what was allocated before it."""
    if SMOKE:
        fn()
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return int(peak - base)


def maybe_compile(fn, enabled: bool):
    """``torch.compile(fn)`` or None when disabled or unavailable."""
    if not enabled:
        return None
    try:
        return torch.compile(fn)
    except Exception as exc:  # noqa: BLE001
        print(f"  torch.compile unavailable: {exc}")
        return None


def liger_functional():
    """``liger_kernel.transformers.functional`` or None if Liger-Kernel is not installed."""
    try:
        import liger_kernel.transformers.functional as lf  # type: ignore

        return lf
    except Exception:  # noqa: BLE001
        return None


def liger_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("liger-kernel")
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    name: str
    mode: str  # "fwd", "fwd+bwd", ...
    ms: float | None = None
    rate: float | None = None  # GB/s or TFLOP/s
    frac: float | None = None  # of COPY_GBS or MATMUL_TFLOPS: floor_ms / ms
    extra_mib: float | None = None
    note: str = ""
    floor_ms: float | None = None  # the amount at the ceiling
    kind: str = ""  # effilab / liger / compile / torch (eager, cuDNN, SDPA backends) / anchor: the summary's columns
    sweep: bool = False  # a swept launch configuration (not the default)


def kind_of(name: str) -> str:
    n = name.lower()
    if "(anchor)" in n:  # a same-run reference of the machine's ceiling (a copy), not a rival
        return "anchor"
    if n.startswith("effilab"):
        return "effilab"
    if "liger" in n:
        return "liger"
    if "compile" in n:
        return "compile"
    return "torch"


class Report:
    """Collects correctness checks and timed candidates; writes ``<stem>.md`` and ``<stem>.png``."""

    def __init__(self, title: str, stem: str, unit: str, out: str, rep: int = 100):
        assert unit in ("GB/s", "TFLOP/s")
        self.title, self.stem, self.unit, self.out, self.rep = title, stem, unit, pathlib.Path(out), rep
        self.rows: list[Row] = []
        self.checks: list[tuple[str, bool, str]] = []
        self.notes: list[str] = []
        self.t0 = time.time()
        gpu = "CPU smoke run (timings meaningless)" if SMOKE else torch.cuda.get_device_properties(0).name
        self.header = (
            f"{gpu}, torch {torch.__version__}, triton {triton.__version__}, "
            f"liger-kernel {liger_version() or 'not installed'}"
        )
        print(f"== {title}  [{self.header}]")

    # -- correctness --------------------------------------------------------------------------
    def check(self, name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> bool:
        a, e = actual.detach().float(), expected.detach().float()
        err = (a - e).abs()
        ok = bool(torch.isfinite(a).all()) and bool((err <= atol + rtol * e.abs()).all())
        msg = f"max abs err {err.max().item():.3g} (atol {atol:g}, rtol {rtol:g})"
        self.checks.append((name, ok, msg))
        print(f"  check {'OK  ' if ok else 'FAIL'} {name}: {msg}")
        return ok

    # -- timing ----------------------------------------------------------------------------------
    def bench(self, name: str, mode: str, fn, amount: float, memory_fn=None, grad_to_none=None, note: str = "",
              sweep: bool = False, floor_amount: float | None = None) -> Row:
        """Time ``fn``; ``amount`` is bytes (GB/s) or FLOPs (TFLOP/s) per call. Errors are recorded, not raised.

        ``sweep``: a swept configuration of the effilab kernel. ``floor_amount``: the bytes/FLOPs of
        the floor, when that differs from ``amount`` (default: ``amount``).
        """
        row = Row(name, mode, note=note, kind=kind_of(name), sweep=sweep)
        ceiling = COPY_GBS * 1e9 if self.unit == "GB/s" else MATMUL_TFLOPS * 1e12
        row.floor_ms = (amount if floor_amount is None else floor_amount) / ceiling * 1e3
        try:
            row.ms = time_ms(fn, self.rep, grad_to_none)
            row.rate = amount / (row.ms * 1e-3) / (1e9 if self.unit == "GB/s" else 1e12)
            row.frac = row.floor_ms / row.ms if row.ms > 0 else None
            if memory_fn is not None:
                row.extra_mib = extra_peak_bytes(memory_fn) / 2**20
        except Exception as exc:  # noqa: BLE001
            row.note = (note + "; " if note else "") + f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            traceback.print_exc(limit=2)
        finally:
            if not SMOKE:
                torch.cuda.empty_cache()
        self.rows.append(row)
        print("  " + self._line(row))
        self._save()  # a script stopped by run_all's deadline still leaves what it measured
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}")

    # -- output ----------------------------------------------------------------------------------
    def _line(self, r: Row) -> str:
        ms = f"{r.ms:.3f}" if r.ms is not None else "-"
        rate = f"{r.rate:.1f}" if r.rate is not None else "-"
        frac = f"{r.frac:.2f}" if r.frac is not None else "-"
        mem = f"{r.extra_mib:.1f}" if r.extra_mib is not None else "-"
        return f"| {r.name} | {r.mode} | {ms} | {rate} | {frac} | {mem} | {r.note} |"

    def markdown(self) -> str:
        ceiling = f"{COPY_GBS:.0f} GB/s copy" if self.unit == "GB/s" else f"{MATMUL_TFLOPS:.0f} TFLOP/s bf16 matmul"
        lines = [f"## {self.title}", "", f"{self.header}. Median of `do_bench` ({self.rep} ms budget); "
                 f"frac = fraction of {ceiling} ({CEILING_SOURCE}), i.e. floor / time.", ""]
        if self.checks:
            lines += ["Correctness: " + ", ".join(f"{n} {'OK' if ok else 'FAIL'} ({m})" for n, ok, m in self.checks), ""]
        lines += [
            f"| candidate | pass | ms | {self.unit} | frac of floor | extra peak MiB | note |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        lines += [self._line(r) for r in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes] + ([""] if self.notes else [])
        lines += [f"_{time.time() - self.t0:.0f} s wall time_", ""]
        return "\n".join(lines)

    def plot(self, path: pathlib.Path) -> None:
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r.rate is not None]
        if not rows:
            return
        modes = list(dict.fromkeys(r.mode for r in rows))
        fig, axes = plt.subplots(len(modes), 1, figsize=(9, 1.2 + 0.38 * len(rows) + 0.6 * len(modes)), squeeze=False)
        ceiling = COPY_GBS if self.unit == "GB/s" else MATMUL_TFLOPS
        for ax, mode in zip(axes[:, 0], modes):
            rs = [r for r in rows if r.mode == mode]
            names = [r.name for r in rs]
            vals = [r.rate for r in rs]
            colors = ["tab:orange" if r.name.startswith("effilab") else "tab:blue" for r in rs]
            ax.barh(range(len(rs)), vals, color=colors)
            ax.set_yticks(range(len(rs)), names, fontsize=8)
            ax.invert_yaxis()
            ax.axvline(ceiling, color="k", ls="--", lw=1)
            for i, r in enumerate(rs):
                ax.text(r.rate, i, f" {r.rate:.0f} ({r.ms:.3f} ms)", va="center", fontsize=7)
            ax.set_xlim(0, ceiling * 1.25)
            ax.set_title(f"{self.title}: {mode}", fontsize=9)
            ax.set_xlabel(self.unit + f"  (dashed: {ceiling:.0f})", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def to_json(self) -> dict:
        return {
            "title": self.title, "stem": self.stem, "unit": self.unit, "header": self.header,
            "copy_gbs": COPY_GBS, "matmul_tflops": MATMUL_TFLOPS, "ceiling_source": CEILING_SOURCE,
            "rep_ms": self.rep, "wall_s": round(time.time() - self.t0, 1),
            "checks": [{"name": n, "ok": ok, "msg": m} for n, ok, m in self.checks],
            "rows": [dataclasses.asdict(r) for r in self.rows], "notes": self.notes,
        }

    def _save(self) -> str:
        md = self.markdown()
        (self.out / f"{self.stem}.md").write_text(md)
        (self.out / f"{self.stem}.json").write_text(json.dumps(self.to_json(), indent=1))
        return md

    def finish(self) -> int:
        md = self._save()
        try:
            self.plot(self.out / f"{self.stem}.png")
        except Exception as exc:  # noqa: BLE001
            print(f"  plot failed: {exc}")
        print()
        print(md)
        failed = [n for n, ok, _ in self.checks if not ok]
        if failed:
            print(f"CORRECTNESS FAILURES: {failed}")
            return 1
        return 0


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [
    "SMOKE", "DEVICE", "pick", "synchronize", "COPY_GBS", "MATMUL_TFLOPS", "CEILING_SOURCE", "kind_of", "parse_args", "time_ms", "extra_peak_bytes", "maybe_compile", "liger_functional",
    "Report", "Row", "fmt_bytes", "cdiv", "math",
]
