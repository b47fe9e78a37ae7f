"""nbgrader's own run of a submitted notebook, inside the jail (:mod:`grader.jail`).

``nbgrader autograde`` executes the student's notebook in an ipykernel; by default that kernel runs
with the instructor's full rights. Here it is started through :meth:`grader.jail.Jail.command`:

* **transport.** The jail has no network, so the host cannot reach the kernel over TCP; ZeroMQ's
  ``ipc`` transport is used instead, with the Unix sockets in a run folder bound into the jail.
  That folder is outside the scratch (the student cannot rename it: it is a mount point) and, as
  root, is handed back to root once the kernel's sockets exist, before any student code runs — a
  student can then not swap a socket for a link that would make the grader's reconnect reach
  another socket of the host. (As a normal user the kernel runs under the grader's own uid and the
  folder stays writable to it: such a link could only reach sockets that user can reach anyway.)
* **working folder — a copy.** The kernel's cwd is a copy of the student's autograded folder in
  the scratch: notebooks that write next to themselves (checkpoints, plots) keep working, nothing
  written reaches the autograded folder, and the copy leaves out the ``.ipynb`` files — the notebook
  nbgrader executes holds the hidden tests, which the student's code must not read from disk.
* **time limit.** Besides nbgrader's per-cell timeout (an interrupt, which code that ignores
  SIGINT survives), :attr:`JailedKernelManager.time_limit` bounds the whole notebook: at the
  deadline the jail is killed, whatever the code does. :class:`JailedExecute` then finishes the
  notebook instead of failing the submission: the cell that was running and every cell after it
  get an error output (so their tests score 0) saying why.
* **kernel.** Always this environment's ipykernel, whatever kernelspec the notebook names.

Wire-up (see :func:`configure`): ``configure(c, course)`` on the nbgrader config before
``NbGraderAPI(...).autograde(...)``.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import tempfile
import threading
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Bool, Float, Int, List, Unicode

from . import jail

class JailedKernelManager(AsyncKernelManager):
    """An ipykernel started in a :class:`grader.jail.Jail`, reached over ipc sockets, killed at
    ``time_limit`` seconds after it started. ``stop_reason`` says why the jail was stopped, if it was."""

    time_limit = Float(3600.0, help="seconds the whole notebook may run before the jail is killed").tag(config=True)
    memory_bytes = Int(None, allow_none=True, help="memory limit of the jail (see grader.jail.Jail)").tag(config=True)
    nproc = Int(None, allow_none=True, help="task limit of the jail (default grader.jail.default_nproc())").tag(config=True)
    gpu = Bool(None, allow_none=True, help="bind the GPU devices (default: when present)").tag(config=True)
    slot = Int(0, help="parallel grading slot: the sandbox uid when running as root").tag(config=True)
    hidden = List(Unicode(), help="paths the kernel must never see (course root, solutions, …)").tag(config=True)
    extra_writable = List(Unicode(), help="more folders the kernel may write (tests use one)").tag(config=True)

    stop_reason: str | None = None
    _scratch: Path | None = None
    _run: Path | None = None
    _timer: threading.Timer | None = None
    _watchdog: jail.Watchdog | None = None
    _proc = None  # bwrap's Popen (the provisioner forgets its own once it has waited for it)

    # -- start -----------------------------------------------------------------------------------
    async def _async_pre_start_kernel(self, **kw):
        self._scratch = Path(tempfile.mkdtemp(prefix="effilab-kernel-"))
        self._run = Path(tempfile.mkdtemp(prefix="effilab-run-"))  # short: a Unix socket path has ~107 bytes
        work = self._scratch / "work"
        self._copy_workdir(kw.get("cwd"), work)
        self.transport, self.cache_ports = "ipc", False
        self.ip = str(self._run / "k")
        self.connection_file = str(self._run / "kernel.json")
        extra = {} if self.nproc is None else {"nproc": self.nproc}
        self._jail = jail.Jail(writable=[self._scratch, self._run] + [Path(w) for w in self.extra_writable],
                               hidden=[Path(h) for h in self.hidden], cwd=work, gpu=self.gpu,
                               memory_bytes=self.memory_bytes, slot=self.slot, **extra,
                               # the jail's init is the kernel's parent and outlives it: no parent poller
                               # (and no "Ctrl-C will not work" banner on the grader's output)
                               env={"JPY_PARENT_PID": "1"})
        kw["cwd"] = str(self._scratch)  # bwrap's own cwd on the host; the kernel's is set inside the jail
        return await super()._async_pre_start_kernel(**kw)

    def _copy_workdir(self, cwd: str | None, work: Path) -> None:
        """The kernel's working folder: a copy of ``cwd`` (the student's autograded folder) without
        notebooks, or an empty folder when nbgrader gives none (never the grader's own cwd)."""
        if not cwd:
            work.mkdir()
            return
        cwd = os.path.realpath(cwd)
        secret = list(self.hidden) + jail.project_roots(jail.REPO)
        if any(jail.inside(os.path.realpath(h), cwd) for h in secret):
            raise ValueError(f"the notebook's folder {cwd} contains the course root, solutions or the repository: "
                             "it cannot be copied into a jail (run nbgrader on the course's autograded folder)")
        shutil.copytree(cwd, work, symlinks=True, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", self.connection_file] + list(extra_arguments or [])
        self._info = os.pipe()  # bwrap reports the jail's init here (see grader.jail_proc)
        return self._jail.command(argv, info_fd=self._info[1])

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        r, w = self._info
        try:
            await super()._async_launch_kernel(kernel_cmd, pass_fds=(w,), **kw)
        finally:
            os.close(w)
        proc = self._proc = self.provisioner.process
        try:
            proc.jail_init = await asyncio.to_thread(jail.read_init, r)
        finally:
            os.close(r)
        self._timer = threading.Timer(self.time_limit, self._expire, args=(proc,))
        self._timer.daemon = True
        self._timer.start()
        self._watchdog = jail.watch(proc, self._jail.memory_bytes)

    async def _async_post_start_kernel(self, **kw) -> None:
        await super()._async_post_start_kernel(**kw)
        if os.geteuid() == 0:
            await self._lock_run_folder()

    async def _lock_run_folder(self) -> None:
        """Once the kernel has made its sockets, give their folder back to root (read-only for the
        sandbox uid), so student code cannot replace them. This runs before the client connects,
        hence before any cell. If the kernel dies first, the client fails to connect on its own; if
        it lives but its sockets never appear, it is stopped (no cell runs with the folder open)."""
        names = [f"{self.ip}-{p}" for p in (self.shell_port, self.iopub_port, self.stdin_port,
                                             self.control_port, self.hb_port)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while loop.time() < deadline and await self._async_is_alive():
            if all(os.path.exists(n) and stat.S_ISSOCK(os.lstat(n).st_mode) for n in names):
                os.chown(self._run, 0, 0)
                os.chmod(self._run, 0o755)
                return
            await asyncio.sleep(0.05)
        if await self._async_is_alive():
            self.stop("the kernel's sockets did not appear in 120 s")
            raise RuntimeError(f"the jailed kernel made no sockets in {self._run} within 120 s")

    # -- stop ------------------------------------------------------------------------------------
    def _expire(self, proc) -> None:
        if proc.poll() is None:
            self.stop_reason = (f"time limit: the notebook ran longer than {self.time_limit:.0f} s in total "
                                "and was stopped")
            jail.kill(proc)

    def stop(self, reason: str) -> None:
        """Kill the jail now, recording why (:class:`JailedExecute` reports it in the notebook)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self.stop_reason = self.stop_reason or reason
            jail.kill(proc)

    def why_stopped(self) -> str:
        if self.stop_reason:
            return self.stop_reason
        if self._watchdog and self._watchdog.reason:
            return self._watchdog.reason
        proc = self._proc
        code = proc.returncode if proc is not None else None
        return (f"the kernel died (exit code {code}): did the code exit, crash the interpreter or run out of "
                "memory?")

    async def _async_kill_kernel(self, restart: bool = False) -> None:
        proc = self._proc
        if proc is not None:
            await asyncio.to_thread(jail.kill, proc)
        await super()._async_kill_kernel(restart=restart)

    _kill_kernel = _async_kill_kernel

    async def _async_interrupt_kernel(self) -> None:
        """Interrupt by message: a signal sent to bwrap would not reach the kernel (it runs in
        another session of its own pid namespace); ipykernel answers ``interrupt_request`` by
        sending SIGINT to itself, inside the jail."""
        if not self.has_kernel:
            raise RuntimeError("Cannot interrupt kernel. No kernel is running!")
        msg = self.session.msg("interrupt_request", content={})
        self._connect_control_socket()
        self.session.send(self._control_socket, msg)

    interrupt_kernel = _async_interrupt_kernel

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            self._release()

    cleanup_resources = _async_cleanup_resources

    def _release(self) -> None:
        """Stop the timer and the watchdog, end the jail if it still runs, remove its folders."""
        if self._timer:
            self._timer.cancel()
        if self._watchdog:
            self._watchdog.stop()
        proc = self._proc
        if proc is not None:
            jail.kill(proc)  # also when it ended: returns once the jail's last process is gone
        for d in (self._scratch, self._run):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class JailedExecute(Execute):
    """nbgrader's Execute with the kernel in a jail, finishing the notebook when the kernel is gone.

    nbgrader's own Execute turns a dead kernel (or a cell that ignores the interrupt) into
    ``UnresponsiveKernelError``, and the whole submission fails. Here the cell that was running
    gets an error saying why, every later code cell a "not run" error — so tests after the point
    of failure score 0 — and autograde goes on to save the grades."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", JailedKernelManager)
        super().__init__(*args, **kwargs)
        self._stopped: str | None = None

    def preprocess(self, nb, resources, retries=None):
        self._stopped = None
        return super().preprocess(nb, resources, retries)

    def preprocess_cell(self, cell, resources, index):
        if self._stopped is not None:
            if cell.cell_type == "code" and cell.source.strip():
                cell.outputs = [_error("NotRun", f"this cell was not run: {self._stopped}")]
            return cell, resources
        try:
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._stopped = self.km.why_stopped() if isinstance(self.km, JailedKernelManager) else "the kernel died"
            cell.outputs.append(_error("KernelStopped", self._stopped))
        except CellTimeoutError:
            why = (f"this cell ran longer than {self.timeout} s and did not stop when interrupted "
                   "(does it ignore KeyboardInterrupt?)")
            if isinstance(self.km, JailedKernelManager):
                self.km.stop(why)
            self._stopped = why
            cell.outputs.append(_error("CellTimeoutError", why))
        return cell, resources


def configure(c, course=None, *, time_limit: float = 3600.0, slot: int = 0, gpu: bool | None = None,
              memory_bytes: int | None = None, nproc: int | None = None, hidden=(), extra_writable=()) -> None:
    """Make nbgrader's autograde run every notebook in a jail (call on the config before
    ``NbGraderAPI(coursedir, config=c).autograde(...)``).

    Replaces nbgrader's ``Execute`` in ``Autograde.autograde_preprocessors`` by
    :class:`JailedExecute` (a kernel_manager_class trait would not do: nbgrader's Execute sets its
    own manager class in ``__init__``) and sets :class:`JailedKernelManager`'s traits. With a
    :class:`grader.course.Course`, its root, solutions, ``tests/`` and ``grader/examples/`` are hidden
    (they are not bound anyway; hiding also covers a course root placed inside something bound).
    """
    from nbgrader.converters import Autograde

    default = Autograde.class_traits()["autograde_preprocessors"].default()
    if Execute not in default:
        raise RuntimeError("nbgrader's Autograde no longer runs nbgrader.preprocessors.Execute: "
                           "grader/kernel.py must be adapted to this nbgrader version")
    c.Autograde.autograde_preprocessors = [JailedExecute if p is Execute else p for p in default]
    paths = [str(h) for h in hidden]
    if course is not None:
        paths += [str(course.root), str(course.solutions), str(course.repo / "tests"),
                  str(course.repo / "grader" / "examples")]
    c.JailedKernelManager.hidden = list(dict.fromkeys(paths))
    c.JailedKernelManager.extra_writable = [str(w) for w in extra_writable]
    c.JailedKernelManager.time_limit = float(time_limit)
    c.JailedKernelManager.slot = int(slot)
    c.JailedKernelManager.gpu = gpu
    c.JailedKernelManager.memory_bytes = memory_bytes
    c.JailedKernelManager.nproc = nproc
