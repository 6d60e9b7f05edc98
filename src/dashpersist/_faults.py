"""Named fault points in the save paths, for crash and I/O-error tests.

Production code calls ``faultpoint("after_temp_fsync")`` at each step of a save. It does
nothing unless the environment variable ``DASHPERSIST_FAULTPOINTS`` names the point, e.g.
``DASHPERSIST_FAULTPOINTS="after_temp_fsync=kill"`` (SIGKILL this process there),
``=raise:ENOSPC`` or ``=raise:EIO`` (raise that `OSError`). Several points are separated
by commas. The variable is read once, at import, so the check costs one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["FAULTPOINTS_ENV", "active_faultpoints", "faultpoint"]

FAULTPOINTS_ENV = "DASHPERSIST_FAULTPOINTS"


def _parse(spec: str) -> dict[str, str]:
    actions: dict[str, str] = {}
    for item in spec.split(","):
        name, _, action = item.strip().partition("=")
        if name:
            actions[name] = action or "kill"
    return actions


_ACTIONS = _parse(os.environ.get(FAULTPOINTS_ENV, ""))


def active_faultpoints() -> dict[str, str]:
    """Return the fault points this process was started with, and their actions."""
    return dict(_ACTIONS)


def faultpoint(name: str) -> None:
    """Fail here if the environment asks for it; otherwise do nothing."""
    if not _ACTIONS:
        return
    action = _ACTIONS.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("raise:"):
        code_name = action.removeprefix("raise:")
        code = getattr(errno, code_name, errno.EIO)
        raise OSError(code, f"{os.strerror(code)} (fault point {name})")
