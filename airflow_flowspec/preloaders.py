"""This user's live preloaders: what the cap on them counts and ``airflow-flowspec preloaders`` lists.

There is a preloader (:mod:`airflow_flowspec.airflow.preloader`) per Python and Airflow
environment a user runs flows from, about 180 MB each, so they add up. Each registers beside its
socket, in the folder only its user can open (:func:`..preload.private_folder`):
``<fingerprint>.json`` says which process serves ``<fingerprint>.sock`` and for which callers, and
its modification time is when that preloader last took a run. A preloader that starts makes room
before it serves: it counts the live ones and asks the least recently used to exit until it is one
of at most ``[flowspec] preload_max_count``. It counts and registers holding a lock on
:data:`LOCK_NAME` (``fcntl``), so two that start together take turns, and the second counts the
first.

Only a registration whose process still runs, is still the process that registered (a pid is
reused), and still owns its socket (``--replace`` takes a socket over) is a live preloader. Any
other one was left by a preloader that died without cleaning up (killed, or its machine slept
through it): it does not count, and it is removed, with its socket when that is still the dead
one's. A preloader asked to exit (:data:`STOP_SIGNAL`) stops taking runs, removes its socket and
registration, and exits; the runs it started go on to their end, each under a supervisor process
of its own. Imports no Airflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What asks a preloader to exit cleanly (it removes its socket and registration first).
STOP_SIGNAL = signal.SIGUSR1
#: The lock every count and registration holds, in the preloaders' folder.
LOCK_NAME = "preloaders.lock"
#: How long ``stop`` waits for preloaders to exit (each notices within a second).
_STOP_SECONDS = 10.0


@dataclass(frozen=True)
class Registration:
    """One preloader as it registered: who serves which socket, since when, for which callers."""

    path: Path
    pid: int
    #: The kernel's start time of the process (``/proc/<pid>/stat``), telling it from a later
    #: process given the same pid; None where there is no ``/proc``.
    process_start: str | None
    started: float
    socket: Path
    socket_inode: int
    serves: str
    #: When it last took a run (or registered).
    last_used: float

    def memory_bytes(self) -> int | None:
        """Its resident memory, or None where ``/proc`` does not say."""
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None


def registration_path(socket_path: Path) -> Path:
    return socket_path.with_suffix(".json")


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """Hold the preloaders' lock: counting, evicting and registering are one step for each."""
    descriptor = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def register(socket_path: Path, socket_inode: int, fingerprint: dict[str, Any]) -> Path:
    """Register this process as the preloader serving ``socket_path`` (hold :func:`lock`)."""
    path = registration_path(socket_path)
    record = {
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "started": time.time(),
        "socket": str(socket_path),
        "socket_inode": socket_inode,
        "serves": serves(fingerprint),
    }
    written = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(record, file)
    os.replace(written, path)
    return path


def serves(fingerprint: dict[str, Any]) -> str:
    """Which callers a preloader serves, in a line: its Python, its homes, its interpreter options,
    and the names (not the values: they may be secrets) of the other Airflow variables it was
    started with."""
    environment = fingerprint.get("environment", {})
    parts = [str(fingerprint.get("python", "?"))]
    parts += [f"{name}={environment[name]}" for name in ("FLOWSPEC_HOME", "AIRFLOW_HOME", "AIRFLOW_CONFIG")
              if name in environment]  # fmt: skip
    options = fingerprint.get("interpreter", {}).get("options", [])
    if options:
        parts.append("options " + " ".join(options))
    others = sorted(name for name in environment if name.startswith("AIRFLOW__"))
    if others:
        parts.append("with " + ", ".join(others))
    return "; ".join(parts)


def touch(path: Path) -> None:
    """Mark the preloader registered at ``path`` as used now."""
    with contextlib.suppress(OSError):
        os.utime(path)


def unregister(path: Path) -> None:
    """Remove this process's registration (one a newer preloader wrote over is not ours)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def live(folder: Path) -> list[Registration]:
    """The live preloaders registered in ``folder``, least recently used first; registrations left
    by preloaders that died are removed (hold :func:`lock`)."""
    found = []
    for path in folder.glob("*.json"):
        registration = _read(path)
        if registration is None:
            continue
        if is_live(registration):
            found.append(registration)
        else:
            _remove_dead(registration)
    return sorted(found, key=lambda registration: (registration.last_used, registration.started))


def make_room(folder: Path, cap: int, joining: Path) -> list[Registration]:
    """Ask the least recently used preloaders to exit until the one joining at socket ``joining``
    is one of at most ``cap``; those asked, no longer registered (hold :func:`lock`)."""
    others = [registration for registration in live(folder) if registration.socket != joining]
    asked = []
    while others and len(others) + 1 > cap:
        least_recent = others.pop(0)
        with contextlib.suppress(OSError):
            least_recent.path.unlink()  # counted no more, whenever it exits
        with contextlib.suppress(ProcessLookupError):
            os.kill(least_recent.pid, STOP_SIGNAL)
        asked.append(least_recent)
    return asked


def stop(folder: Path) -> tuple[list[Registration], list[Registration]]:
    """Ask every live preloader in ``folder`` to exit and wait for them: those that exited, and
    those still running when the wait ended."""
    with lock(folder):
        running = live(folder)
        for registration in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(registration.pid, STOP_SIGNAL)
    deadline = time.monotonic() + _STOP_SECONDS
    while any(_runs(registration) for registration in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [registration for registration in running if _runs(registration)]
    return [registration for registration in running if registration not in left], left


def is_live(registration: Registration) -> bool:
    """Whether the registered process runs, is the one that registered, and owns its socket."""
    if not _runs(registration):
        return False
    try:
        return os.stat(registration.socket).st_ino == registration.socket_inode
    except OSError:
        return False


def _runs(registration: Registration) -> bool:
    try:
        os.kill(registration.pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid is another user's process now
        return False
    if registration.process_start is None:
        return True
    return _process_start(registration.pid) == registration.process_start


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (None without ``/proc``, or for a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rpartition(")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] == "Z":
        return None
    return fields[19]  # field 22, starttime, counted after the command's closing parenthesis


def _read(path: Path) -> Registration | None:
    try:
        record = json.loads(path.read_text())
        return Registration(
            path=path,
            pid=int(record["pid"]),
            process_start=record.get("process_start"),
            started=float(record["started"]),
            socket=Path(record["socket"]),
            socket_inode=int(record["socket_inode"]),
            serves=str(record.get("serves", "")),
            last_used=path.stat().st_mtime,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # gone meanwhile, or half written by a version that did not write it whole


def _remove_dead(registration: Registration) -> None:
    with contextlib.suppress(OSError):
        if os.stat(registration.socket).st_ino == registration.socket_inode:
            registration.socket.unlink()  # the dead one's: nobody listens there
    with contextlib.suppress(OSError):
        registration.path.unlink()
