"""Did grading a submission change the grading environment?

nbgrader runs a student's notebook in a kernel of the grader's own Python environment. A ``%pip
install`` the shell filter missed, or Python code that writes files, could leave something behind
that changes how the *next* submission is graded: a ``.pth`` file (run at every interpreter
start), a ``sitecustomize.py``, a replaced package, a new script in the venv's ``bin/``.

:func:`snapshot` records, cheaply, what such a change must touch; :func:`changed` lists the
differences between two snapshots. The lead's autograde loop takes one before and one after each
submission and stops (or rebuilds the environment) when the list is not empty.

What is recorded, for every ``sys.path`` entry and every site-packages folder (user site
included, existing or not — creating one counts):

* the names of the entries at the top level (a new package or module appears here);
* size and modification time of the top-level ``.pth`` and ``.py`` files (``sitecustomize.py``,
  editable-install finders) and of the files inside ``*.dist-info`` / ``*.egg-info`` folders
  (pip rewrites ``RECORD`` and ``INSTALLER`` on every install, so a reinstall of an existing
  package shows);
* size and modification time of every file in the environment's ``bin/`` (``Scripts/``), and of
  ``pyvenv.cfg``.

Not recorded: file contents (hashing a venv takes minutes), and files inside package folders — a
student who edits ``torch/__init__.py`` in place is not seen here; the grading sandbox must keep
the environment read-only for that. ``__pycache__`` is ignored: Python writes it on first import,
which is not a change. Directory modification times are not used for the same reason.
"""
from __future__ import annotations

import os
import site
import sys
from dataclasses import dataclass, field

_META_SUFFIXES = (".dist-info", ".egg-info")
_WATCHED_FILES = (".pth", ".py", ".egg-link")


@dataclass(frozen=True)
class Snapshot:
    """``entries``: watched folder → {path → (kind, size, mtime_ns)}, kind one of "file", "dir",
    "missing"."""

    entries: dict = field(default_factory=dict)

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(self.entries)


def default_roots() -> list[str]:
    """Every ``sys.path`` folder and site-packages folder (user site too), in order, once each —
    but not the course's own checkout (its source files are the instructor's to edit, and the
    sandbox never sees them writable): its site-packages inside a venv still count."""
    from .course import REPO

    repo = str(REPO.resolve()) + os.sep
    # sys.path may hold things that are not folders (path hooks of editable installs): only paths
    roots = [p for p in sys.path if p and (os.path.isabs(p) or os.path.exists(p))]
    roots = [p for p in roots if not (os.path.abspath(p) + os.sep).startswith(repo) or "site-packages" in p]
    try:
        roots += site.getsitepackages()
    except AttributeError:  # some virtualenv versions lack it
        pass
    user = getattr(site, "USER_SITE", None) or site.getusersitepackages()
    if user:
        roots.append(user)
    return list(dict.fromkeys(os.path.abspath(r) for r in roots))


def _bin_dirs() -> list[str]:
    out = []
    for prefix in dict.fromkeys([sys.prefix, os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))]):
        for name in ("bin", "Scripts"):
            d = os.path.join(prefix, name)
            if os.path.isdir(d):
                out.append(d)
    return out


def _stat(path: str, entry: os.DirEntry | None = None) -> tuple:
    try:
        st = entry.stat(follow_symlinks=False) if entry is not None else os.lstat(path)
    except OSError:
        return ("missing", 0, 0)
    kind = "dir" if (entry.is_dir(follow_symlinks=False) if entry is not None else os.path.isdir(path)) else "file"
    return (kind, st.st_size if kind == "file" else 0, st.st_mtime_ns if kind == "file" else 0)


def _scan_dir(path: str, out: dict, watch_all: bool = False) -> None:
    """Record ``path``'s top-level names; sizes and times of watched files (all files when
    ``watch_all``); and the files of metadata folders."""
    try:
        it = list(os.scandir(path))
    except FileNotFoundError:
        out[path] = ("missing", 0, 0)
        return
    except (NotADirectoryError, PermissionError, OSError):
        out[path] = _stat(path)  # a zip on sys.path, or unreadable: its own size and time
        return
    out[path] = ("dir", 0, 0)
    for e in it:
        if e.name == "__pycache__":
            continue
        kind, size, mtime = _stat(e.path, e)
        if kind == "file" and (watch_all or e.name.endswith(_WATCHED_FILES)):
            out[e.path] = (kind, size, mtime)
        else:
            out[e.path] = (kind, 0, 0)  # the name only
        if kind == "dir" and e.name.endswith(_META_SUFFIXES):
            try:
                for f in os.scandir(e.path):
                    if f.is_file(follow_symlinks=False):
                        out[f.path] = _stat(f.path, f)
            except OSError:
                pass


def snapshot(roots: list[str] | None = None, bins: list[str] | None = None) -> Snapshot:
    """What the grading environment looks like now (see the module doc). ``roots`` and ``bins``
    default to this interpreter's path folders and its environment's ``bin/``."""
    this_env = roots is None and bins is None
    roots = default_roots() if roots is None else [os.path.abspath(r) for r in roots]
    bins = _bin_dirs() if bins is None else [os.path.abspath(b) for b in bins]
    entries: dict = {}
    for r in roots:
        entries[r] = {}
        _scan_dir(r, entries[r])
    for b in bins:
        entries[b] = {}
        _scan_dir(b, entries[b], watch_all=True)
    if this_env:
        cfg = os.path.join(sys.prefix, "pyvenv.cfg")
        entries[cfg] = {cfg: _stat(cfg)}
    return Snapshot(entries)


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    """One sentence per difference between two snapshots, sorted by path; [] when none.

    Only the folders both snapshots watched are compared: the grader's own process adds folders to
    ``sys.path`` as it imports (setuptools' vendored packages, for one), which changes nothing on disk."""
    if not isinstance(before, Snapshot) or not isinstance(after, Snapshot):
        raise TypeError("changed(before, after) compares two envcheck.snapshot() results")
    old, new = {}, {}
    for root in set(before.entries) & set(after.entries):
        old.update(before.entries[root])
        new.update(after.entries[root])
    out = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        if a is None or a[0] == "missing":
            if b is not None and b[0] != "missing":
                out.append(f"new {b[0]}: {path}")
        elif b is None or b[0] == "missing":
            out.append(f"removed {a[0]}: {path}")
        elif a[0] != b[0]:
            out.append(f"{path}: was a {a[0]}, now a {b[0]}")
        elif a[1] != b[1]:
            out.append(f"changed file: {path} (size {a[1]} → {b[1]} bytes)")
        else:
            out.append(f"changed file: {path} (modified again, same size)")
    return out


if __name__ == "__main__":  # python -m grader.envcheck: what is watched, and how long it takes
    import time

    t = time.perf_counter()
    s = snapshot()
    n = sum(len(v) for v in s.entries.values())
    print(f"{n} entries under {len(s.roots)} folders in {time.perf_counter() - t:.3f} s")
