"""Who handed a notebook in: student ids, and where ``collect`` takes them from.

**The rule for a student id.** After Unicode NFC normalisation and trimming, an id is 1 to
:data:`MAX_ID` characters of letters of any script (``zoë``, ``José``, ``李``, with their combining
marks), decimal digits, ``.``, ``_`` and ``-``; it starts with a letter or a digit and holds no
``..``. So it can never name another folder (no ``/``, ``\\``, ``..``), never holds control
characters, spaces or glob characters, and is the same id however the LMS encoded its accents
(NFC: ``e`` + combining acute and ``é`` are one id). Case is kept: ``Alice`` and ``alice`` are two
ids, as on the LMS.

**Where the id comes from** (first that applies; see :func:`decide`):

1. ``--student ID``, given by the instructor;
2. an LMS folder: Moodle's ``<Full Name>_<number>_assignsubmission_file_/`` (the name, spaces as
   ``_``);
3. the innermost plain folder of a zip or folder (nbgrader's ``<student>/<assignment>.ipynb`` and
   ``<student>/<assignment>/<assignment>.ipynb``, an LMS's per-student folders), not counting
   folders named after an assignment, generic ones (``submitted``, ``submissions``…), the
   archive's own name, and folders whose notebooks' file names name several students (a wrapper
   such as ``export/alice_01….ipynb, export/bob_01….ipynb``);
4. the file name: Canvas ``<name>_<user id>_<submission id>_<original name>``, or
   ``<student>_<assignment>.ipynb`` / ``<assignment>_<student>.ipynb``;
5. the notebook's metadata ``effilab.student_id`` — only when nothing above names anyone (a loose
   file called ``download.ipynb``).

A folder beats the file name inside it because the LMS names the folder and the student names the
file: ``mallory/bob_01_float_formats.ipynb`` is mallory's. Metadata is written by whoever edited
the notebook last, so it never decides against the LMS. Either disagreement is *flagged* in the
collect report (the notebook is still filed under the identity used, never under the one named).
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

MAX_ID = 64
GENERIC_FOLDERS = frozenset({"submitted", "submissions", "submission", "downloads", "download", "notebooks",
                             "assignments", "assignment", "homework", "files", "export", "autograded"})
MOODLE = re.compile(r"^(?P<name>.+?)_(?P<num>\d+)_assignsubmission_[a-z]+_?$")
NOT_NAMES = frozenset({"late", "submission", "copy"})

ID_RULE = ("letters of any alphabet, digits, '.', '_' and '-'; starting with a letter or digit; no '..'; "
           f"at most {MAX_ID} characters")


def _allowed(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] in "LM" or cat == "Nd" or ch in "._-"


def check_student_id(raw) -> str:
    """The id in ``raw``, NFC-normalised, or ValueError saying what is wrong (see the module doc)."""
    if not isinstance(raw, str):
        raise ValueError(f"a student id must be text, not {type(raw).__name__}")
    sid = unicodedata.normalize("NFC", raw).strip()
    if not sid:
        raise ValueError("the student id is empty")
    shown = sid[:80].encode("unicode_escape").decode("ascii") if not sid.isprintable() else sid[:80]
    if len(sid) > MAX_ID:
        raise ValueError(f"student id {shown!r}… is {len(sid)} characters long (at most {MAX_ID})")
    bad = sorted({ch for ch in sid if not _allowed(ch)})
    if bad:
        names = ", ".join(repr(ch) if ch.isprintable() and not ch.isspace() else f"U+{ord(ch):04X}" for ch in bad[:5])
        raise ValueError(f"student id {shown!r} holds characters an id may not: {names}")
    if unicodedata.category(sid[0])[0] not in "LN":
        raise ValueError(f"student id {shown!r} must start with a letter or a digit")
    if ".." in sid:
        raise ValueError(f"student id {shown!r} holds '..'")
    return sid


def same_person(a: str | None, b: str | None) -> bool:
    """Whether two ids name the same student (NFC and case-insensitive: ``Alice`` is ``alice``)."""
    if not a or not b:
        return True
    norm = lambda s: unicodedata.normalize("NFC", str(s)).strip().casefold().replace(" ", "_")  # noqa: E731
    return norm(a) == norm(b)


def from_file_name(name: str, assignment: str) -> str | None:
    """The student a file name gives (see the module doc), or None when it names no one."""
    stem = PurePosixPath(name).stem
    stem = re.sub(r"\s*\(\d+\)$", "", stem)  # browser duplicates: "01_float_formats (1)"
    if assignment not in stem:
        return None
    rest = stem.replace(assignment, " ")
    if any(unicodedata.category(ch) == "Cc" for ch in rest):
        return stem  # a control character is no separator: the id check refuses the name as it is
    tokens = [t for t in re.split(r"[ _\-]+", rest) if t and t.lower() not in NOT_NAMES]
    if not tokens:
        return None
    # Canvas: <name>_<user id>_<submission id>_<original file name> → the leading name
    if len(tokens) >= 3 and tokens[1].isdigit() and tokens[2].isdigit():
        return tokens[0]
    return "_".join(tokens)


def from_moodle_folder(folders: tuple[str, ...]) -> str | None:
    """The name of a Moodle submission folder among ``folders`` (innermost first), if any."""
    for f in reversed(folders):
        m = MOODLE.match(f)
        if m:
            return re.sub(r" +", "_", m.group("name").strip(" "))
    return None


def from_plain_folder(folders: tuple[str, ...], assignments, container: str = "") -> str | None:
    """The innermost folder that can be a student's: not an assignment's, not a generic name, not
    the archive's own name (a zip ``subs.zip`` often unpacks into ``subs/``)."""
    own = PurePosixPath(container).stem.casefold() if container else ""
    for f in reversed(folders):
        low = f.casefold()
        if any(a in f for a in assignments) or low in GENERIC_FOLDERS or low == own:
            continue
        return re.sub(r" +", "_", f.strip(" "))
    return None


