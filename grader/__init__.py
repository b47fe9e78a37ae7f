"""The instructor's side of effilab: nbgrader course configuration and ``python -m grader``."""
