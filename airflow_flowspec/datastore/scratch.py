"""Scratch files: where a pickle or a download waits before it becomes (or after it was) a blob.

A task can be killed at any instant (SIGKILL, an out-of-memory kill, a Batch job terminated), and
nothing runs after that to clean up. So every scratch file is made in one known folder (the local
store's ``.tmp/`` under its root, or ``[flowspec] scratch_dir`` for S3) and named after its
owner: ``flowspec-<host>-<pid>-<random><suffix>``. Whoever opens a datastore later sweeps the
folder: files of this host whose process is gone are removed at once; any file (another host's on
a shared network folder, or one whose pid was reused) once it is older than ``[flowspec]
sweep_after_hours``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import time

PREFIX = "flowspec-"
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"
_NAME = re.compile(r"flowspec-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[0-9a-f]+(\.[A-Za-z0-9]+)*")


def scratch_path(folder: str, suffix: str = ".tmp") -> str:
    """A new, unused path in ``folder`` owned by this process (the folder is created if needed)."""
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{PREFIX}{_HOST}-{os.getpid()}-{secrets.token_hex(8)}{suffix}")


def sweep(folder: str, *, other_hosts_after_seconds: float) -> list[str]:
    """Remove scratch files (and folders) left behind by processes that are gone; return the paths
    removed.

    Only names this module makes are touched; anything else in the folder is left alone.
    """
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    now = time.time()
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None or entry.is_symlink():
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > other_hosts_after_seconds
        except FileNotFoundError:
            continue
        # Same host: gone when its process is (or when old: the pid may have been reused).
        abandoned = old or (match["host"] == _HOST and not _alive(int(match["pid"])))
        if abandoned:
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.path)
            except OSError:
                pass  # gone already, or another user's: not this sweep's to stop
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
