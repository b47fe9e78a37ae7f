"""Where an exercise's inputs come from: fixed seeds for the self-check, a keyed hash for the grade.

* The **public** suite (the check cell under an exercise) draws its inputs from seeds 0, 1, 2…:
  a student can rerun a failing case by hand.
* The **hidden** suite (the grader's) derives every seed from the course secret with a keyed hash,
  HMAC-SHA256(secret, "exercise/tag/i") mod 2⁴⁰. HMAC is a pseudo-random function: a seed that a
  report or the student's own code shows tells nothing about the secret or about any other seed,
  so the generators that ship with the student edition cannot rebuild the other hidden inputs.
  (The seeds used to be ``base + i`` with ``base`` an affine function of the secret: one printed
  seed gave them all away.)
* A hidden seed prints as ``#i`` (its index), never as its value: case labels carry no seed.

The secret never leaves the grader's own process: the sandbox receives the inputs, built there.
"""
from __future__ import annotations

import hashlib
import hmac

__all__ = ["Key", "Seed", "case_seeds", "N_CASE_SEEDS", "SEED_BITS"]

N_CASE_SEEDS = 5  # every group of an exercise runs its cases on at least this many seeds
SEED_BITS = 40  # seeds stay below 2**40, well inside what any torch generator takes


class Seed(int):
    """A seed that prints as its index (``#3``) when it is a hidden one."""

    index: int
    hidden: bool

    def __new__(cls, value: int, index: int, hidden: bool):
        s = super().__new__(cls, value)
        s.index, s.hidden = index, hidden
        return s

    def __reduce__(self):
        return (Seed, (int(self), self.index, self.hidden))

    def __str__(self) -> str:
        return f"#{self.index}" if self.hidden else int.__repr__(self)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return str(self) if not spec or self.hidden else format(int(self), spec)


class Key:
    """The source of one exercise's inputs: ``Key.public()`` or ``Key.hidden(secret, exercise)``."""

    def __init__(self, suite: str, secret: bytes = b"", exercise: str = ""):
        if suite not in ("public", "hidden"):
            raise ValueError(f"suite is 'public' or 'hidden', not {suite!r}")
        self.suite, self._secret, self.exercise = suite, bytes(secret), exercise

    @classmethod
    def public(cls) -> "Key":
        return cls("public")

    @classmethod
    def hidden(cls, secret: bytes | str | int, exercise: str = "") -> "Key":
        if isinstance(secret, int):
            secret = str(secret)
        if isinstance(secret, str):
            secret = secret.encode()
        if not secret:
            raise ValueError("a hidden key needs a non-empty secret")
        return cls("hidden", secret, exercise)

    def for_exercise(self, exercise: str) -> "Key":
        return Key(self.suite, self._secret, exercise)

    def derive(self, tag: str) -> int:
        """One number in [0, 2**40) for ``tag``: 0 for the public suite's first draw, else a keyed hash."""
        if self.suite == "public":
            return 0
        msg = f"{self.exercise}/{tag}".encode()
        return int.from_bytes(hmac.new(self._secret, msg, hashlib.sha256).digest()[:8], "big") % (1 << SEED_BITS)

    def seeds(self, n: int = N_CASE_SEEDS, tag: str = "") -> list[Seed]:
        if self.suite == "public":
            return [Seed(i, i, False) for i in range(n)]
        return [Seed(self.derive(f"{tag}/{i}"), i, True) for i in range(n)]

    def __repr__(self) -> str:  # never shows the secret
        return f"Key({self.suite!r}, exercise={self.exercise!r})"


def case_seeds(suite_or_key: "str | Key", key: "Key | int | None" = None, n: int = N_CASE_SEEDS,
               tag: str = "") -> list[Seed]:
    """The seeds a group draws its inputs from: ``case_seeds(suite, key)`` as the specs call it.

    ``key`` is a :class:`Key`, or an int (a test's stand-in for a course secret)."""
    if isinstance(suite_or_key, Key):
        return suite_or_key.seeds(n, tag)
    if suite_or_key == "public":
        return Key.public().seeds(n, tag)
    if isinstance(key, Key):
        return key.seeds(n, tag)
    return Key.hidden(int(key or 0) + 1).seeds(n, tag)
