"""A small launcher of gloo process groups on one machine: ``launch(world_size, fn, *args)``.

Each rank is a forked copy of the calling process (so it shares the imported torch and the
notebook's functions, with nothing to pickle), joins a gloo process group through a
``torch.distributed.FileStore`` in a fresh folder (no TCP rendezvous: no port to pick, nothing
listening on a network address), runs ``fn(rank, world_size, *args)`` and sends its return value
back through a pipe as plain data (:mod:`effilab.grading.wire`: tensors, numbers, strings, lists,
dicts — no pickle). ``launch`` returns the ranks' values in rank order, or raises
:class:`RankError` saying which rank failed and how: an exception (its text), death by a signal, or
a hang — a rank that is not done after ``timeout_s`` is killed with every other rank of the launch,
so a deadlocked collective costs one call, never the caller. A group that fails to form (before
``fn`` runs) is formed again, up to :data:`INIT_ATTEMPTS` times.

gloo itself moves the tensors over TCP sockets on the loopback interface (``GLOO_SOCKET_IFNAME=lo``, unless set:
the grading jail has its own network namespace, where ``lo`` is the only interface). Those sockets
are opened by gloo's C++ code, never by Python, so the grading sandbox's audit hook is not asked.

The process budget: at most :data:`MAX_RANKS` ranks per launch, one launch at a time (a second
waits for the first), and no launch from inside a rank. In the grading sandbox (grader/sandbox.py) a launch may start only when no
student frame is on the stack: the exercise specs start ranks, student code cannot.

Ideas: Li et al., *PyTorch Distributed: Experiences on Accelerating Data Parallel Training*, VLDB
2020 (the process-group model that ``torch.distributed`` implements).
"""
from __future__ import annotations

import datetime
import os
import select
import shutil
import signal
import struct
import tempfile
import threading
import time
import traceback

MAX_RANKS = 4
_HEAD = struct.Struct("<BQ")
_OK, _ERR, _INIT_ERR = 1, 2, 3
INIT_ATTEMPTS = 3  # a group that failed to form (a loopback connection refused on a busy machine) is formed again
_STATE = {"in_rank": False}
_ONE_AT_A_TIME = threading.Lock()  # the grader judges on two threads: their launches take turns

__all__ = ["launch", "RankError", "MAX_RANKS", "in_rank"]


class RankError(RuntimeError):
    """A launch failed: ``rank`` (or None), ``reason`` ("raised", "init": joining the group failed,
    "signal", "timeout", "exit"), the message, and for "raised" / "init" the rank's exception as
    ``text``."""

    def __init__(self, message: str, rank: int | None = None, reason: str = "raised", text: str = ""):
        super().__init__(message)
        self.rank, self.reason, self.text = rank, reason, text  # text: the rank's exception, "Type: message"


def in_rank() -> bool:
    """Whether this process is a rank started by :func:`launch`."""
    return _STATE["in_rank"]


