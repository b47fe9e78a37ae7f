"""envcheck sees what a submission could leave behind in the grading environment — a new .pth, a
changed sitecustomize.py, a reinstalled package, a new script in bin/ — and nothing when nothing
changed."""
import os
import sys

import pytest

from grader.envcheck import Snapshot, changed, default_roots, snapshot


@pytest.fixture
def env(tmp_path):
    site = tmp_path / "site-packages"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("")
    (site / "pkg-1.0.dist-info").mkdir()
    (site / "pkg-1.0.dist-info" / "RECORD").write_text("pkg/__init__.py,,\n")
    (site / "distutils-precedence.pth").write_text("import os\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").write_text("#!/bin/sh\n")
    return site, bindir


def _snap(env):
    site, bindir = env
    return snapshot(roots=[str(site), str(site.parent / "user-site")], bins=[str(bindir)])


def test_nothing_changed_is_an_empty_list(env):
    assert changed(_snap(env), _snap(env)) == []


def test_a_new_pth_file_is_seen(env):
    before = _snap(env)
    (env[0] / "evil.pth").write_text("import sys; sys.modules['torch'] = None\n")
    assert changed(before, _snap(env)) == [f"new file: {env[0] / 'evil.pth'}"]


def test_changed_and_removed_files_and_a_reinstall_are_seen(env):
    site, bindir = env
    before = _snap(env)
    (site / "distutils-precedence.pth").write_text("import os; os.system('x')\n")
    (site / "pkg-1.0.dist-info" / "RECORD").write_text("pkg/__init__.py,sha256=abc,10\n")
    (bindir / "pip-evil").write_text("#!/bin/sh\n")
    (site / "sitecustomize.py").write_text("print('hi')\n")
    (site.parent / "user-site").mkdir()  # pip install --user creates it
    os.remove(bindir / "python")
    found = changed(before, _snap(env))
    text = "\n".join(found)
    assert f"changed file: {site / 'distutils-precedence.pth'}" in text
    assert f"changed file: {site / 'pkg-1.0.dist-info' / 'RECORD'}" in text
    assert f"new file: {bindir / 'pip-evil'}" in text
    assert f"new file: {site / 'sitecustomize.py'}" in text
    assert f"new dir: {site.parent / 'user-site'}" in text
    assert f"removed file: {bindir / 'python'}" in text


def test_bytecode_written_on_import_is_not_a_change(env):
    site, _ = env
    before = _snap(env)
    (site / "__pycache__").mkdir()
    (site / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (site / "pkg" / "__pycache__").mkdir()  # changes pkg/'s mtime, which is not watched
    assert changed(before, _snap(env)) == []


def test_the_real_environment_is_watched_and_stable():
    roots = default_roots()
    assert any(r.endswith("site-packages") for r in roots)
    a = snapshot()
    b = snapshot()
    assert changed(a, b) == []
    assert any(p.endswith(".dist-info") for entries in a.entries.values() for p in entries)
    assert os.path.dirname(sys.executable) in a.roots or any(r.endswith(os.sep + "bin") for r in a.roots)


def test_changed_needs_two_snapshots():
    with pytest.raises(TypeError, match="snapshot"):
        changed({}, Snapshot())
