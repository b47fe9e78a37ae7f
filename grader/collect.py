"""``python -m grader collect PATH…``: take submissions in, as students and LMSs hand them over.

Accepted inputs: loose ``.ipynb`` files, ``.zip`` archives (an LMS bulk download, a Colab
download, nbgrader's ``<student>/<assignment>.ipynb`` layout), and folders of either.

For each notebook the collector decides
* the **assignment**, from the notebook's nbgrader grade ids (the cells say which assignment they
  belong to), falling back to an assignment id in the file name;
* the **student**, from notebook metadata ``effilab.student_id``, else the folder inside a zip,
  else the file name (``alice_01_float_formats.ipynb``, ``01_float_formats_alice.ipynb``,
  ``alice_12345_67890_01_float_formats.ipynb`` as Canvas names them), else ``--student``.

A file that is not a readable notebook is rejected with a line that says what is wrong and what
to do; it is never modified or moved. An accepted notebook is *copied* to
``course/submitted/<student>/<assignment>/`` with a ``timestamp.txt``; a previous submission of the
same student and assignment is first moved to ``course/archive/`` — nothing is lost.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .course import Course

MAX_BYTES = 50 * 1024 * 1024  # a notebook of this course is < 1 MB without outputs
STUDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Item:
    source: str  # where it came from, for the report ("subs.zip:bob/01.ipynb")
    name: str  # file name
    folder: str | None  # top folder inside a zip, if any
    data: bytes | None
    error: str | None = None


@dataclass
class Outcome:
    source: str
    ok: bool
    message: str
    student: str | None = None
    assignment: str | None = None


def _iter_items(path: Path, max_bytes: int):
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix.lower() in (".ipynb", ".zip") and not p.name.startswith("."):
                yield from _iter_items(p, max_bytes)
        return
    if not path.exists():
        yield Item(str(path), path.name, None, None, "no such file")
        return
    size = path.stat().st_size
    if size > max_bytes:
        yield Item(str(path), path.name, None, None,
                   f"file is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit: clear the notebook's "
                   "outputs (Edit → Clear All Outputs) and resubmit")
        return
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            yield Item(str(path), path.name, None, None, f"not a readable zip archive ({e})")
            return
        with zf:
            entries = [i for i in zf.infolist() if not i.is_dir() and i.filename.lower().endswith(".ipynb")
                       and "__MACOSX" not in i.filename and not Path(i.filename).name.startswith(".")]
            if not entries:
                yield Item(str(path), path.name, None, None, "the zip archive holds no .ipynb notebook")
                return
            for info in entries:
                src = f"{path}:{info.filename}"
                parts = Path(info.filename).parts
                folder = parts[-2] if len(parts) >= 2 else None
                if info.file_size > max_bytes:
                    yield Item(src, parts[-1], folder, None,
                               f"notebook is {info.file_size / 2**20:.0f} MiB unpacked, over the limit")
                    continue
                try:
                    with zf.open(info) as fh:
                        data = fh.read(max_bytes + 1)
                except Exception as e:  # corrupt member, encrypted, bad CRC…
                    yield Item(src, parts[-1], folder, None, f"cannot read this zip member ({e})")
                    continue
                yield Item(src, parts[-1], folder, data)
        return
    if path.suffix.lower() != ".ipynb":
        yield Item(str(path), path.name, None, None, "not a .ipynb notebook or a .zip archive")
        return
    yield Item(str(path), path.name, None, path.read_bytes())


def parse_notebook(data: bytes) -> nbformat.NotebookNode:
    """The notebook in ``data``, or ValueError with a message a student can act on."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not a text file (binary data): upload the .ipynb file itself, not a PDF or screenshot")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid notebook JSON (line {e.lineno}, column {e.colno}: {e.msg}): the file is "
                         "damaged; download the notebook again (File → Download .ipynb) and resubmit")
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise ValueError("JSON but not a Jupyter notebook (no 'cells' list)")
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"not a valid Jupyter notebook ({first[:200]}): re-download it from Jupyter/Colab")
    return nb


def grade_ids(nb) -> set[str]:
    ids = set()
    for cell in nb.cells:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid:
            ids.add(str(gid))
    return ids


def assignment_grade_ids(course: Course) -> dict[str, set[str]]:
    return {a: grade_ids(nbformat.read(str(course.solutions / f"{a}.ipynb"), as_version=4))
            for a in course.assignments()}