def is_wrapper(siblings, assignment: str) -> bool:
    """Whether a folder holding the notebooks ``siblings`` holds several students' work."""
    named = {from_file_name(n, assignment) for n in siblings} - {None}
    return len({unicodedata.normalize("NFC", n).casefold() for n in named}) >= 2


def decide(*, override: str | None, folders: tuple[str, ...], name: str, assignment: str, assignments,
           container: str = "", metadata_id=None, siblings=()) -> tuple[str | None, str, list[str]]:
    """(raw student id or None, where it came from, flags for the report) — see the module doc.

    ``siblings``: the file names of the notebooks in the same folder (to recognise a wrapper)."""
    moodle = from_moodle_folder(folders)
    by_name = from_file_name(name, assignment)
    plain = None if is_wrapper(siblings, assignment) else from_plain_folder(folders, assignments, container)
    folder = moodle or plain
    meta = str(metadata_id).strip() if isinstance(metadata_id, (str, int)) and str(metadata_id).strip() else None
    if override:
        sid, how = override, "--student"
    elif moodle:
        sid, how = moodle, "LMS folder"
    elif plain:
        sid, how = plain, "folder"
    elif by_name:
        sid, how = by_name, "file name"
    elif meta:
        sid, how = meta, "notebook metadata"
    else:
        return None, "", []
    flags = []
    if folder and by_name and not same_person(folder, by_name):
        flags.append(f"the file name names {by_name!r} but its folder names {folder!r}: filed under {sid!r}")
    if meta and how != "notebook metadata" and not same_person(meta, sid):
        flags.append(f"its metadata effilab.student_id names {meta!r}: filed under {sid!r} (from the {how}), "
                     f"not under {meta!r} — check whether it is a copy of someone else's notebook")
    return sid, how, flags
