"""Read what students hand in without trusting it: files, folders, zip archives, notebook JSON.

Every step is guarded per item, so one bad file costs that file and never the batch:

* sizes — a notebook over :attr:`Limits.notebook_bytes`, a zip over :attr:`Limits.archive_bytes`
  on disk, more than :attr:`Limits.members` entries, or more than :attr:`Limits.unpacked_bytes`
  unpacked in all (a zip bomb: members are read with a cap, whatever sizes the archive declares);
* names — a zip member whose path is absolute, climbs out with ``..`` or holds control
  characters is refused (nothing is ever extracted to disk by its name; the name is only read
  for the student's identity); names a Windows zipper stored without the UTF-8 flag are decoded
  as UTF-8 when they are (``zoë/…``); symbolic links and special files are not followed (a link
  ``alice/01.ipynb → /course/solutions/01.ipynb`` would hand the solutions back in);
* JSON — nesting deeper than :attr:`Limits.depth` (the parser would recurse until it crashes),
  integers too long to convert, a byte-order mark, lone surrogates (which cannot be written back
  as UTF-8: they become U+FFFD), more than :attr:`Limits.cells` cells.

Each refusal is a sentence that says what is wrong and what to do.
"""
from __future__ import annotations

import json
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import nbformat

from .sanitize import clean_text

MiB = 2**20


@dataclass(frozen=True)
class Limits:
    notebook_bytes: int = 50 * MiB  # a notebook of this course is < 1 MB without outputs
    archive_bytes: int = 4096 * MiB  # an LMS bulk download of a large class
    unpacked_bytes: int = 4096 * MiB  # everything read out of one archive
    members: int = 20000  # entries of one archive
    depth: int = 64  # JSON nesting (a notebook needs about 10)
    cells: int = 5000


@dataclass
class Item:
    source: str  # where it came from, for the report ("subs.zip:bob/01.ipynb")
    name: str  # file name, as found (identity checks refuse what it must not hold; print ``source``)
    folders: tuple[str, ...] = ()  # folders between the container (zip, folder given) and the file
    container: str = ""  # the zip or folder it came from ("" for a loose file)
    data: bytes | None = None
    error: str | None = None
    siblings: tuple[str, ...] = ()  # file names of the notebooks in the same folder (itself included)

    @property
    def folder(self) -> str | None:  # the innermost folder (the name older code used)
        return self.folders[-1] if self.folders else None


@dataclass
class _Budget:
    left: int
    exhausted: bool = field(default=False)


def _human(n: int) -> str:
    """A byte count as people read it: "950 bytes", "12.5 KiB", "50.0 MiB"."""
    for unit, size in (("GiB", 2**30), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def shown(name) -> str:
    """A file or member name safe to print on one line, and still findable: bytes that are not
    UTF-8 and invisible or control characters are written as escapes (``\\xff``, ``\\n``)."""
    text = str(name)
    try:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")  # undecodable bytes of a file name
    except (UnicodeError, TypeError):
        pass
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for ch in text)
    return clean_text(text, 300)


