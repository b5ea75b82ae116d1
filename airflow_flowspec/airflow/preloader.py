"""The preloader: a warm Airflow that forks a fresh child for each ``python flow.py run``.

Started by :mod:`airflow_flowspec.preload` (``python -m airflow_flowspec.airflow.preloader
--socket PATH``), detached from any terminal. It prepares what every run would otherwise pay for
(the private Airflow home's settings, ``airflow.sdk`` and the ORM imported, the database checked,
the lean in-process execution API, metrics), then waits on a Unix socket only its user can open.

For each request it forks a supervisor, which forks the run's child and reports how the child
ended: a status the shell would see, or the signal that ended it. The child is made the caller's
process first (:func:`take_caller_process`: umask, resource limits, nice value, scheduling policy,
CPUs, OOM score) and declines the run if it cannot be; then it takes the caller's terminal (the
descriptors arrive over the socket, and become standard streams set up as the caller's), working
directory, environment (``TZ`` and ``TMPDIR`` read again) and arguments, imports the flow file
fresh and runs it exactly as a cold ``run`` does (the same ``dag.test()`` path). The preloader
itself never runs a flow, so nothing one run does reaches the next.

It serves a run only while nothing it imported has changed (every module file, the folders on
``sys.path``: an install or an edit shows in their modification times) and the caller's
fingerprint (Python, interpreter options, start-up and Airflow variables, namespaces, cgroup,
credentials) is its own; otherwise it answers "stale" and exits, and the caller starts a new one.
It checks the caller's namespaces, cgroup and credentials itself, from the caller's pid as the
socket reports it, and declines a caller whose differ. It exits after ``[flowspec]
preload_idle_minutes`` without a request, as soon as it finds itself stale while idle, when a
preloader started with ``--replace`` takes its socket, and when asked to: by a new preloader making
room (at most ``[flowspec] preload_max_count`` live per user, :mod:`airflow_flowspec.preloaders`)
or by ``airflow-flowspec preloaders --stop``. Forking needs a single thread: the warm-up
starts none, and the preloader checks before each fork.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from airflow_flowspec import config, preloaders
from airflow_flowspec.preload import (
    CHILD_VARIABLE,
    FORWARDED_SIGNALS,
    context_difference,
    fingerprint,
    process_context,
    read_message,
    socket_path,
    write_message,
)

#: How :func:`..preload.socket_path` names a socket: after its callers' fingerprint.
_FINGERPRINT_NAME = re.compile(r"[0-9a-f]{20}\.sock")
#: How often an idle preloader checks whether it is stale.
_CHECK_SECONDS = 5.0
#: How long a run whose caller is gone has to end on SIGHUP before it is killed: a cold run dies
#: with its process, and a caller that ignores SIGHUP (``nohup``) has the run ignore it too.
_CALLER_GONE_GRACE_SECONDS = 5.0


class Snapshot:
    """What the preloader imported, as files and folders with their modification times."""

    def __init__(self) -> None:
        self.stats = self._take()

    @staticmethod
    def _take() -> dict[str, tuple[int, int]]:
        files = (getattr(module, "__file__", None) for module in list(sys.modules.values()))
        paths = {file for file in files if isinstance(file, str)}
        paths.update(entry for entry in sys.path if entry and os.path.isdir(entry))
        paths.add(sys.executable)
        from airflow_flowspec.airflow._internals import airflow_config_path

        paths.add(airflow_config_path())
        stats = {}
        for path in paths:
            try:
                status = os.stat(path)
            except OSError:
                continue
            stats[path] = (status.st_mtime_ns, status.st_size)
        return stats

    def changed(self) -> str | None:
        """The first file or folder that changed since the snapshot, or None."""
        for path, (mtime, size) in self.stats.items():
            try:
                status = os.stat(path)
            except OSError:
                return path
            if (status.st_mtime_ns, status.st_size) != (mtime, size):
                return path
        return None


def warm_up() -> None:
    """Everything a run would do before its flow is imported, done once."""
    from airflow_flowspec.airflow import _internals, local_run

    home = local_run.prepare_environment()
    local_run.quiet_airflow_warnings()
    gc.disable()
    try:
        import logging

        import airflow.sdk  # noqa: F401 - config, settings, ORM
        from airflow.models.dagrun import DagRun  # noqa: F401

        logging.getLogger("airflow").setLevel(logging.WARNING)
        local_run.ensure_database(home)
        _internals.build_lean_execution_api()
        _internals.initialize_metrics()
        _internals.import_task_run_modules()

        from airflow_flowspec import cli, flow_commands, graph, lint  # noqa: F401 - every run's
        from airflow_flowspec.airflow import concurrent_run, registration, translator  # noqa: F401
        from airflow_flowspec.operators import local_step  # noqa: F401

        concurrent_run.import_what_tasks_import()

        local_run.prebuild_execution_api()
        from sqlalchemy.orm import configure_mappers

        configure_mappers()  # the ORM's relationships, set up on first use: a quarter second a run
    finally:
        gc.freeze()
        gc.enable()


class Preloader:
    def __init__(self, path: Path, idle_seconds: float, print_: dict[str, Any]):
        self.path = path
        self.idle_seconds = idle_seconds
        self.print = print_  # taken before the warm-up set the private home's variables
        self.context = print_["context"]
        self.snapshot = Snapshot()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.children: set[int] = set()
        self.inode = 0
        self.stale_reason = ""
        self.registration: Path | None = None
        self.asked_to_stop = False

    def join(self, cap: int, replace: bool = False) -> bool:
        """Bind (:meth:`bind`), make room among this user's preloaders for one more (the least
        recently used exit until at most ``cap`` are left), and register, under the preloaders'
        lock: two starting at once count each other. False when another preloader serves the path."""
        folder = self.path.parent
        signal.signal(preloaders.STOP_SIGNAL, self._stop)  # before anyone can find it registered
        with preloaders.lock(folder):
            if not self.bind(replace):
                return False
            for asked in preloaders.make_room(folder, cap, joining=self.path):
                print(
                    f"preloader {os.getpid()} asks preloader {asked.pid} to exit, the least recently "
                    f"used: at most {cap} may live ([flowspec] preload_max_count)",
                    flush=True,
                )
            self.registration = preloaders.register(self.path, self.inode, self.print)
        return True

    def _stop(self, _number: int, _frame: Any) -> None:
        self.asked_to_stop = True  # the serving loop exits at its next turn, between requests

    def bind(self, replace: bool = False) -> bool:
        """Listen at the path; False when another live preloader already does, unless ``replace``
        (that one stops serving: it finds the path taken and exits)."""
        try:
            self.listener.bind(str(self.path) + ".new")
        except OSError:
            os.unlink(str(self.path) + ".new")
            self.listener.bind(str(self.path) + ".new")
        os.chmod(str(self.path) + ".new", 0o600)
        self.listener.listen(16)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not replace:
                probe.connect(str(self.path))
                os.unlink(str(self.path) + ".new")
                return False  # someone else serves this path
        except OSError:
            pass  # nobody does
        finally:
            probe.close()
        os.replace(str(self.path) + ".new", str(self.path))
        self.inode = os.stat(self.path).st_ino
        return True

    def serve(self) -> None:
        last_request = last_check = time.monotonic()
        while True:
            self._reap()
            if self.asked_to_stop:
                return self._exit("asked to stop")
            readable, _, _ = select.select([self.listener], [], [], 1.0)
            now = time.monotonic()
            if readable:
                connection, _ = self.listener.accept()
                last_request = now
                if self.registration is not None:
                    preloaders.touch(self.registration)
                if not self._handle(connection):
                    return self._exit(f"stale: {self.stale_reason}")
                continue
            if now - last_request > self.idle_seconds:
                return self._exit("idle")
            if now - last_check > _CHECK_SECONDS:
                last_check = now
                changed = self.snapshot.changed()
                if changed is not None:
                    return self._exit(f"stale: {changed} changed")
                if not self._still_ours():
                    return self._exit("another preloader took the socket")

    def _exit(self, reason: str) -> None:
        print(f"preloader {os.getpid()} exits: {reason}", file=sys.stderr, flush=True)

    def _still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _handle(self, connection: socket.socket) -> bool:
        """Serve one request; False when this preloader must exit (it is stale)."""
        fds: list[int] = []
        try:
            connection.settimeout(10)
            peer = _peer(connection)
            if peer is not None and peer[1] != os.getuid():
                write_message(connection, {"status": "refused", "reason": "another user"})
                return True
            request, fds = _receive(connection)
            changed = self.snapshot.changed()
            if changed is None and request.get("fingerprint") != self.print:
                changed = f"the caller's environment ({_difference(request.get('fingerprint'), self.print)})"
            if changed is not None:
                write_message(connection, {"status": "stale", "reason": changed})
                self.stale_reason = changed
                return False
            foreign = self._foreign(peer)
            if foreign:
                print(f"preloader {os.getpid()} declines {request['argv'][0]}: {foreign}", flush=True)
                write_message(connection, {"status": "declined", "reason": foreign})
                return True
            if threading.active_count() != 1:
                write_message(connection, {"status": "refused", "reason": "threads running"})
                return False
            pid = os.fork()
            if pid == 0:
                try:
                    signal.signal(preloaders.STOP_SIGNAL, signal.SIG_DFL)  # the preloader's alone
                    self.listener.close()
                    _supervise(connection, request, fds)
                finally:
                    os._exit(0)
            self.children.add(pid)
            return True
        except (OSError, ValueError) as error:
            print(f"request failed: {error}", file=sys.stderr, flush=True)
            return True
        finally:
            for fd in fds:
                os.close(fd)
            connection.close()

    def _foreign(self, peer: tuple[int, int, int] | None) -> str:
        """Why the caller's process runs where a child of this preloader cannot (another
        namespace, root, cgroup or set of credentials), or "". Read from the kernel (the
        caller's pid, from the socket), not from what the caller says about itself."""
        if not self.context:
            return ""  # no /proc: no namespaces or cgroups to differ
        if peer is None or peer[0] <= 0:
            return "the caller's process cannot be seen from here"
        try:
            theirs = process_context(peer[0])
        except OSError as error:
            return f"the caller's process cannot be seen from here ({error.strerror})"
        different = context_difference(theirs, self.context)
        if not different:
            return ""
        return f"its {_listed(different)} {'is' if len(different) == 1 else 'are'} not the preloader's"

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        try:
            if self._still_ours():
                os.unlink(self.path)
            if self.registration is not None:
                preloaders.unregister(self.registration)
        finally:
            self.listener.close()


def _difference(theirs: Any, ours: dict[str, Any]) -> str:
    """Which part of a caller's fingerprint differs from ours, by name (values may be secrets)."""
    if not isinstance(theirs, dict):
        return "no fingerprint"
    names = [k for k in ("python", "prefix") if theirs.get(k) != ours.get(k)]
    environment = theirs["environment"] if isinstance(theirs.get("environment"), dict) else {}
    names += sorted(
        k
        for k in set(environment) | set(ours["environment"])
        if environment.get(k) != ours["environment"].get(k)
    )
    interpreter = theirs["interpreter"] if isinstance(theirs.get("interpreter"), dict) else {}
    for part in ours["interpreter"]:
        if interpreter.get(part) != ours["interpreter"][part]:
            names.append(f"the interpreter's {part}")
    context = theirs["context"] if isinstance(theirs.get("context"), dict) else {}
    names += context_difference(context, ours["context"])
    return ", ".join(names) or "unknown"


def _listed(names: list[str], conjunction: str = "and") -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


def _peer(connection: socket.socket) -> tuple[int, int, int] | None:
    """The connected caller's pid, uid and gid, as the kernel saw them at connect (None where the
    system does not say: the folder's permissions are the guard)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    import struct

    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", credentials)
    return pid, uid, gid


def _receive(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _address = socket.recv_fds(connection, 1024 * 1024, 3)
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("a run needs the caller's three standard streams")
    try:
        request = read_message(connection, data)
        if not isinstance(request.get("argv"), list):
            raise ValueError("not a run request")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def _supervise(connection: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """In the forked supervisor: start the run's child, tell the caller its pid (or that the child
    could not be made the caller's process), report its end."""
    taken_read, taken_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        connection.close()
        os.close(taken_read)
        _become_run(request, fds, taken_write)  # never returns
    os.close(taken_write)
    for fd in fds:
        os.close(fd)
    fds.clear()
    with os.fdopen(taken_read, "rb") as taken:
        answer = taken.read().decode(errors="replace")
    preloader = os.getppid()
    if answer != "taken":
        os.waitpid(pid, 0)
        print(f"preloader {preloader} declines {request['argv'][0]}: {answer or 'no answer'}", flush=True)
        if answer:  # it lacks what the caller has: a preloader the caller starts has it
            write_message(connection, {"status": "declined", "reason": answer, "replace": True})
        else:
            write_message(connection, {"status": "refused", "reason": "the run's process failed to start"})
        return
    print(f"preloader {preloader} serves {request['argv'][0]} (supervisor {os.getpid()})", flush=True)
    write_message(connection, {"pid": pid})
    connection.settimeout(None)
    # A pidfd becomes readable the moment the child ends (Linux); elsewhere, poll.
    try:
        ended: list[Any] = [os.pidfd_open(pid)]
    except (AttributeError, OSError):
        ended = []
    caller_gone = False
    kill_at: float | None = None  # when a run whose caller is gone is killed, if it has not ended
    while True:
        # The caller going away (killed, or its terminal closed) ends the run, as a cold run ends
        # with its process: SIGHUP first, then SIGKILL for a run that ignores SIGHUP.
        watched = ended + ([] if caller_gone else [connection])
        timeout = 0.05 if not ended else None
        if kill_at is not None:
            timeout = max(0.0, min(timeout or _CALLER_GONE_GRACE_SECONDS, kill_at - time.monotonic()))
        readable, _, _ = select.select(watched, [], [], timeout)
        if connection in readable and not connection.recv(1, socket.MSG_PEEK):
            caller_gone = True
            kill_at = time.monotonic() + _CALLER_GONE_GRACE_SECONDS
            os.kill(pid, signal.SIGHUP)
        elif kill_at is not None and time.monotonic() >= kill_at:
            kill_at = None
            os.kill(pid, signal.SIGKILL)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    if os.WIFSIGNALED(status):
        end = {"signal": os.WTERMSIG(status)}
    else:
        end = {"exit": os.waitstatus_to_exitcode(status)}
    try:
        write_message(connection, end)
    except OSError:
        pass


def _take_signal_dispositions(ignored: Any) -> None:
    """Handle signals as the caller's own Python would: a signal the caller ignores (Ctrl-C in a
    shell's background job) stays ignored, Ctrl-C otherwise raises KeyboardInterrupt, and the rest
    do what they do by default."""
    ignored = set(ignored) if isinstance(ignored, list) else set()
    for name in (*FORWARDED_SIGNALS, "SIGCHLD"):
        number = getattr(signal, name)
        if name in ignored and name in FORWARDED_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        elif name == "SIGINT":
            signal.signal(number, signal.default_int_handler)
        else:
            signal.signal(number, signal.SIG_DFL)


def take_caller_process(process: Any) -> list[str]:
    """Give this process what the caller's process has (:func:`..preload.caller_process`): its
    umask, resource limits, nice value, scheduling policy, CPUs and out-of-memory score
    adjustment. What it could not be given (an unprivileged process cannot lower its nice value
    or raise a hard limit), as phrases for a message; empty when it has them all."""
    import resource

    if not isinstance(process, dict):
        return ["the caller's process was not described"]
    missing: list[str] = []
    os.umask(int(process["umask"]))
    nice = int(process["nice"])
    _set_nice(nice)  # before the limits too: the caller's RLIMIT_NICE may be lower than ours
    for name, (soft, hard) in sorted(process.get("limits", {}).items()):
        number = getattr(resource, name, None)
        if number is None or resource.getrlimit(number) == (soft, hard):
            continue
        try:
            resource.setrlimit(number, (soft, hard))
        except (ValueError, OSError):
            own = resource.getrlimit(number)[1]
            missing.append(f"{name} {_limit(soft)}/{_limit(hard)} (its own hard limit is {_limit(own)})")
    if not _set_nice(nice):
        own = os.getpriority(os.PRIO_PROCESS, 0)
        missing.append(f"nice {nice} (its own is {own}; only a privileged process lowers it)")
    scheduler = process.get("scheduler")
    if scheduler and hasattr(os, "sched_setscheduler"):
        policy, priority = int(scheduler[0]), int(scheduler[1])
        if (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) != (policy, priority):
            try:
                os.sched_setscheduler(0, policy, os.sched_param(priority))
            except OSError:
                missing.append(f"scheduling policy {policy} at priority {priority}")
    cpus = process.get("cpus")
    if cpus and hasattr(os, "sched_setaffinity") and sorted(os.sched_getaffinity(0)) != cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            missing.append(f"CPUs {cpus}")
    if "oom_score_adj" in process:
        try:
            with open("/proc/self/oom_score_adj", "r+") as file:
                if int(file.read()) != int(process["oom_score_adj"]):
                    file.seek(0)
                    file.write(str(int(process["oom_score_adj"])))
        except OSError:
            missing.append(f"oom_score_adj {process['oom_score_adj']}")
    return missing


def _set_nice(nice: int) -> bool:
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        return False
    return True


def _limit(value: int) -> str:
    import resource

    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _open_std_streams(described: Any) -> None:
    """The standard streams on descriptors 0-2, set up as the caller's Python set up its own (its
    encoding and error handler, line buffering on a terminal and for stderr, unbuffered under
    ``-u``, no newline translation), as ``sys.std*`` and ``sys.__std*__``."""
    described = described if isinstance(described, dict) else {}
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        how = described.get(name) if isinstance(described.get(name), dict) else {}
        writing = fd != 0
        raw = io.FileIO(fd, "wb" if writing else "rb", closefd=False)
        raw.name = f"<{name}>"
        buffer: Any = raw
        if how.get("buffered", True) or not writing:
            buffer = io.BufferedWriter(raw) if writing else io.BufferedReader(raw)
        stream = io.TextIOWrapper(
            buffer,
            encoding=how.get("encoding"),
            errors=how.get("errors", "backslashreplace" if name == "stderr" else "strict"),
            newline="\n",
            line_buffering=how.get("line_buffering", name == "stderr" or raw.isatty()),
            write_through=how.get("write_through", False),
        )
        stream.mode = "w" if writing else "r"  # type: ignore[misc]
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _take_time_zone_and_temporary_folder() -> None:
    """Read ``TZ`` and ``TMPDIR`` again from the caller's environment, now in ``os.environ``: the C
    library's time zone (``time.tzset``), pendulum's cached local zone and Airflow's default one
    when it is "system", and ``tempfile``'s cached folder."""
    import tempfile

    time.tzset()
    tempfile.tempdir = None
    local = sys.modules.get("pendulum.tz.local_timezone")
    if local is not None:
        local._local_timezone = None  # type: ignore[attr-defined]
    settings: Any = sys.modules.get("airflow.settings")
    if settings is None:
        return
    from airflow.sdk import conf

    from airflow_flowspec.airflow._internals import use_system_time_zone

    if conf.get("core", "default_timezone", fallback="utc") == "system":
        use_system_time_zone()
        settings.TIMEZONE = settings.local_timezone()


def _become_run(request: dict[str, Any], fds: list[int], taken: int) -> None:
    """In the run's child: become the caller's ``python flow.py run`` and run it; never returns.
    It first takes the caller's process attributes and writes "taken" to ``taken``, or what it
    could not take (and exits)."""
    code = 1
    try:
        missing = take_caller_process(request.get("process"))
        answer = f"the preloader cannot give it {_listed(missing, 'or')}" if missing else "taken"
        os.write(taken, answer.encode())
        os.close(taken)
        if missing:
            return
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.setsid()  # its own session: the preloader's signals and lifetime are not the run's
        _take_signal_dispositions(request.get("ignored_signals"))
        _open_std_streams(request.get("streams"))
        os.chdir(request.get("cwd") or "/")
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in (request.get("environment") or {}).items()})
        os.environ[CHILD_VARIABLE] = "1"
        _take_time_zone_and_temporary_folder()
        from airflow_flowspec.airflow.local_run import prepare_environment

        prepare_environment()
        from airflow import settings

        engine = getattr(settings, "engine", None)
        if engine is not None:
            engine.dispose(close=False)  # the preloader's connections are not ours
        argv = [str(a) for a in request["argv"]]
        sys.argv = argv
        if isinstance(request.get("orig_argv"), list):
            sys.orig_argv = [str(a) for a in request["orig_argv"]]
        if not sys.flags.safe_path:  # with -P (or -I) Python puts no script folder first
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        import runpy

        profile = os.environ.get("FLOWSPEC_PRELOAD_PROFILE")  # where to write a cProfile of the run
        try:
            if profile:
                import cProfile

                cProfile.runctx("runpy.run_path(argv[0], run_name='__main__')", globals(), locals(), profile)
            else:
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as end:
            code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
            if end.code is not None and not isinstance(end.code, int):
                print(end.code, file=sys.stderr)
        except KeyboardInterrupt:
            traceback.print_exc()
            _flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # noqa: BLE001 - reported as Python would, then exit 1
            traceback.print_exc()
            code = 1
    finally:
        _flush()
        os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed terminal
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_flowspec.airflow.preloader")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--idle-minutes", type=float, default=None)
    parser.add_argument("--replace", action="store_true", help="take the socket over from a live preloader")
    args = parser.parse_args(argv)
    idle = args.idle_minutes if args.idle_minutes is not None else config.preload_idle_minutes()
    cap = config.preload_max_count()  # read as the caller's, before the warm-up sets the private home
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    print_ = fingerprint()
    if _FINGERPRINT_NAME.fullmatch(args.socket.name) and socket_path(print_) != args.socket:
        # Its callers' fingerprint names the socket: one not started as they were serves none.
        print(f"preloader {os.getpid()} exits: not started as its callers were", file=sys.stderr, flush=True)
        return 0
    warm_up()
    preloader = Preloader(args.socket, idle * 60, print_)
    if not preloader.join(cap, replace=args.replace):
        return 0
    print(f"preloader {os.getpid()} ready at {args.socket}", flush=True)
    try:
        preloader.serve()
    finally:
        preloader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
