"""collect against what students and LMSs really hand over: a hostile batch (every malformed kind
next to good notebooks) is collected as far as it can be, each bad file gets a line that says why,
and nothing crashes; identity comes from the LMS, never from what the student wrote."""
import json
import os
import zipfile
from pathlib import Path

import nbformat
import pytest

from grader.collect import collect
from grader.course import REPO, Course
from grader.identity import check_student_id, decide
from grader.intake import Limits, parse_notebook

A = "01_float_formats"
GOOD = (REPO / "grader" / "examples" / A / f"alice_{A}.ipynb").read_text()


def _nb(**meta) -> str:
    raw = json.loads(GOOD)
    raw["metadata"].update(meta)
    return json.dumps(raw)


def _quiet(*_):
    pass


def _by_source(outcomes):
    return {o.source.split(":", 1)[1] if ":" in o.source else Path(o.source).name: o for o in outcomes}


def _deep(depth: int) -> str:
    return '{"cells": [], "metadata": {"x": ' + "[" * depth + "]" * depth + '}, "nbformat": 4, "nbformat_minor": 5}'


def _string_metadata() -> str:
    raw = json.loads(GOOD)
    raw["metadata"]["effilab"] = "not a mapping"
    raw["metadata"]["nbgrader"] = "not a mapping"
    raw["cells"][3]["metadata"]["nbgrader"] = "not a mapping"
    raw["cells"][3]["metadata"]["effilab"] = "not a mapping"
    return json.dumps(raw)


def _surrogate() -> str:
    raw = json.loads(GOOD)
    raw["cells"][0]["source"] = "a lone surrogate: \udc80"
    return json.dumps(raw)  # json escapes it as \udc80, which decodes back to a lone surrogate


