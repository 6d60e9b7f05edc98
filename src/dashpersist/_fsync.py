"""Durability primitives shared by every file-based part (JSON folder, outbox, sidecars)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_folder"]

_FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def fsync_folder(folder: Path) -> None:
    """Make *folder*'s entries (a rename, a new or removed file) durable.

    A rename is only durable once the folder holding it is fsynced; raises `OSError`,
    which callers translate with the path they report.
    """
    fd = os.open(folder, _FOLDER_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
