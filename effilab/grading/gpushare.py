"""The share of a call's GPU time spent in the student's own kernels (the speed parts' provenance).

:func:`gpu_time_share` profiles one call with torch.profiler (CUPTI: the device's own record of
what ran, which student code cannot edit) while :func:`~effilab.grading.provenance.recording`
notes the student's launches, then splits the device time into

* ``student``: kernels whose name is one the student launched, at most as many events per name as
  launches recorded (a library kernel that happens to share a student kernel's name is not hers);
  Triton names a kernel after its function, older versions add a specialisation suffix
  (``rms_norm_kernel_0d1d2de``), both are matched;
* ``copy``: memcpy/memset and aten's copy and fill kernels (an honest wrapper may copy a
  non-contiguous input, and a host round trip shows up here);
* ``library``: compute kernels of aten, cuBLAS/cuDNN/CUTLASS and Inductor's generated
  ``triton_*`` kernels — the work done by someone else;
* ``other``: any other kernel.

The grader's rule (:func:`share_problem`): at least :data:`MIN_GPU_SHARE` of the device time in the
student's kernels, and no library compute kernel at all. :func:`share_from_events` is the pure
part (tested on CPU with recorded event lists); :func:`gpu_time_share` needs a CUDA GPU.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Any, Callable, Collection, Iterable

import torch

MIN_GPU_SHARE = 0.90

_COPY_NAMES = re.compile(r"^(Memcpy|Memset)|copy_kernel|CopyKernel|FillFunctor|fill_kernel|direct_copy", re.I)
_LIBRARY_NAMES = re.compile(
    r"^triton_(poi|red|per|tem|for|mm|bmm|unk|spl)_|at::native|at::cuda|\baten\b|cublas|cutlass|cudnn|gemm|xmma|"
    r"sm\d+_|ampere_|hopper_|volta_|turing_|flash_fwd|flash_bwd|fmha|cunn_|softmax_warp|elementwise_kernel|"
    r"reduce_kernel|void at::", re.I)


def _kind(name: str) -> str:
    if _COPY_NAMES.search(name):
        return "copy"
    if _LIBRARY_NAMES.search(name):
        return "library"
    return "other"


def _matches(kernel: str, student: str) -> bool:
    """A profiler kernel name is the student's kernel ``student``: equal, or with a specialisation
    suffix of letters, digits and underscores (older Triton)."""
    return kernel == student or bool(re.fullmatch(re.escape(student) + r"_[0-9A-Za-z_]{1,64}", kernel))


def share_from_events(events: Iterable[tuple[str, float]], student_launches: Counter | dict) -> dict:
    """Split device events ``(name, microseconds)`` into student / copy / library / other time.

    ``student_launches`` maps each student kernel name to how many times it launched during the
    profiled call; events beyond that count fall into the other kinds. Returns the dict described
    in the module docstring: ``share``, ``total_us``, ``student_us``, ``copy_us``, ``library_us``,
    ``other_us``, ``library`` (names), ``kernels`` (top 20 by time: name, us, count, kind).
    """
    budget = Counter({k: int(v) for k, v in dict(student_launches).items()})
    per: dict[tuple[str, str], list[float]] = {}
    for name, us in events:
        kind = None
        for s in list(budget):
            if budget[s] > 0 and _matches(name, s):
                budget[s] -= 1
                kind = "student"
                break
        kind = kind or _kind(name)
        acc = per.setdefault((name, kind), [0.0, 0])
        acc[0] += float(us)
        acc[1] += 1
    totals = Counter()
    for (_, kind), (us, _) in per.items():
        totals[kind] += us
    total = sum(totals.values())
    kernels = sorted(({"name": n, "us": us, "count": c, "kind": k} for (n, k), (us, c) in per.items()),
                     key=lambda d: -d["us"])
    return {"share": totals["student"] / total if total > 0 else 0.0, "total_us": total,
            "student_us": totals["student"], "copy_us": totals["copy"], "library_us": totals["library"],
            "other_us": totals["other"], "library": sorted({n for (n, k) in per if k == "library"}),
            "kernels": kernels[:20], "student_launches": dict(student_launches)}


def share_problem(share: dict, min_share: float = MIN_GPU_SHARE, allow_library: bool = False) -> str | None:
    """None when ``share`` (from :func:`gpu_time_share`) meets the rule, else a message for the student."""
    if share.get("total_us", 0) <= 0:
        return "no GPU work was recorded for your call: the timed call must launch your Triton kernel on the GPU"
    if not share.get("student_us"):
        return ("none of the timed call's GPU time is in a Triton kernel of yours (ran: "
                + ", ".join(k["name"][:60] for k in share.get("kernels", [])[:4]) + ")")
    if share.get("library") and not allow_library:
        return ("library kernels do part of the work in your timed call (" + ", ".join(n[:60] for n in share["library"][:3])
                + "): this exercise asks for the work in your own Triton kernel")
    if share["share"] < min_share:
        others = [k["name"][:60] for k in share.get("kernels", []) if k["kind"] != "student"][:3]
        return (f"only {100 * share['share']:.0f} % of your call's GPU time is in your own kernels (at least "
                f"{100 * min_share:.0f} % needed; also ran: {', '.join(others)})")
    return None


def _device_events(prof) -> list[tuple[str, float]]:
    """(name, µs) of every device-side event (kernels, memcpy, memset) of a torch.profiler run."""
    out = []
    for evt in prof.events():
        if "CUDA" not in str(getattr(evt, "device_type", "")):
            continue
        tr = getattr(evt, "time_range", None)
        us = tr.elapsed_us() if tr is not None else getattr(evt, "device_time", 0.0)
        out.append((evt.name, float(us)))
    return out


def gpu_time_share(call: Callable[[], Any], record=None, *, student_files: Collection[str] | None = None,
                   rule=None) -> dict:
    """Profile one ``call()`` on the GPU and split its device time (see the module docstring).

    ``record``: a :class:`~effilab.grading.provenance.CallRecord` of an earlier (correctness) call;
    its student kernel names are reported as ``expected`` and a profiled call that launches none
    of them is noted. Warm the call up first (compilation and autotuning belong outside). The
    returned dict also holds ``foreign_launches`` and ``compute`` from the profiled call's record.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_time_share needs a CUDA GPU (torch.profiler's CUDA activity)")
    from torch.profiler import ProfilerActivity, profile

    from .provenance import recording

    torch.cuda.synchronize()
    with warnings.catch_warnings():  # the profiler's own notices are the grader's, not the student's code's
        warnings.filterwarnings("ignore", message=r".*(Profiler clears events|Profiler record function)")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            with recording(rule=rule, student_files=student_files) as rec:
                call()
            torch.cuda.synchronize()
    launches = Counter(ln.name for ln in rec.student_launches)
    share = share_from_events(_device_events(prof), launches)
    share["foreign_launches"] = sorted({ln.name for ln in rec.foreign_launches})
    share["compute"] = list(rec.compute)
    if record is not None:
        share["expected"] = sorted(record.student_kernel_names)
        share["expected_seen"] = bool(set(share["expected"]) & set(launches))
    rec.release()
    return share
