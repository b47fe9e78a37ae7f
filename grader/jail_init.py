"""The first program inside every jail (see :mod:`grader.jail`): it sets the resource limits, drops to
the sandbox's unprivileged user when the grader runs as root, checks that no privilege is left, and
only then replaces itself with the jailed program.

    python -I -S -B grader/jail_init.py SPEC_JSON -- PROGRAM [ARGS...]

Why a program of its own, inside the jail, instead of limits set by the grader before it starts bwrap:

* root is exempt from RLIMIT_NPROC, so when the grader is root the limit only bites after the switch
  to the sandbox uid — and bwrap needs root (outside a user namespace) to build the jail, so the
  switch can only happen inside, after the mounts (the role ``setpriv`` plays in other sandboxes);
* as a normal user the jail has its own user namespace, and the kernel counts RLIMIT_NPROC per user
  namespace: set inside it, the limit counts the jail's tasks only, not every process the
  instructor's account runs on the machine (set on bwrap itself it would count those too).

``-I -S -B`` keep this step free of anything the environment, a ``.pth`` file or a user site could
inject: only the standard library runs here. Standard library only, no imports from the grader.
"""
from __future__ import annotations

import json
import os
import resource
import sys

CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


def set_limits(limits: dict[str, int]) -> None:
    """Set soft and hard limit of each ``RLIMIT_*`` to the value asked for (never above the current
    hard limit, which an unprivileged process cannot raise): the hard limit too, so the jailed
    program cannot raise its soft limit back."""
    for name, value in limits.items():
        which = getattr(resource, name)
        _, hard = resource.getrlimit(which)
        v = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (v, v))


def drop_user(uid: int, gid: int) -> None:
    """Become ``uid:gid`` with no supplementary groups, for good (real, effective and saved ids):
    the kernel then clears every capability, and RLIMIT_NPROC applies (it does not to root)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError(f"could not switch to uid {uid} / gid {gid}")


def check_unprivileged() -> None:
    """Refuse to go on with any capability left, or without no_new_privs (set by bwrap: setuid
    binaries inside the jail, e.g. /usr/bin/su, then cannot raise privileges again)."""
    with open("/proc/self/status") as fh:
        status = dict(line.split(":", 1) for line in fh if ":" in line)
    caps = {k: int(status.get(k, "0").strip(), 16) for k in CAP_FIELDS}
    if any(caps.values()):
        raise OSError(f"capabilities left in the jail: {caps}")
    if status.get("NoNewPrivs", "0").strip() != "1":
        raise OSError("no_new_privs is not set in the jail (is this really bubblewrap?)")


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: jail_init.py SPEC_JSON -- PROGRAM [ARGS...]\n")
        return 2
    spec = json.loads(argv[1])
    program = argv[3:]
    try:
        set_limits(spec.get("limits", {}))
        if spec.get("uid") is not None:
            drop_user(int(spec["uid"]), int(spec["gid"]))
        check_unprivileged()
        os.umask(0o022)
        os.chdir(spec.get("cwd", "/"))  # after the switch: the folder may be the sandbox uid's own (0700)
    except OSError as exc:
        sys.stderr.write(f"effilab jail: could not set up the sandbox: {exc}\n")
        return 126
    try:
        os.execvp(program[0], program)
    except OSError as exc:
        sys.stderr.write(f"effilab jail: cannot run {program[0]!r} inside the sandbox: {exc}\n")
        return 127
    return 127  # not reached: execvp does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv))