def identify_assignment(nb, name: str, known: dict[str, set[str]]) -> tuple[str | None, str]:
    """(assignment, how) from grade ids — the best overlap wins — else from the file name."""
    ids = grade_ids(nb)
    if ids:
        best = max(known, key=lambda a: len(ids & known[a]), default=None)
        if best and len(ids & known[best]) > 0:
            return best, "grade ids"
    for a in known:
        if a in name:
            return a, "file name"
    return None, ""


def identify_student(nb, item: Item, assignment: str, override: str | None) -> str | None:
    meta = nb.get("metadata", {}).get("effilab", {}) or {}
    if meta.get("student_id"):
        return str(meta["student_id"]).strip()
    if override:
        return override
    if item.folder and item.folder not in (assignment, "submitted"):
        return item.folder
    stem = Path(item.name).stem
    stem = re.sub(r"\s*\(\d+\)$", "", stem)  # browser duplicates: "01_float_formats (1)"
    rest = stem.replace(assignment, " ") if assignment in stem else stem
    tokens = [t for t in re.split(r"[\s_\-]+", rest) if t and t.lower() not in ("late", "submission")]
    if not tokens or rest == stem:
        return None
    # Canvas: <name>_<user id>_<submission id>_<original file name> → the leading name
    if len(tokens) >= 3 and tokens[1].isdigit() and tokens[2].isdigit():
        return tokens[0]
    return "_".join(tokens)


def collect(course: Course, paths: list[str], student: str | None = None, max_bytes: int = MAX_BYTES,
            log=print) -> list[Outcome]:
    course.prepare()
    known = assignment_grade_ids(course)
    outcomes: list[Outcome] = []
    stamp = _dt.datetime.now(_dt.timezone.utc)
    for p in paths:
        for item in _iter_items(Path(p), max_bytes):
            outcomes.append(_collect_one(course, item, known, student, stamp))
    accepted = sum(o.ok for o in outcomes)
    lines = [("OK       " if o.ok else "REJECTED ") + o.message for o in outcomes]
    lines.append(f"collect: {accepted} accepted, {len(outcomes) - accepted} rejected "
                 "(rejected files were left untouched)")
    report = "\n".join(lines)
    log(report)
    rep = course.path("reports")
    rep.mkdir(parents=True, exist_ok=True)
    (rep / f"collect-{stamp.strftime('%Y%m%dT%H%M%S%fZ')}.txt").write_text(report + "\n")
    return outcomes


def _collect_one(course: Course, item: Item, known, student_override, stamp) -> Outcome:
    if item.error:
        return Outcome(item.source, False, f"{item.source}: {item.error}")
    try:
        nb = parse_notebook(item.data)
    except ValueError as e:
        return Outcome(item.source, False, f"{item.source}: {e}")
    assignment, how = identify_assignment(nb, item.name, known)
    if assignment is None:
        return Outcome(item.source, False,
                       f"{item.source}: not a notebook of this course (none of its cells belongs to "
                       f"{', '.join(known)}); submit the notebook you were given")
    sid = identify_student(nb, item, assignment, student_override)
    if not sid:
        return Outcome(item.source, False,
                       f"{item.source}: cannot tell whose notebook this is; name the file "
                       f"<student>_{assignment}.ipynb or pass --student ID")
    if not STUDENT_RE.match(sid):
        return Outcome(item.source, False,
                       f"{item.source}: student id {sid!r} is not usable (letters, digits, '.', '_', '-'; "
                       "at most 64); rename the file or pass --student ID")
    dest = course.path("submitted", sid, assignment)
    if dest.exists():
        old = (dest / "timestamp.txt").read_text().strip() if (dest / "timestamp.txt").exists() else "unknown"
        safe = re.sub(r"[^0-9A-Za-z]", "", old) or "unknown"
        arch = course.path("archive", sid, assignment, f"{safe}-{stamp.strftime('%H%M%S%f')}")
        arch.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(dest), str(arch))
    dest.mkdir(parents=True)
    nbformat.write(nb, str(dest / f"{assignment}.ipynb"))
    (dest / "timestamp.txt").write_text(stamp.strftime("%Y-%m-%d %H:%M:%S.%f %Z") + "\n")
    return Outcome(item.source, True, f"{item.source}: {sid} / {assignment} (assignment from {how})", sid, assignment)

