"""One side-by-side table from the ``<stem>.json`` reports of the benchmarks/ops scripts.

    python benchmarks/ops/summarize.py DIR > table.md

A row per operator and pass: the floor (the pass's bytes or FLOPs at the measured ceiling of the
GPU, see ``_common.py``), effilab's default launch and its best swept configuration, Liger-Kernel,
torch.compile and the best other PyTorch path (eager, cuDNN, the SDPA backends), effilab's fraction
of the floor, its speed-up over the fastest other candidate, and the issue-14 target with whether
the default launch meets it (judged only on an H200, where the targets were set).
"""
from __future__ import annotations

import json
import pathlib
import sys

ORDER = ["rmsnorm", "swiglu", "cross_entropy", "flash_attention", "cuda_rmsnorm"]


def _ms(rows, name_has: str | None = None, kind: str | None = None):
    rs = [r for r in rows if r.get("ms") and (kind is None or r["kind"] == kind)
          and (name_has is None or name_has.lower() in r["name"].lower())]
    return min(rs, key=lambda r: r["ms"]) if rs else None


def _t(r) -> float | None:
    return r["ms"] if r else None


def _of_anchor(d, rs) -> float | None:
    """The default's fraction of the same-run anchor (a copy of the same bytes), if the pass has one."""
    anchor = _ms(rs, kind="anchor")
    return anchor["ms"] / d["ms"] if anchor and d.get("ms") else None


def _copy_frac(d, rs) -> float:
    """Fraction of copy: of the same-run copy when the pass timed one, else of the recorded ceiling."""
    frac = _of_anchor(d, rs)
    return d["frac"] if frac is None else frac


# (stem, mode) -> (target text, test(default_row, rows_of_that_pass) -> bool | None)
TARGETS = {
    ("rmsnorm", "fwd"): ("of copy >= 0.95 and <= Liger",
                         lambda d, rs: _copy_frac(d, rs) >= 0.95 and (_t(_ms(rs, kind="liger")) or 1e9) >= d["ms"]),
    ("rmsnorm", "fwd+bwd"): ("<= 0.26 ms and >= 1.2x F.rms_norm",
                             lambda d, rs: d["ms"] <= 0.26 and (_t(_ms(rs, "F.rms_norm")) or 1e9) >= 1.2 * d["ms"]),
    ("swiglu", "fwd"): ("frac >= 0.95 (byte floor)", lambda d, rs: d["frac"] >= 0.95),
    ("swiglu", "fwd+bwd"): ("frac >= 0.90 (byte floor)", lambda d, rs: d["frac"] >= 0.90),
    ("cross_entropy", "fwd+bwd"): ("<= 1.6 ms, >= 1.3x Liger, <= 1 MiB extra",
                                   lambda d, rs: d["ms"] <= 1.6 and (_t(_ms(rs, kind="liger")) or 1e9) >= 1.3 * d["ms"]
                                   and (d.get("extra_mib") or 0) <= 1.0),
    ("flash_attention", "fwd"): (">= cuDNN", lambda d, rs: (_t(_ms(rs, "cudnn")) or 1e9) >= d["ms"]),
    ("flash_attention", "fwd causal"): (">= cuDNN", lambda d, rs: (_t(_ms(rs, "cudnn")) or 1e9) >= d["ms"]),
    ("flash_attention", "fwd+bwd"): (">= 1.2x SDPA flash",
                                     lambda d, rs: (_t(_ms(rs, "sdpa flash")) or 1e9) >= 1.2 * d["ms"]),
    ("flash_attention", "fwd+bwd causal"): (">= 1.2x SDPA flash",
                                            lambda d, rs: (_t(_ms(rs, "sdpa flash")) or 1e9) >= 1.2 * d["ms"]),
}


def _f(x, fmt=".3f"):
    return "-" if x is None else format(x, fmt)


def _short(r, width: int = 34) -> str:
    name = r["name"].removeprefix("effilab ").removeprefix("torch ")
    return name if len(name) <= width else name[: width - 1] + "…"


def table(reports: list[dict]) -> str:
    lines = [
        "| op | pass | floor ms | effilab ms | frac of floor | best effilab sweep | Liger ms | torch.compile ms "
        "| best other PyTorch | effilab vs fastest other | target (H200) | met |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for rep in reports:
        on_h200 = "H200" in rep["header"]
        modes = list(dict.fromkeys(r["mode"] for r in rep["rows"]))
        for mode in modes:
            rs = [r for r in rep["rows"] if r["mode"] == mode]
            default = next((r for r in rs if r["kind"] == "effilab" and not r["sweep"]), None)
            if default is None:
                default = next((r for r in rs if r["kind"] == "effilab"), None)
            best_eff = _ms(rs, kind="effilab")
            liger, comp, other = _ms(rs, kind="liger"), _ms(rs, kind="compile"), _ms(rs, kind="torch")
            rivals = [r for r in (liger, comp, other) if r]
            fastest = min(rivals, key=lambda r: r["ms"]) if rivals else None
            floor = next((r["floor_ms"] for r in rs if r.get("floor_ms")), None)
            d_ms = default["ms"] if default else None
            sweep = "-"
            if best_eff is not None:
                sweep = f"{best_eff['ms']:.3f} ({_short(best_eff)})"
            speedup = f"{fastest['ms'] / d_ms:.2f}x ({_short(fastest, 24)})" if fastest and d_ms else "-"
            target, met = TARGETS.get((rep["stem"], mode), ("", None))
            verdict = "-"
            if met is not None and default and d_ms and on_h200:
                try:
                    verdict = "yes" if met(default, rs) else "**no**"
                except Exception:  # noqa: BLE001
                    verdict = "?"
            frac = _f(default and default.get("frac"), ".2f")
            of_anchor = _of_anchor(default, rs) if default else None
            if of_anchor is not None:
                frac += f" ({of_anchor:.2f} of same-run copy)"
            lines.append(
                f"| {rep['stem']} | {mode} | {_f(floor)} | {_f(d_ms)} | {frac} "
                f"| {sweep} | {_f(_t(liger))} | {_f(_t(comp))} | "
                f"{(_f(other['ms']) + ' (' + _short(other) + ')') if other else '-'} | {speedup} | {target} | {verdict} |"
            )
    return "\n".join(lines)


def load(directory: pathlib.Path) -> list[dict]:
    found = {p.stem: json.loads(p.read_text()) for p in directory.glob("*.json")}
    return [found[s] for s in ORDER if s in found] + [v for k, v in sorted(found.items()) if k not in ORDER]


def main(argv: list[str]) -> int:
    directory = pathlib.Path(argv[1] if len(argv) > 1 else ".")
    reports = load(directory)
    if not reports:
        print("(no benchmark reports found)")
        return 1
    r0 = reports[0]
    print("## Side by side")
    print()
    print(f"{r0['header']}. Floors at {r0['copy_gbs']:.0f} GB/s copy / {r0['matmul_tflops']:.0f} TFLOP/s bf16 "
          f"matmul ({r0['ceiling_source']}); 'effilab ms' is the default launch, 'frac of floor' = floor / its "
          "time, and where the pass timed a copy of its bytes in the same run (an '(anchor)' row), the fraction "
          "of that copy, which the 'of copy' targets use; 'met' is judged on an H200 only.")
    print()
    print(table(reports))
    bad = [f"{rep['stem']}: {c['name']}" for rep in reports for c in rep["checks"] if not c["ok"]]
    if bad:
        print()
        print("Correctness FAILURES: " + ", ".join(bad))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
