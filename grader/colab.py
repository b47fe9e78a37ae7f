"""Colab in the student edition: an "Open in Colab" badge and an install cell at the top of every
notebook (``python -m grader publish OUT --colab OWNER/REPO[@BRANCH]``).

The install cell acts only inside Colab (``google.colab`` imported): it clones the student edition
once (running it again keeps the clone), installs its dependencies with pip and puts the clone on
``sys.path``, so ``import effilab`` works without restarting the session. Anywhere else — JupyterLab,
nbgrader's run and the grader's sandbox — it does nothing. Neither cell carries nbgrader metadata:
the grader treats them as cells of the student's own, which define nothing an exercise uses.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
CLONE = "effilab-course"  # the folder the clone lands in, beside the notebook (/content in Colab)

INSTALL = '''\
# Colab only: installs the course the first time (elsewhere this cell does nothing).
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    if not os.path.isdir("{clone}"):  # running this cell again keeps the clone
        subprocess.run(["git", "clone", "-q", "--branch", "{branch}", "https://github.com/{repo}", "{clone}"],
                       check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "{clone}"], check=True)
    if os.path.abspath("{clone}") not in sys.path:  # importable now: no restart of the session needed
        sys.path.insert(0, os.path.abspath("{clone}"))
'''


def parse(spec: str) -> tuple[str, str]:
    """``OWNER/REPO[@BRANCH]`` → (repo, branch); a clear error for anything else."""
    repo, _, branch = spec.strip().partition("@")
    branch = branch or "main"
    if not REPO.match(repo) or not BRANCH.match(branch) or ".." in branch:
        raise SystemExit(f"error: --colab wants OWNER/REPO or OWNER/REPO@BRANCH of the student edition on GitHub, "
                         f"got {spec!r}")
    return repo, branch


def badge(repo: str, branch: str, notebook: str) -> str:
    url = f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{notebook}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def add_to(path: Path, repo: str, branch: str) -> None:
    """Put the badge and the install cell first in the notebook at ``path`` (in place)."""
    nb = nbformat.read(str(path), as_version=4)
    cells = [nbformat.v4.new_markdown_cell(badge(repo, branch, path.name)),
             nbformat.v4.new_code_cell(INSTALL.format(repo=repo, branch=branch, clone=CLONE))]
    for c in cells:
        c.metadata["tags"] = ["colab"]
    nb.cells = cells + nb.cells
    nbformat.write(nb, str(path))
