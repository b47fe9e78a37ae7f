"""The processes of a jail (see :mod:`grader.jail`): finding them, measuring them, ending them.

bwrap's outer process returns as soon as the jailed program exits, and the jail's own init (pid 1
of its pid namespace) is then killed through ``--die-with-parent`` — a few milliseconds later, not
before. A double-forked daemon is therefore still dying when the outer ``wait()`` returns. To make
"nothing outlives the jail" something a caller can rely on the moment :func:`wait` or :func:`kill`
returns, bwrap reports the init's host pid on ``--info-fd`` at start, and both wait for that init
to be gone too: the kernel kills and reaps every process of a pid namespace before its init's own
exit completes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

GIB = 1 << 30


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid`` from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def read_init(fd: int) -> tuple[int, int] | None:
    """(host pid, start time) of the jail's init, from the JSON bwrap writes on ``--info-fd``;
    None when bwrap ended without writing it (it failed before creating the jail)."""
    buf = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
        try:
            pid = int(json.loads(buf)["child-pid"])
        except ValueError:
            continue  # not the whole object yet
        st = _proc_stat(pid)
        return (pid, st[2]) if st else (pid, -1)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: no CONFIG_PROC_CHILDREN needed). In a jail all of
    them stay below bwrap: orphans are adopted by the jail's own init, not by the host's."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st:
                children.setdefault(st[0], []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (pages shared between them count for each:
    an overestimate, on the safe side for a limit)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for p in [pid] + descendants(pid):
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def _wait_gone(pid: int, start: int, deadline: float) -> None:
    while True:
        st = _proc_stat(pid)
        if st is None or (start >= 0 and st[2] != start) or st[1] in "ZX":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} of the jail did not end in time")
        time.sleep(0.005)


def wait(proc: subprocess.Popen, timeout: float | None = None) -> int:
    """Wait for a jail's bwrap and for its init, i.e. until no process of the jail is left; the
    jailed program's exit status (as ``Popen.wait``)."""
    t0 = time.monotonic()
    rc = subprocess.Popen.wait(proc, timeout)
    init = getattr(proc, "jail_init", None)
    if init:
        _wait_gone(init[0], init[1], t0 + (timeout if timeout is not None else 60.0))
    return rc


def kill(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """End a jail started from ``proc`` (the bwrap process) and everything in it, and return once
    they are gone: SIGKILL to bwrap's session, to the jail's init — whose death makes the kernel
    kill what is left in its pid namespace — and to every process below bwrap, then :func:`wait`.
    Safe to call twice, or on a jail that already ended."""
    init = getattr(proc, "jail_init", None)
    targets = set(descendants(proc.pid)) | ({init[0]} if init and _proc_stat(init[0]) else set())
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in targets:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        wait(proc, timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the jail's bwrap (pid {proc.pid}) did not end within {timeout:.0f} s of SIGKILL")


class Watchdog(threading.Thread):
    """Kills a jail whose processes together hold more than ``limit`` resident bytes; ``reason``
    then says so (the caller reports it instead of a bare "killed")."""

    def __init__(self, proc: subprocess.Popen, limit: int, interval: float = 0.25):
        super().__init__(daemon=True, name=f"jail-watchdog-{proc.pid}")
        self.proc, self.limit, self.interval = proc, int(limit), interval
        self.reason: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while self.proc.poll() is None and not self._stop_event.is_set():
            rss = tree_rss(self.proc.pid)
            if rss > self.limit:
                self.reason = (f"memory limit: the code used {rss / GIB:.2f} GiB of memory, more than the "
                               f"{self.limit / GIB:.2f} GiB allowed, and was stopped")
                kill(self.proc)
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()


def watch(proc: subprocess.Popen, memory_bytes: int | None) -> Watchdog | None:
    """Start a memory watchdog on ``proc`` (None without a memory limit)."""
    if not memory_bytes:
        return None
    w = Watchdog(proc, memory_bytes)
    w.start()
    return w


class JailedPopen(subprocess.Popen):
    """A jail's bwrap process (made by :meth:`grader.jail.Jail.popen`): ``kill()`` ends the whole
    jail; ``wait()`` returns once no process of the jail is left; ``limit_hit`` says whether the
    memory watchdog stopped it."""

    def __init__(self, jail, argv: list[str], pass_fds=(), **kwargs):
        r, w = os.pipe()
        try:
            super().__init__(jail.command(argv, info_fd=w), pass_fds=tuple(pass_fds) + (w,), **kwargs)
        finally:
            os.close(w)
        try:
            self.jail_init = read_init(r)
        finally:
            os.close(r)
        self.jail = jail
        self.watchdog = watch(self, jail.memory_bytes)

    @property
    def limit_hit(self) -> str | None:
        return self.watchdog.reason if self.watchdog else None

    def wait(self, timeout: float | None = None) -> int:
        return wait(self, timeout)

    def kill(self) -> None:
        kill(self)