def _regular_file(path: Path) -> str | None:
    """None for a plain file; otherwise why it is not read."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link, not a file: links are not followed (collect the file it points to, if it is yours)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def iter_items(path: Path, limits: Limits = Limits()):
    """Every notebook in ``path`` (a file, a zip, or a folder of either), as :class:`Item`."""
    if not os.path.lexists(path):
        yield Item(shown(path), shown(path.name), error="no such file")
        return
    if path.is_symlink():  # named by the instructor on the command line: followed (links inside are not)
        path = path.resolve()
    if path.is_dir() and not path.is_symlink():
        yield from _iter_folder(path, limits)
        return
    why = _regular_file(path)
    if why:
        yield Item(shown(path), shown(path.name), error=why)
        return
    yield from _iter_file(path, limits, (), "")


def _iter_folder(root: Path, limits: Limits):
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        notebooks = tuple(f for f in sorted(filenames) if f.lower().endswith(".ipynb"))
        for fname in sorted(filenames):
            p = Path(dirpath) / fname
            if fname.startswith(".") or p.suffix.lower() not in (".ipynb", ".zip"):
                continue
            rel = p.relative_to(root).parts[:-1]  # raw names: identity checks refuse control characters
            why = _regular_file(p)
            if why:
                yield Item(shown(p), fname, rel, str(root), error=why)
                continue
            yield from _iter_file(p, limits, rel, str(root), notebooks)


def _iter_file(path: Path, limits: Limits, folders: tuple, container: str, siblings: tuple = ()):
    size = path.stat().st_size
    src = shown(path)
    is_zip = path.suffix.lower() == ".zip" or (size <= limits.archive_bytes and zipfile.is_zipfile(path))
    if is_zip:
        if size > limits.archive_bytes:
            yield Item(src, path.name, folders, container,
                       error=f"archive is {_human(size)}, over the {_human(limits.archive_bytes)} limit: "
                             "split it into several archives")
            return
        yield from _iter_zip(path, limits)
        return
    if size > limits.notebook_bytes:
        yield Item(src, path.name, folders, container,
                   error=f"file is {_human(size)}, over the {_human(limits.notebook_bytes)} limit: clear the "
                         "notebook's outputs (Edit → Clear All Outputs) and resubmit")
        return
    if path.suffix.lower() != ".ipynb":
        yield Item(src, path.name, folders, container, error="not a .ipynb notebook or a .zip archive")
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        yield Item(src, path.name, folders, container, error=f"cannot be read ({e.strerror or e})")
        return
    yield Item(src, path.name, folders, container, data, siblings=siblings or (path.name,))


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its author wrote it: zip tools on Windows store UTF-8 names without the
    UTF-8 flag, which Python then decodes as cp437 (``zoë`` would read ``zo├½``)."""
    name = info.filename
    if not info.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name