def _write(fd: int, kind: int, payload: bytes) -> None:
    view = memoryview(_HEAD.pack(kind, len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _loopback() -> str:
    """The loopback interface's name: ``lo`` on Linux (the jail's only one), ``lo0`` on macOS."""
    import socket

    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        names = []
    return next((n for n in names if n.startswith("lo")), "lo")


def _rank_main(rank: int, world: int, store_dir: str, w: int, fn, args, timeout_s: float) -> None:
    """The body of one forked rank: join the group, run ``fn``, send its value; never returns."""
    code = 0
    try:
        import torch
        import torch.distributed as dist

        from .grading import wire

        _STATE["in_rank"] = True
        torch.set_num_threads(1)  # ranks share the machine's cores
        os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback())
        try:
            store = dist.FileStore(os.path.join(store_dir, "store"), world)
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except Exception as exc:
            _write(w, _INIT_ERR, "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000].encode())
            os._exit(1)
        try:
            value = fn(rank, world, *args)
            payload = wire.dumps(value)
        finally:
            dist.destroy_process_group()
        _write(w, _OK, payload)
    except BaseException as exc:  # reported to the launcher, never raised in a forked copy
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        try:
            _write(w, _ERR, text[:4000].encode("utf-8", "replace"))
        except OSError:
            pass
        code = 1
    finally:
        os._exit(code)


class _Rank:
    def __init__(self, rank: int, pid: int, r: int):
        self.rank, self.pid, self.r = rank, pid, r
        self.buf = bytearray()
        self.eof = False
        self.status: int | None = None

    def read(self) -> None:
        chunk = os.read(self.r, 1 << 20)
        if chunk:
            self.buf += chunk
        else:
            self.eof = True

    def message(self) -> tuple[int, bytes] | None:
        if len(self.buf) < _HEAD.size:
            return None
        kind, n = _HEAD.unpack(bytes(self.buf[:_HEAD.size]))
        body = bytes(self.buf[_HEAD.size:_HEAD.size + n])
        return (kind, body) if len(body) == n else None


def _start(world: int, fn, args, store_dir: str, timeout_s: float) -> list[_Rank]:
    ranks = []
    for rank in range(world):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            for other in ranks:
                os.close(other.r)
            _rank_main(rank, world, store_dir, w, fn, args, timeout_s)
        os.close(w)
        ranks.append(_Rank(rank, pid, r))
    return ranks


def _reap(ranks: list[_Rank], kill: bool) -> None:
    """Every rank waited for (killed first when ``kill``); their pipes closed."""
    for rk in ranks:
        if kill and rk.status is None:
            try:
                os.kill(rk.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if rk.status is None:
            try:
                rk.status = os.waitstatus_to_exitcode(os.waitpid(rk.pid, 0)[1])
            except ChildProcessError:
                rk.status = 0
        os.close(rk.r)


def _collect(ranks: list[_Rank], deadline: float) -> RankError | None:
    """Read every rank's pipe until all are done, one failed, or the deadline passed."""
    while True:
        open_ = {rk.r: rk for rk in ranks if not rk.eof}
        if not open_:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            late = [rk.rank for rk in open_.values()]
            return RankError(f"rank {late[0]} did not finish in time (a collective that some rank never "
                             f"joined, or an endless loop); ranks {late} were stopped", late[0], "timeout")
        ready, _, _ = select.select(list(open_), [], [], min(left, 0.5))
        for fd in ready:
            open_[fd].read()
            msg = open_[fd].message()
            if msg and msg[0] in (_ERR, _INIT_ERR):
                text = msg[1].decode("utf-8", "replace")
                return RankError(f"rank {open_[fd].rank} raised {text}", open_[fd].rank,
                                 "raised" if msg[0] == _ERR else "init", text)
    return None


def launch(world_size: int, fn, *args, timeout_s: float = 60.0) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` forked gloo ranks; their return values
    (plain data) in rank order. Raises :class:`RankError` when a rank raised, died or hung."""
    if not 1 <= int(world_size) <= MAX_RANKS:
        raise ValueError(f"launch: world_size must be in 1..{MAX_RANKS}, got {world_size}")
    if _STATE["in_rank"]:
        raise RuntimeError("launch: a rank cannot launch ranks")
    _warm()
    with _ONE_AT_A_TIME:
        for attempt in range(INIT_ATTEMPTS):
            try:
                return _launch(int(world_size), fn, args, float(timeout_s))
            except RankError as exc:  # only a group that never formed is tried again: fn never ran
                if exc.reason != "init" or attempt == INIT_ATTEMPTS - 1:
                    raise
    raise AssertionError("unreachable")


def _warm() -> None:
    """Import once, before forking, what DistributedDataParallel imports lazily (torch._dynamo: 2–4 s
    on a CPU), so that no rank pays for it again."""
    import torch._dynamo  # noqa: F401
    import torch.distributed.algorithms.ddp_comm_hooks.default_hooks  # noqa: F401
    import torch.nn.parallel  # noqa: F401


def _launch(world_size: int, fn, args, timeout_s: float) -> list:
    from .grading import wire

    store_dir = tempfile.mkdtemp(prefix="effilab-dist-")
    ranks: list[_Rank] = []
    try:
        ranks = _start(world_size, fn, args, store_dir, timeout_s)
        failure = _collect(ranks, time.monotonic() + timeout_s)
        _reap(ranks, kill=failure is not None)
        ranks_done, ranks = ranks, []
        if failure is not None:
            raise failure
        values = []
        for rk in ranks_done:
            msg = rk.message()
            if msg is None or msg[0] != _OK:
                how = f"was killed by signal {-rk.status}" if rk.status and rk.status < 0 else \
                    f"exited with status {rk.status} before returning"
                raise RankError(f"rank {rk.rank} {how}", rk.rank, "signal" if (rk.status or 0) < 0 else "exit")
            values.append(wire.loads(msg[1]))
        return values
    finally:
        if ranks:
            _reap(ranks, kill=True)
        shutil.rmtree(store_dir, ignore_errors=True)
