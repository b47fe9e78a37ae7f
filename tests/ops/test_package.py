"""Packaging rules of effilab.ops: instructor-only markers and a student edition without them."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

OPS = pathlib.Path(__file__).resolve().parents[2] / "effilab" / "ops"
MARKER = "# effilab: instructor-only"
INSTRUCTOR_ONLY = ["rmsnorm.py", "swiglu.py", "cross_entropy.py", "flash_attention.py", "flash_attention_bwd.py"]
PUBLIC = ["softmax.py", "layernorm.py", "cuda_rmsnorm.py", "modules.py", "__init__.py", "_utils.py"]


def test_markers():
    for name in INSTRUCTOR_ONLY:
        path = OPS / name
        if path.exists():  # absent in the student edition
            assert path.read_text().splitlines()[0] == MARKER, name
    from effilab.grading.instructor import is_instructor_only

    for name in PUBLIC:  # the rule the editions use: a line that is only the marker, in the first lines
        assert not is_instructor_only(OPS / name), name


def test_student_edition_imports(tmp_path):
    """Copy effilab/ without the instructor-only files; effilab.ops must still import."""
    src = OPS.parent
    dst = tmp_path / "effilab"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for name in INSTRUCTOR_ONLY:
        (dst / "ops" / name).unlink(missing_ok=True)
    code = (
        "import effilab.ops as o, effilab.ops.modules as m\n"
        "assert o.__file__.startswith(%r), o.__file__\n"
        "assert 'softmax' in o.__all__ and 'rms_norm' not in o.__all__\n"
        "assert not hasattr(o, 'flash_attention')\n"
        "try:\n"
        "    m.RMSNorm(8)(__import__('torch').randn(2, 8))\n"
        "except ImportError as e:\n"
        "    assert 'notebook 08' in str(e)\n"
        "else:\n"
        "    raise SystemExit('expected ImportError')\n"
        "print('ok')\n"
    ) % str(dst)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