def unsafe_member(name: str) -> str | None:
    """Why a member name cannot be trusted, or None."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "is an absolute path"
    if any(p == ".." for p in norm.split("/")):
        return "climbs out of the archive ('..')"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in norm):
        return "holds control characters"
    return None


def _skip_member(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return not parts or "__MACOSX" in parts or parts[-1].startswith(".")


def _iter_zip(path: Path, limits: Limits):
    src = shown(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, NotImplementedError) as e:
        yield Item(src, shown(path.name), error=f"not a readable zip archive ({clean_text(str(e), 200)})")
        return
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > limits.members:
            yield Item(src, shown(path.name), error=f"the archive holds {len(infos)} files, more than the "
                       f"{limits.members} allowed: split it into several archives")
            return
        budget = _Budget(limits.unpacked_bytes)
        found = False
        names = [(info, member_name(info)) for info in infos]
        by_folder: dict[str, list[str]] = {}
        for _, name in names:
            norm = name.replace("\\", "/")
            if norm.lower().endswith(".ipynb") and not _skip_member(name):
                folder, _, base = norm.rpartition("/")
                by_folder.setdefault(folder, []).append(base)
        for info, name in names:
            if _skip_member(name):
                continue
            siblings = tuple(by_folder.get(name.replace("\\", "/").rpartition("/")[0], ()))
            item = _zip_member(zf, info, name, path, limits, budget, siblings)
            if item is not None:
                found = True
                yield item
        if not found:
            yield Item(src, shown(path.name), error="the zip archive holds no .ipynb notebook")


def _zip_member(zf, info, name: str, path: Path, limits: Limits, budget: _Budget, siblings=()) -> Item | None:
    """One member as an :class:`Item` (None for files that are not notebooks and no concern)."""
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    src = f"{shown(path)}:{shown(norm)}"
    base = Item(src, parts[-1], tuple(parts[:-1]), str(path), siblings=siblings)
    why = unsafe_member(name)
    lower = norm.lower()
    if why:
        base.error = f"refused: the member's name {why}"
        return base
    if lower.endswith(".zip"):
        base.error = "a zip inside the zip is not opened: unpack it and collect the notebooks it holds"
        return base
    if not lower.endswith(".ipynb"):
        return None  # PDFs, images, a student's .py files: not notebooks, not handed in for grading
    if info.file_size > limits.notebook_bytes:
        base.error = (f"notebook is {_human(info.file_size)} unpacked, over the "
                      f"{_human(limits.notebook_bytes)} limit: clear its outputs and resubmit")
        return base
    if budget.exhausted or info.file_size > budget.left:
        budget.exhausted = True
        base.error = (f"not read: the archive unpacks to more than {_human(limits.unpacked_bytes)} in all "
                      "(a zip bomb?); collect the rest from a smaller archive")
        return base
    try:
        with zf.open(info) as fh:  # read with a cap: a member may unpack to more than it declares
            data = fh.read(min(limits.notebook_bytes, budget.left) + 1)
    except Exception as e:  # corrupt member, encrypted, bad CRC, unsupported compression…
        base.error = f"cannot read this zip member ({clean_text(str(e), 200) or type(e).__name__})"
        return base
    budget.left -= len(data)
    if len(data) > limits.notebook_bytes:
        base.error = f"notebook unpacks to more than the {_human(limits.notebook_bytes)} limit"
        return base
    if budget.left < 0:
        budget.exhausted = True
        base.error = f"not read: the archive unpacks to more than {_human(limits.unpacked_bytes)} in all"
        return base
    base.data = data
    return base


# ---------------------------------------------------------------------------------------------
# notebook JSON
# ---------------------------------------------------------------------------------------------
def _fix_str(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:  # lone surrogates (JSON "\udc80" escapes): not writable as UTF-8
        return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def checked_tree(raw, max_depth: int):
    """``raw`` with every string (keys too) writable as UTF-8, or ValueError when it nests deeper
    than ``max_depth``. Iterative: the check itself cannot run out of stack."""
    root = [raw]
    stack = [(root, 0, 0)]  # (container, key, depth of the value at container[key])
    while stack:
        parent, key, depth = stack.pop()
        value = parent[key]
        if depth > max_depth:
            raise ValueError(f"the notebook's JSON nests more than {max_depth} levels deep (a notebook needs about "
                             "10): the file was not written by Jupyter; download the notebook again and resubmit")
        if isinstance(value, str):
            parent[key] = _fix_str(value)
        elif isinstance(value, dict):
            if any(isinstance(k, str) and _fix_str(k) != k for k in value):
                value = {_fix_str(k): v for k, v in value.items()}
                parent[key] = value
            stack.extend((value, k, depth + 1) for k in value)
        elif isinstance(value, list):
            stack.extend((value, i, depth + 1) for i in range(len(value)))
    return root[0]


def parse_notebook(data: bytes, limits: Limits = Limits()) -> nbformat.NotebookNode:
    """The notebook in ``data``, or ValueError with a message a student can act on."""
    if data[:4] == b"PK\x03\x04":
        raise ValueError("a zip archive named .ipynb: unpack it, or rename it to .zip")
    if data[:5] == b"%PDF-":
        raise ValueError("a PDF, not a notebook: upload the .ipynb file itself (File → Download .ipynb)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("not a text file (binary data): upload the .ipynb file itself, not a PDF or screenshot")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid notebook JSON (line {e.lineno}, column {e.colno}: {e.msg}): the file is "
                         "damaged; download the notebook again (File → Download .ipynb) and resubmit")
    except RecursionError:
        raise ValueError("the notebook's JSON nests too deeply to read: the file was not written by Jupyter; "
                         "download the notebook again and resubmit")
    except ValueError as e:  # e.g. an integer of thousands of digits
        raise ValueError(f"not valid notebook JSON ({clean_text(str(e), 240)}): download the notebook again and "
                         "resubmit")
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise ValueError("JSON but not a Jupyter notebook (no 'cells' list)")
    if len(raw["cells"]) > limits.cells:
        raise ValueError(f"the notebook has {len(raw['cells'])} cells, more than {limits.cells}: "
                         "submit the notebook you were given")
    raw = checked_tree(raw, limits.depth)
    try:
        nb = nbformat.reads(json.dumps(raw), as_version=4)
        nbformat.validate(nb)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"not a valid Jupyter notebook ({clean_text(first, 200)}): re-download it from Jupyter/Colab")
    return nb
