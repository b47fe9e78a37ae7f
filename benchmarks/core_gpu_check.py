"""GPU validation of effilab.device, effilab.bench and effilab.memory (run on the course's H100).

    python benchmarks/core_gpu_check.py            # from the repository root, on a CUDA machine
    python benchmarks/core_gpu_check.py --dry-run  # tiny sizes on the CPU: checks the script only

Prints the device summary, then a table:

* a 1 GiB device-to-device copy timed by ``effilab.bench.time_fn`` and by
  ``triton.testing.do_bench`` (median), as ms and GB/s (bytes read + written), and their ratio;
* a 16 MiB copy (fits in L2) with and without the L2 flush: the flush must make it slower;
* a tiny (4 KiB) add, launch-bound: time_fn vs do_bench again;
* a bf16 8192^3 matmul on random data, TFLOP/s (time_fn and do_bench);
* the spread of 5 repeated time_fn measurements of the 1 GiB copy (CV of the medians);
* peak_memory of a 1 GiB allocation (expected: exactly 1 GiB) and of a matmul;
* how many Python warnings effilab emitted (must be 0: notebook cells writing to stderr score 0).

The last lines are the measured ceilings in the form of ``effilab/device.py``'s ``_MEASURED``.
Runs in well under a minute on an H100.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import effilab  # noqa: E402,F401  (before torch/triton: selects the Triton backend)
import torch  # noqa: E402

from effilab import bench, device, memory  # noqa: E402

GiB = 2**30
MiB = 2**20


def do_bench_median(fn, dry_run: bool) -> float | None:
    """triton.testing.do_bench's median in ms (None in a CPU dry run)."""
    if dry_run:
        return None
    import triton.testing

    try:
        return float(triton.testing.do_bench(fn, return_mode="median"))
    except TypeError:  # older Triton without return_mode
        return float(triton.testing.do_bench(fn, quantiles=[0.5])[0])


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "CHECK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (no GPU needed)")
    opts = ap.parse_args()
    dry = opts.dry_run
    if not dry and not device.has_cuda():
        print("core_gpu_check needs a CUDA GPU (or --dry-run to exercise the script on the CPU).")
        return 2
    dev = "cpu" if dry else "cuda"
    scale = 2**12 if dry else 1  # sizes / scale in a dry run
    rows: list[tuple[str, str, str, str]] = []  # (check, value, reference, verdict)
    t_start = time.perf_counter()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = device.info()
        print(info.summary())
        print()
        torch.manual_seed(0)

        # 1. 1 GiB device-to-device copy --------------------------------------------------------
        src = torch.randn(GiB // 4 // scale, device=dev)  # float32: 1 GiB
        dst = torch.empty_like(src)
        moved = 2 * src.nbytes  # read + write
        t_copy = bench.time_fn(dst.copy_, src, device=dev)
        db_copy = do_bench_median(lambda: dst.copy_(src), dry)
        tp = bench.throughput(t_copy, bytes=moved)
        rows.append(("copy 1 GiB, time_fn", f"{t_copy}", "", "-"))
        frac = tp.frac_bandwidth
        rows.append(("copy 1 GiB, time_fn GB/s", f"{tp.gbs:.0f} GB/s",
                     f"peak {tp.peak_gbs} / measured 2990" if tp.peak_gbs else "peak unknown",
                     verdict(None if frac is None else 0.75 < frac <= 1.0)))
        if db_copy is not None:
            r = t_copy.median_ms / db_copy
            rows.append(("copy 1 GiB, do_bench median", f"{db_copy:.4f} ms = "
                         f"{moved / db_copy / 1e6:.0f} GB/s", "", "-"))
            rows.append(("copy: time_fn / do_bench", f"{r:.3f}", "1 ± 0.15", verdict(abs(r - 1) < 0.15)))

        # 2. L2 flush matters: a 16 MiB copy fits in L2 ----------------------------------------
        s16 = torch.randn(16 * MiB // 4 // scale, device=dev)
        d16 = torch.empty_like(s16)
        t_fl = bench.time_fn(d16.copy_, s16, device=dev, flush_l2=True)
        t_nofl = bench.time_fn(d16.copy_, s16, device=dev, flush_l2=False)
        rows.append(("copy 16 MiB, flush / no flush", f"{t_fl.median_ms:.4f} / "
                     f"{t_nofl.median_ms:.4f} ms", "flush slower",
                     verdict(None if dry else t_fl.median_ms > t_nofl.median_ms)))

        # 3. a tiny, launch-bound kernel ---------------------------------------------------------
        a4 = torch.randn(1024, device=dev)
        t_tiny = bench.time_fn(torch.add, a4, a4, device=dev)
        db_tiny = do_bench_median(lambda: torch.add(a4, a4), dry)
        rows.append(("add 4 KiB, time_fn", f"{t_tiny}", "", "-"))
        if db_tiny is not None:
            rows.append(("add 4 KiB, do_bench median", f"{db_tiny * 1000:.2f} µs",
                         "", verdict(abs(t_tiny.median_ms / db_tiny - 1) < 0.5)))

        # 4. bf16 matmul 8192^3 on random data ---------------------------------------------------
        n = 8192 // (16 if dry else 1)
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        flops = 2 * n**3
        t_mm = bench.time_fn(torch.matmul, a, b, device=dev)
        tp_mm = bench.throughput(t_mm, flops=flops, dtype=torch.bfloat16)
        rows.append((f"bf16 matmul {n}^3, time_fn", f"{tp_mm.tflops:.1f} TFLOP/s ({t_mm})",
                     "measured 710 (798 seen)",
                     verdict(None if tp_mm.frac_flops is None else 0.55 < tp_mm.frac_flops <= 1.0)))
        db_mm = do_bench_median(lambda: torch.matmul(a, b), dry)
        if db_mm is not None:
            rows.append((f"bf16 matmul {n}^3, do_bench", f"{flops / db_mm / 1e9:.1f} TFLOP/s", "",
                         verdict(abs(t_mm.median_ms / db_mm - 1) < 0.15)))

        # 5. repeatability: 5 time_fn measurements of the 1 GiB copy -----------------------------
        meds = [bench.time_fn(dst.copy_, src, device=dev).median_ms for _ in range(5)]
        cv = statistics.stdev(meds) / statistics.mean(meds)
        rows.append(("copy 1 GiB x5: medians (ms)", " ".join(f"{m:.4f}" for m in meds), "", "-"))
        rows.append(("copy 1 GiB x5: CV, max/min-1", f"{cv:.2%}, {max(meds) / min(meds) - 1:.2%}",
                     "CV < 2%", verdict(None if dry else cv < 0.02)))

        # 6. peak_memory -------------------------------------------------------------------------
        if not dry:
            del src, dst, s16, d16
            res = memory.peak_memory(lambda: torch.empty(GiB, dtype=torch.uint8, device="cuda"))
            rows.append(("peak_memory(empty 1 GiB)", memory.format_bytes(res.peak_bytes),
                         "1.00 GiB", verdict(abs(res.peak_bytes - GiB) <= 2 * MiB)))
            del res
            res = memory.peak_memory(torch.matmul, a, b)
            out_bytes = n * n * 2
            rows.append(("peak_memory(bf16 matmul)", memory.format_bytes(res.peak_bytes),
                         f">= output {memory.format_bytes(out_bytes)}",
                         verdict(res.peak_bytes >= out_bytes)))
            del res
        else:
            try:
                memory.peak_memory(lambda: None)
            except RuntimeError as e:
                rows.append(("peak_memory on CPU raises", str(e)[:40] + "...", "", "ok"))

        # 7. saved_activation_bytes on the device ------------------------------------------------
        mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        rep = memory.saved_activation_bytes(mlp.to(dev), torch.randn(4, 16, device=dev))
        rows.append(("saved_activation_bytes(MLP)", f"{rep.total_bytes} B", "768 B",
                     verdict(rep.total_bytes == 768)))

    ours = [w for w in caught if "effilab" in str(w.filename)]
    rows.append(("Python warnings (effilab / all)", f"{len(ours)} / {len(caught)}", "0 / 0",
                 verdict(len(ours) == 0)))
    for w in caught:
        print(f"warning: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})")

    width = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"{'check':<{width[0]}}  {'value':<{width[1]}}  {'reference':<{width[2]}}  verdict")
    print("-" * (sum(width) + 15))
    for r in rows:
        print(f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:<{width[2]}}  {r[3]}")
    print()
    import importlib.metadata as md

    try:
        triton_v = md.version("triton")
    except md.PackageNotFoundError:
        triton_v = "none"
    print(f"measured ceilings for device._MEASURED ({info.name}, {datetime.date.today()}, "
          f"torch {torch.__version__}, triton {triton_v}): copy {tp.gbs:.0f} GB/s, "
          f"bf16 matmul {tp_mm.tflops:.0f} TFLOP/s")
    print(f"total {time.perf_counter() - t_start:.1f} s; "
          f"{sum(r[3] == 'CHECK' for r in rows)} CHECK verdict(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