def _many_cells() -> str:
    raw = json.loads(GOOD)
    raw["cells"] = raw["cells"] * (Limits.cells // len(raw["cells"]) + 1)
    return json.dumps(raw)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    z = tmp / "lms_download.zip"
    good = {
        f"alice_12345_67890_{A}.ipynb": GOOD,                                 # Canvas naming
        f"zoë/{A}.ipynb": GOOD,                                               # a non-ASCII id
        f"李/{A}.ipynb": GOOD,
        f"José García_555_assignsubmission_file_/{A}.ipynb": GOOD,            # Moodle's folder
        f"henry/{A}/{A}.ipynb": GOOD,                                         # nbgrader's layout
        f"mallory/{A}.ipynb": _nb(effilab={"student_id": "alice"}),           # names a classmate
        f"ivan/{A}.ipynb": _string_metadata(),                                # wrong metadata types
        f"surrogate/{A}.ipynb": _surrogate(),
        f"bom/{A}.ipynb": "\ufeff" + GOOD,
    }
    bad = {
        f"deep/{A}.ipynb": _deep(100_000),                  # json.loads would recurse until it crashes
        f"deepish/{A}.ipynb": _deep(500),                   # parses, but deeper than any notebook
        f"bigint/{A}.ipynb": '{"cells": [], "x": ' + "9" * 5000 + "}",
        f"trunc/{A}.ipynb": GOOD[: len(GOOD) // 2],
        f"binary/{A}.ipynb": bytes(range(256)) * 8,
        f"manycells/{A}.ipynb": _many_cells(),
        f"../../escape/{A}.ipynb": GOOD,                    # path traversal
        f"/abs/{A}.ipynb": GOOD,
        f"bell\x07/{A}.ipynb": GOOD,                        # control characters in the name
        f"weird name!/{A}.ipynb": GOOD,                     # an unusable id
        f"a..b/{A}.ipynb": GOOD,
        "nested.zip": b"PK\x05\x06" + b"\0" * 18,
        f"bomb/{A}.ipynb": '{"cells": [], "pad": "' + " " * (Limits.notebook_bytes + 10) + '"}',
    }
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**good, **bad}.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        zf.writestr("__MACOSX/zoë/._x.ipynb", b"junk")
        zf.writestr("readme.pdf", b"%PDF-1.4")
    course = Course(root=tmp / "course")
    alice_first = tmp / f"alice_{A}.ipynb"
    alice_first.write_text(GOOD)
    collect(course, [str(alice_first)], log=_quiet)  # alice's own submission is in before the batch
    alice_stamp = course.path("submitted", "alice", A, "timestamp.txt").read_text()
    lines = []
    outcomes = collect(course, [str(z)], log=lines.append)
    return course, _by_source(outcomes), "\n".join(lines), good, bad, alice_stamp


def test_every_good_notebook_is_collected(batch):
    course, by, report, good, bad, _ = batch
    ok = {o.student for o in by.values() if o.ok}
    assert ok == {"alice", "zoë", "李", "José_García", "henry", "mallory", "ivan", "surrogate", "bom"}
    for sid in ok:
        nb = nbformat.read(str(course.path("submitted", sid, A, f"{A}.ipynb")), as_version=4)  # writable, valid
        nbformat.validate(nb)
    text = course.path("submitted", "surrogate", A, f"{A}.ipynb").read_text(encoding="utf-8")
    assert "\ufffd" in text  # the lone surrogate became U+FFFD instead of breaking the write


def test_every_bad_file_is_rejected_with_a_reason(batch):
    _, by, report, _, bad, _ = batch
    expect = {
        f"deep/{A}.ipynb": "nests too deeply",
        f"deepish/{A}.ipynb": "nests more than",
        f"bigint/{A}.ipynb": "not valid notebook JSON",
        f"trunc/{A}.ipynb": "not valid notebook JSON",
        f"binary/{A}.ipynb": "binary",
        f"manycells/{A}.ipynb": "cells, more than",
        f"../../escape/{A}.ipynb": "climbs out",
        f"/abs/{A}.ipynb": "absolute path",
        f"weird name!/{A}.ipynb": "not usable",
        f"a..b/{A}.ipynb": "'..'",
        "nested.zip": "zip inside the zip",
        f"bomb/{A}.ipynb": "limit",
    }
    for name, why in expect.items():
        o = by[name]
        assert not o.ok and why in o.message, (name, o.message)
    bell = [o for k, o in by.items() if k.startswith("bell")]
    assert len(bell) == 1 and not bell[0].ok and "control characters" in bell[0].message
    assert "\x07" not in report  # the report itself is clean
    assert "readme.pdf" not in report and "__MACOSX" not in report  # no noise for what is not a notebook
    assert report.count("REJECTED") == len(bad)


def test_a_notebook_naming_a_classmate_is_filed_under_its_lms_identity_and_flagged(batch):
    course, by, report, _, _, alice_stamp = batch
    m = by[f"mallory/{A}.ipynb"]
    assert m.ok and m.student == "mallory"
    assert any("'alice'" in f for f in m.flags)
    assert "FLAG" in report and "mallory" in report
    # alice's own submission was replaced only by her own (Canvas) file, never by mallory's
    assert by[f"alice_12345_67890_{A}.ipynb"].ok
    archived = list(course.path("archive", "alice", A).iterdir())
    assert len(archived) == 1
    assert (archived[0] / "timestamp.txt").read_text() == alice_stamp
    assert not course.path("archive", "mallory").exists()


def test_a_file_name_inside_a_student_folder_does_not_decide(tmp_path):
    z = tmp_path / "subs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"mallory/bob_{A}.ipynb", GOOD)  # the LMS named the folder, the student the file
        zf.writestr(f"export/carl_{A}.ipynb", GOOD)  # a wrapper folder holding several students' files
        zf.writestr(f"export/dora_{A}.ipynb", GOOD)
    out = collect(Course(root=tmp_path / "course"), [str(z)], log=_quiet)
    by = {o.student: o for o in out if o.ok}
    assert set(by) == {"mallory", "carl", "dora"}
    assert any("'bob'" in f for f in by["mallory"].flags)


def test_metadata_names_the_student_only_for_a_loose_file_with_no_other_identity(tmp_path):
    loose = tmp_path / "download.ipynb"
    loose.write_text(_nb(effilab={"student_id": "Zoë"}))
    named = tmp_path / f"bob_{A}.ipynb"
    named.write_text(_nb(effilab={"student_id": "alice"}))
    course = Course(root=tmp_path / "course")
    a, b = collect(course, [str(loose), str(named)], log=_quiet)
    assert a.ok and a.student == "Zoë" and not a.flags
    assert b.ok and b.student == "bob" and b.flags
    assert not course.path("submitted", "alice").exists()
    c, = collect(course, [str(loose)], student="jo", log=_quiet)  # the instructor's --student decides
    assert c.student == "jo" and c.flags


def test_total_unpacked_bytes_are_capped(tmp_path):
    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):
            zf.writestr(f"s{i}/{A}.ipynb", GOOD)
    limits = Limits(unpacked_bytes=3 * len(GOOD.encode()) + 10)
    out = collect(Course(root=tmp_path / "course"), [str(z)], limits=limits, log=_quiet)
    assert [o.ok for o in out] == [True, True, True, False, False, False]
    assert all("unpacks to more than" in o.message for o in out[3:])


