"""Notebook 10's own checks: the launcher of gloo ranks (effilab/dist.py) and its place in the
grading sandbox.

* a rank's value comes back as plain data; a rank that raised, died or hung is a RankError, and a
  hung launch leaves no process;
* in the real worker (grader.zygote.run_parts, each part in a forked child with the audit hook armed):
  student code in a rank cannot fork, open a socket, open the gradebook or launch ranks, student code
  at a cell's top level cannot launch ranks either, and a hung rank costs only its exercise — its
  later cases are not run, the next exercise's part is graded, and no rank is left behind;
* gloo runs inside the grading jail (its own network namespace: loopback only);
* the tolerances accept the reference solutions and reject a gradient that is not averaged.

The cases are few and the models tiny: each launch forks 2 ranks (≈0.1 s).
"""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from effilab.dist import RankError, launch
from effilab.grading import wire
from effilab.grading.core import get, key_for
from effilab.grading.nbcode import solution_namespace
from grader import jail
from grader.course import REPO

SOLUTION = REPO / "solutions" / "10_distributed.ipynb"


@pytest.fixture(scope="module")
def reference():
    return solution_namespace(SOLUTION)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------- launcher
def _sum_rank(rank, world, x):
    import torch.distributed as dist

    t = x * (rank + 1)
    dist.all_reduce(t)
    return {"rank": rank, "sum": t, "pid": os.getpid(), "names": ["a", 1, 2.5, None]}


def _hang_rank(rank, world, folder):
    Path(folder, f"rank-{os.getpid()}").touch()
    if rank == 1:
        time.sleep(600)
    import torch.distributed as dist

    dist.all_reduce(torch.ones(1))  # rank 0 waits for rank 1 forever
    return rank


def _raise_rank(rank, world):
    if rank == 1:
        raise ValueError("rank one fails")
    return rank


def test_ranks_return_plain_data_in_rank_order():
    out = launch(3, _sum_rank, torch.ones(5))
    assert [o["rank"] for o in out] == [0, 1, 2] and len({o["pid"] for o in out}) == 3
    for o in out:
        assert type(o["sum"]) is torch.Tensor and torch.equal(o["sum"], torch.full((5,), 6.0))
        assert o["names"] == ["a", 1, 2.5, None]


def test_a_rank_that_raises_or_hangs_is_a_rank_error_and_leaves_no_process(tmp_path):
    with pytest.raises(RankError, match="rank 1 raised ValueError: rank one fails"):
        launch(2, _raise_rank)
    t0 = time.monotonic()
    with pytest.raises(RankError) as err:
        launch(2, _hang_rank, str(tmp_path), timeout_s=5)  # time for both ranks to start on a busy machine
    # stopped by its timeout, not by the hang's end (600 s): half of it leaves any machine's speed out of it
    assert err.value.reason == "timeout" and time.monotonic() - t0 < 300
    pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("rank-*")]
    assert pids and not any(_alive(p) for p in pids)  # (a rank still starting when time ran out left no file)


def test_the_launch_budget():
    with pytest.raises(ValueError, match="world_size"):
        launch(5, _raise_rank)


# ---------------------------------------------------------------------------------------------- sandbox
HOSTILE = '''
import os, socket, torch, torch.distributed as dist
from effilab.dist import launch

def _top_level_launch():
    try:
        launch(2, lambda rank, world: rank)
        return "ALLOWED"
    except Exception as exc:
        return type(exc).__name__

AT_CELL_LEVEL = _top_level_launch()

def bucketed_ddp(model, bucket_numel):
    tries = {"cell launch": AT_CELL_LEVEL}
    acts = {"fork": lambda: os._exit(0) if os.fork() == 0 else None,
            "gradebook": lambda: open(GRADEBOOK).read(),
            "socket": lambda: socket.create_connection(("127.0.0.1", 9), timeout=1),
            "launch": lambda: launch(2, lambda rank, world: rank)}
    for name, act in acts.items():
        try:
            act()
            tries[name] = "ALLOWED"
        except Exception as exc:
            tries[name] = type(exc).__name__
    raise RuntimeError(f"attempts {sorted(tries.items())}")
'''

HANGS = '''
import os, time, torch.distributed as dist
from pathlib import Path

def bucketed_ddp(model, bucket_numel):
    Path(PIDS, f"rank-{os.getpid()}").touch()
    if dist.get_rank() == 1:
        time.sleep(600)
    def finish():
        pass
    return finish
'''


def _worker_parts(parts: list[dict], scratch: Path) -> list[dict]:
    """Run parts through the grader's own worker loop (grader.zygote.run_parts: one forked child per
    part, audit hook armed); what each case returned and how each part ended."""
    from grader import zygote

    import torch._dynamo  # noqa: F401  (as the zygote preloads it: imported before the integrity snapshot)
    out_path = scratch / "frames"
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        zygote.run_parts({"order": list(range(len(parts))), "parts": parts, "scratch": str(scratch / "parts"),
                          "parallel": 1}, fd)
    finally:
        os.close(fd)
    data, results = out_path.read_bytes(), [{"cases": {}, "notes": [], "end": None} for _ in parts]
    while data:
        i, kind, n = zygote.RELAY.unpack(data[:zygote.RELAY.size])
        body, data = data[zygote.RELAY.size:zygote.RELAY.size + n], data[zygote.RELAY.size + n:]
        msg = wire.loads(body)
        if kind == zygote.CASE:
            results[i]["cases"][(msg["group"], msg["case"])] = msg["output"]
        elif kind == zygote.END:
            results[i]["end"] = msg
        else:
            results[i]["notes"].append(msg)
    return results