def test_links_and_special_files_in_a_folder_are_not_followed(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "alice").mkdir(parents=True)
    secret = tmp_path / "solutions.ipynb"
    secret.write_text(GOOD)
    os.symlink(secret, inbox / "alice" / f"{A}.ipynb")
    os.mkfifo(inbox / f"fifo_{A}.ipynb")
    (inbox / "bob").mkdir()
    (inbox / "bob" / f"{A}.ipynb").write_text(GOOD)
    out = collect(Course(root=tmp_path / "course"), [str(inbox)], log=_quiet)
    assert sorted(o.student for o in out if o.ok) == ["bob"]
    link = [o for o in out if "alice" in o.source]
    assert link and "symbolic link" in link[0].message


@pytest.mark.parametrize("raw", ["zoë", "José", "李", "jo.smith", "a-b_c", "Zoe\u0308", "x" * 64])
def test_student_ids_accept_letters_of_any_alphabet(raw):
    sid = check_student_id(raw)
    assert sid == __import__("unicodedata").normalize("NFC", raw)


@pytest.mark.parametrize("raw, why", [("", "empty"), ("a/b", "'/'"), ("a\\b", "'\\\\'"), ("..", "start"),
                                      ("a..b", "'..'"), ("bell\x07", "U+0007"), ("two words", "U+0020"),
                                      ("x" * 65, "at most 64"), (".hidden", "start"), ("a*b", "'*'"),
                                      ("rtl\u202eevil", "U+202E"), (42, "text")])
def test_student_ids_refuse_what_could_name_another_folder(raw, why):
    with pytest.raises(ValueError, match=None) as e:
        check_student_id(raw)
    assert why in str(e.value), str(e.value)


def test_zoe_with_a_combining_accent_is_the_same_student(tmp_path):
    course = Course(root=tmp_path / "course")
    for name in ("zoë", "zoe\u0308"):  # precomposed, then decomposed (as macOS file names are)
        p = tmp_path / name / f"{name}_{A}.ipynb"
        p.parent.mkdir(exist_ok=True)
        p.write_text(GOOD)
        (o,) = collect(course, [str(p)], log=_quiet)
        assert o.ok and o.student == "zoë"
    assert course.submitted_students(A) == ["zoë"]
    assert len(list(course.path("archive", "zoë", A).iterdir())) == 1


def test_an_invalid_student_option_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--student"):
        collect(Course(root=tmp_path / "course"), [], student="../bob", log=_quiet)


def test_decide_prefers_the_lms_and_flags_disagreement():
    sid, how, flags = decide(override=None, folders=("Ann Lee_77_assignsubmission_file_",), name=f"bob_{A}.ipynb",
                             assignment=A, assignments=[A], metadata_id="carol")
    assert (sid, how) == ("Ann_Lee", "LMS folder") and len(flags) == 2
    assert decide(override=None, folders=(), name="x.ipynb", assignment=A, assignments=[A]) == (None, "", [])


def test_parse_notebook_reasons():
    with pytest.raises(ValueError, match="zip archive named"):
        parse_notebook(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="PDF"):
        parse_notebook(b"%PDF-1.7")
    with pytest.raises(ValueError, match="nests more than 3"):
        parse_notebook(_deep(3).encode(), Limits(depth=3))
    assert parse_notebook(("\ufeff" + GOOD).encode()).cells


def test_file_names_that_are_not_text_are_refused_and_reported_cleanly(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for raw in (b"\xff\xfe_" + A.encode() + b".ipynb", b"new\nline_" + A.encode() + b".ipynb",
                "zoë_".encode() + A.encode() + b".ipynb"):
        with open(os.fsencode(inbox) + b"/" + raw, "w") as fh:
            fh.write(GOOD)
    lines = []
    out = collect(Course(root=tmp_path / "course"), [str(inbox)], log=lines.append)
    assert sorted(o.student for o in out if o.ok) == ["zoë"]
    bad = [o for o in out if not o.ok]
    assert len(bad) == 2 and all("not usable" in o.message for o in bad)
    "\n".join(lines).encode("utf-8")  # the report is printable and writable
    assert "\n".join(lines).count("\n") == len(out)  # one line per file (a newline in a name is not kept)