def _part(name: str, code: list[tuple[str, str]], n_cases: int, deny: Path) -> dict:
    """A correctness part of ``name`` on the first ``n_cases`` public cases of its first group."""
    ex = get(name)
    cases = [(0, ci, c) for ci, c in enumerate(ex.cases("public", key_for(ex, "public"))[0].cases[:n_cases])]
    return {"exercise": name, "part": "correctness", "code": code, "cases": cases, "timeout": 120,
            "compile_budget": 120, "deny_read": [str(deny)]}


def _cell(grade_id: str) -> str:
    import nbformat

    nb = nbformat.read(str(SOLUTION), as_version=4)
    return next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def test_in_the_worker_student_code_in_a_rank_is_still_sandboxed_and_a_hung_rank_costs_one_exercise(
        tmp_path, monkeypatch):
    from effilab.grading.specs import nb10

    secret = tmp_path / "course"
    secret.mkdir()
    (secret / "gradebook.db").write_text("grades")
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setattr(nb10, "RANK_TIMEOUT_S", 4.0)  # read by the forked worker children
    setup = ("setup", _cell("setup_imports"))
    parts = [
        _part("bucketed_ddp", [("gradebook", f"GRADEBOOK = '{secret / 'gradebook.db'}'"), setup, ("hostile", HOSTILE)],
              1, secret),
        _part("bucketed_ddp", [("pids", f"PIDS = '{pids}'"), setup, ("hangs", HANGS)], 3, secret),
        _part("ZeroAdamW", [setup, ("zero", _cell("zero_adamw_solution"))], 2, secret),
    ]
    hostile, hung, zero = _worker_parts(parts, tmp_path)

    assert (0, 0) in hostile["cases"], hostile
    attempts = hostile["cases"][(0, 0)].message
    for what, refused in [("cell launch", "PermissionError"), ("fork", "PermissionError"),
                          ("gradebook", "PermissionError"), ("socket", "PermissionError"), ("launch", "RuntimeError")]:
        assert f"('{what}', '{refused}')" in attempts, attempts

    first, *rest = [hung["cases"][(0, i)] for i in range(3)]
    assert "did not finish in time" in first.message
    assert all("an earlier case of this exercise hung" in r.message for r in rest)
    ranks = [int(p.name.split("-")[1]) for p in pids.glob("rank-*")]
    assert ranks and not any(_alive(p) for p in ranks)  # the hung rank and its partner are gone
    assert hung["end"]["seconds"] < 300  # the part ended on its timeout, long before the hang's 600 s

    for (gi, ci), out in zero["cases"].items():  # the next exercise is graded as usual, from plain data
        assert isinstance(out, dict) and all(type(p) is torch.Tensor for r in out["ranks"] for p in r["params"])
        assert get("ZeroAdamW").judge(out, parts[2]["cases"][ci][2]) is None


# ---------------------------------------------------------------------------------------------- jail
OK, WHY = jail.available()


@pytest.mark.skipif(not OK and os.environ.get("EFFILAB_REQUIRE_JAIL") != "1", reason=WHY)
def test_gloo_ranks_run_inside_the_jail(tmp_path):
    """The jail has its own network namespace: loopback is its one interface, and gloo needs it."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    src = textwrap.dedent("""
        import json, socket, torch, torch.distributed as dist
        from effilab.dist import launch
        def f(rank, world):
            t = torch.full((3,), float(rank + 1))
            dist.all_reduce(t)
            return t
        out = launch(2, f)
        print(json.dumps({"sums": [o.tolist() for o in out], "interfaces": [n for _, n in socket.if_nameindex()]}))
    """)
    proc = jail.Jail(writable=[scratch]).popen([sys.executable, "-c", src], stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    import json

    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {"sums": [[3.0] * 3, [3.0] * 3], "interfaces": ["lo"]}


# ---------------------------------------------------------------------------------------------- tolerances
def test_the_tolerance_rejects_a_sum_instead_of_a_mean(reference):
    ex = get("bucketed_ddp")
    case = ex.cases("hidden", key_for(ex, "hidden", 777))[0].cases[2]
    out = ex.run(reference["bucketed_ddp"], case)
    assert ex.judge(out, case) is None
    from effilab.grading.specs.nb10 import compare_params

    doubled = [[2 * p for p in r["params"]] for r in out["ranks"]]
    assert compare_params(doubled, out["ranks"][0]["params"], "") is not None


def test_run_and_reference_caches_tell_hidden_seeds_apart():
    """A hidden seed prints as #i whatever the secret: the caches key on its value."""
    from effilab.grading.specs.nb10 import _plain_key

    ex = get("ZeroAdamW")
    a, b = (ex.cases("hidden", key_for(ex, "hidden", s))[0].cases[0].meta["s"] for s in (1, 2))
    assert repr(a) == repr(b) and _plain_key((a,)) != _plain_key((b,))
