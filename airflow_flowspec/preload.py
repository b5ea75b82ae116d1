"""``python flow.py run`` through a warm Airflow: the client side of the preloader.

Most of a small flow's ``run`` is Airflow starting: importing ``airflow.sdk``, preparing the private
home, building the in-process execution API. The preloader
(:mod:`airflow_flowspec.airflow.preloader`) does that once and forks a fresh child for each run, the
pattern of Ruby's Spring or CPython's forkserver. This module is what ``run`` does instead of
starting Airflow itself: it hands the preloader its terminal (the file descriptors themselves,
passed over a Unix socket, so ``isatty``, colours and progress bars behave), its arguments,
working directory and environment, and what its process passes on (:func:`caller_process`,
:func:`std_streams`), forwards the signals it gets (Ctrl-C) to the child, and exits with the
child's status. It imports no Airflow.

The preloader starts on first use (that run is cold), exits after ``[flowspec]
preload_idle_minutes``, and serves a run only while nothing it imported has changed; at most
``[flowspec] preload_max_count`` live per user (:mod:`airflow_flowspec.preloaders`). What a forked
child cannot be given is in the :func:`fingerprint`, which names the socket: a caller started with
other interpreter options or start-up variables, or in another namespace or cgroup, gets a
preloader of its own, started as it was started (none for a namespace or cgroup entered for one
command: :func:`entered_for_this_command`). ``run --no-preload``, ``[flowspec] preload = False``
or ``FLOWSPEC_PRELOAD=0`` turn it off; where fork or Unix sockets do not exist it is off. If the
preloader fails or refuses before the run starts, or cannot make its child this process (it
declines), the run goes on cold and says so in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Set in the preloader's children: their ``run`` runs in place (never through a preloader).
CHILD_VARIABLE = "FLOWSPEC_PRELOAD_CHILD"
#: ``0`` turns the preloader off for a shell (as ``run --no-preload`` does for one command).
SWITCH_VARIABLE = "FLOWSPEC_PRELOAD"
#: Signals a user sends the run through this process (Ctrl-C, Ctrl-\, a kill, a closed terminal).
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
#: How long a client waits for a preloader to take its run (the fork is milliseconds).
_HANDSHAKE_SECONDS = 10.0
_HEADER = struct.Struct("!I")


def supported() -> bool:
    return hasattr(os, "fork") and hasattr(socket, "AF_UNIX") and hasattr(socket, "send_fds")


def enabled(no_preload: bool = False) -> bool:
    """Whether this ``run`` may go through a preloader."""
    if no_preload or os.environ.get(CHILD_VARIABLE) or not supported():
        return False
    if sys.flags.inspect or "-x" in startup_options():
        return False  # python -i: the run's objects must be in this process; -x: a line skipped
    if os.environ.get(SWITCH_VARIABLE, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    from airflow_flowspec import config

    if not config.preload_enabled():
        return False
    config.preload_max_count()  # a value the preloader cannot use is said here, not in its log
    return True


def run_help() -> str:
    """What ``run --help`` says about preloaders: where they are, how many may live and for how
    long, how to list and stop them (filled to the terminal's width, as argparse fills the rest)."""
    import shutil
    import textwrap

    from airflow_flowspec import config
    from airflow_flowspec.errors import ConfigurationError

    def option(name: str, read: Any) -> str:
        try:
            return f"{read():g}"
        except ConfigurationError:
            return config.get_option(name) + " (not usable)"

    width = min(shutil.get_terminal_size().columns - 2, 100)
    return textwrap.fill(
        f"Warm runs: after the first run, a preloader keeps Airflow ready and each run is forked from "
        f"it (about 180 MB; one per Python and Airflow environment). Preloaders listen in "
        f"{folder_path()} (with their logs); at most {option('preload_max_count', config.preload_max_count)} "
        f"live at once ([flowspec] preload_max_count: a new one makes the least recently used exit), "
        f"and each exits after {option('preload_idle_minutes', config.preload_idle_minutes)} minutes "
        f"without a run ([flowspec] preload_idle_minutes). `airflow-flowspec preloaders` lists them; "
        f"`airflow-flowspec preloaders --stop` stops them (their runs go on). --no-preload or "
        f"FLOWSPEC_PRELOAD=0 runs without them.",
        width,
        break_on_hyphens=False,
    )


def fingerprint(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """What a preloader must share with a run it serves, as the preloader cannot change it for a
    child: the Python and how it was started (:func:`interpreter`), the environment Airflow reads
    when it starts (a preloader with another one would run stale settings), and where the process
    runs (:func:`process_context`). Callers that differ get preloaders of their own. ``[flowspec]``
    options are left out: this package reads them when it needs them, in the run's child."""
    environ = dict(os.environ if environ is None else environ)
    relevant = {
        name: value
        for name, value in environ.items()
        if name in ("AIRFLOW_HOME", "FLOWSPEC_HOME", "AIRFLOW_CONFIG")
        or (name.startswith("AIRFLOW__") and not name.startswith("AIRFLOW__FLOWSPEC__"))
    }
    return {
        "python": os.path.realpath(sys.executable),
        "prefix": sys.prefix,
        "environment": relevant,
        "interpreter": interpreter(),
        "context": process_context(),
    }


#: Variables Python reads only as it starts (besides ``PYTHON*``): the locale it sets up, and with
#: it the file system encoding and UTF-8 mode.
_LOCALE_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE")
#: ``PYTHON*`` variables a preloaded run applies itself (the standard streams are rebuilt as the
#: caller's) or that Python reads when they are used, in the run, from the caller's environment.
_APPLIED_IN_THE_RUN = ("PYTHONIOENCODING", "PYTHONUNBUFFERED", "PYTHONBREAKPOINT", "PYTHONASYNCIODEBUG")


def interpreter() -> dict[str, Any]:
    """How this Python was started, as far as a forked child cannot change it: its command-line
    options (``-O``, ``-W``, ``-X``, ``-B``...) and the variables it read as it started
    (``PYTHONWARNINGS``, ``PYTHONHASHSEED``, ``PYTHONPATH``, the locale...), as they were then
    (a flow that changes ``os.environ`` changes neither), and the stack limit the C library sized
    threads' stacks by. A preloader started with :func:`startup_options` and
    :func:`startup_environment` has the same."""
    import resource

    return {
        "options": startup_options(),
        "environment": {
            name: value
            for name, value in startup_environment().items()
            if name in _LOCALE_VARIABLES or (name.startswith("PYTHON") and name not in _APPLIED_IN_THE_RUN)
        },
        "thread stack": resource.getrlimit(resource.RLIMIT_STACK)[0],
    }


def startup_options(orig_argv: list[str] | None = None) -> list[str]:
    """The interpreter's own options on the command line that started this process, one per item
    (``-OB`` is ``-O``, ``-B``; ``-Werror`` is ``-W``, ``error``); what follows the script, ``-c``
    or ``-m`` is not an interpreter option."""
    args = iter((sys.orig_argv if orig_argv is None else orig_argv)[1:])
    options: list[str] = []
    for arg in args:
        if arg == "--" or arg == "-" or not arg.startswith("-"):
            break
        if arg.startswith("--"):
            options.append(arg)
            if arg == "--check-hash-based-pycs":
                options.append(next(args, ""))
            continue
        for position, letter in enumerate(arg[1:], start=1):
            if letter in "cm":
                return options
            if letter in "WX":
                options += [f"-{letter}", arg[position + 1 :] or next(args, "")]
                break
            options.append(f"-{letter}")
    return options


def startup_environment() -> dict[str, str]:
    """The environment this process was started with (``/proc/self/environ`` on Linux, where a
    change to ``os.environ`` does not show; ``os.environ`` elsewhere)."""
    try:
        with open("/proc/self/environ", "rb") as file:
            entries = file.read().split(b"\0")
    except OSError:
        return dict(os.environ)
    environment = {}
    for entry in entries:
        name, equals, value = entry.partition(b"=")
        if equals:
            environment[os.fsdecode(name)] = os.fsdecode(value)
    return environment


#: Namespaces a run must share with the preloader that forks it, as ``/proc/<pid>/ns/`` names them.
NAMESPACES = {
    "net": "network namespace",
    "mnt": "mount namespace",
    "pid": "process id namespace",
    "ipc": "IPC namespace",
    "uts": "host name (UTS) namespace",
    "user": "user namespace",
    "cgroup": "cgroup namespace",
    "time": "time namespace",
}
#: Lines of ``/proc/<pid>/status`` that say what a process may do (ids, capabilities, sandboxing).
_CREDENTIAL_LINES = (
    "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
    "Seccomp_filters",
)  # fmt: skip
#: What each entry of :func:`process_context` is, for a message.
CONTEXT_NAMES = {
    **{f"namespace {key}": name for key, name in NAMESPACES.items()},
    "root": "root directory",
    "cgroups": "cgroup",
    "credentials": "user, groups, capabilities or seccomp filter",
    "security label": "security label (SELinux, AppArmor)",
}


def process_context(pid: int | str = "self") -> dict[str, str | None]:
    """Where a process runs, as no preloader can change it for a child it forks: its namespaces,
    root directory, cgroups, credentials and security label, read from ``/proc/<pid>``. Empty
    without ``/proc`` (not Linux: nothing of this kind to differ); an entry the kernel does not
    have is None. Raises OSError when ``/proc/<pid>`` cannot be read (gone, or not ours to see)."""
    base = f"/proc/{pid}"
    if pid == "self" and not os.path.isdir(base):
        return {}
    context: dict[str, str | None] = {}
    for key in NAMESPACES:
        try:
            context[f"namespace {key}"] = os.readlink(f"{base}/ns/{key}")
        except FileNotFoundError:
            if not os.path.isdir(base):
                raise
            context[f"namespace {key}"] = None
    root = os.stat(f"{base}/root")
    context["root"] = f"{root.st_dev}:{root.st_ino}"
    context["cgroups"] = _read_text(f"{base}/cgroup")
    status = _read_text(f"{base}/status")
    context["credentials"] = "\n".join(
        line for line in status.splitlines() if line.partition(":")[0] in _CREDENTIAL_LINES
    )
    try:
        context["security label"] = _read_text(f"{base}/attr/current")
    except OSError:  # no security module, or one that does not say
        context["security label"] = None
    return context


def _read_text(path: str) -> str:
    with open(path, "rb") as file:
        return file.read().decode(errors="replace")


def context_difference(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """What of a process context (:func:`process_context`) differs, by name."""
    return [CONTEXT_NAMES.get(key, key) for key in ours if theirs.get(key) != ours[key]]


def socket_path(print_: dict[str, Any] | None = None) -> Path:
    """Where this user's preloader for this fingerprint listens: a folder only the user can open."""
    digest = hashlib.sha256(json.dumps(print_ or fingerprint(), sort_keys=True).encode()).hexdigest()[:20]
    return private_folder() / f"{digest}.sock"


def folder_path() -> Path:
    """Where this user's preloaders listen and register (:func:`private_folder` makes it)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"airflow-flowspec-{os.getuid()}"


def private_folder() -> Path:
    folder = folder_path()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        pass
    status = folder.lstat()
    if not folder.is_dir() or folder.is_symlink() or status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise PermissionError(f"{folder} is not a folder only you can open")
    return folder


def run_preloaded(argv: list[str]) -> int | None:
    """Run ``python <argv>`` in a preloader; its exit status, or None to run cold here."""
    try:
        path = socket_path()
    except OSError as error:
        _say(f"the preloader's folder cannot be used ({error}); running without it")
        return None
    connection = _connect(path)
    if connection is None:
        _start_after_this_run(path)
        return None
    with connection:
        try:
            reply = _hand_over(connection, argv)
        except (OSError, ValueError) as error:
            _say(f"the preloader did not take the run ({error}); running it cold")
            return None
        if reply.get("status") == "stale":
            _start_after_this_run(path)  # the old one has exited: something it imported changed
            return None
        if reply.get("status") == "declined":
            # It cannot make the run this process. Where it lacks what this process has (a lower
            # nice value, a higher hard limit), one started from here can: it takes over.
            then = ""
            if reply.get("replace"):
                _start_after_this_run(path, replace=True)
                then = "; a preloader that can starts after it"
            _say(f"running this cold: {reply.get('reason')}{then}")
            return None
        if "pid" not in reply:
            _say(f"the preloader refused the run ({reply.get('reason', reply)}); running it cold")
            return None
        return _follow(connection, int(reply["pid"]))


def _connect(path: Path) -> socket.socket | None:
    if not path.exists():
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except OSError:
        connection.close()
        return None
    return connection


def _hand_over(connection: socket.socket, argv: list[str]) -> dict[str, Any]:
    request = {
        "argv": argv,
        "cwd": os.getcwd(),
        "environment": dict(os.environ),
        "fingerprint": fingerprint(),
        # A run started with Ctrl-C ignored (as a shell starts a background job) must ignore it
        # too, as a cold run's Python would: the child takes these dispositions from the caller.
        "ignored_signals": ignored_signals(),
        "process": caller_process(),
        "streams": std_streams(),
        "orig_argv": list(sys.orig_argv),
    }
    data = json.dumps(request).encode()
    connection.settimeout(_HANDSHAKE_SECONDS)
    socket.send_fds(connection, [_HEADER.pack(len(data)) + data], [0, 1, 2])
    return read_message(connection)


def caller_process() -> dict[str, Any]:
    """What a process passes to the processes it starts and the preloader's child can be given
    (it takes them, or the preloader declines the run): the umask, every resource limit, the nice
    value, the scheduling policy, the CPUs it may run on and its out-of-memory score adjustment."""
    import resource

    umask = os.umask(0o077)
    os.umask(umask)
    limits = {}
    for name in sorted(dir(resource)):
        if name.startswith("RLIMIT_") and getattr(resource, name) not in limits.values():
            limits[name] = getattr(resource, name)
    process: dict[str, Any] = {
        "umask": umask,
        "limits": {name: list(resource.getrlimit(number)) for name, number in limits.items()},
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }
    if hasattr(os, "sched_getaffinity"):
        process["cpus"] = sorted(os.sched_getaffinity(0))
    if hasattr(os, "sched_getscheduler"):
        process["scheduler"] = [os.sched_getscheduler(0), os.sched_getparam(0).sched_priority]
    try:
        with open("/proc/self/oom_score_adj") as file:
            process["oom_score_adj"] = int(file.read())
    except (OSError, ValueError):
        pass
    return process


def std_streams() -> dict[str, dict[str, Any]]:
    """How Python set up this process's standard streams (``PYTHONIOENCODING``, ``-u``, the
    locale, a terminal or not), for the preloader's child to set up its own the same way."""
    streams = {}
    for name in ("stdin", "stdout", "stderr"):
        stream = getattr(sys, f"__{name}__", None)
        if isinstance(stream, io.TextIOWrapper):
            streams[name] = {
                "encoding": stream.encoding,
                "errors": stream.errors,
                "line_buffering": stream.line_buffering,
                "write_through": stream.write_through,
                "buffered": not isinstance(stream.buffer, io.RawIOBase),
            }
    return streams


def ignored_signals() -> list[str]:
    """Which of the signals a run would react to this process ignores (inherited, or set here)."""
    return [name for name in FORWARDED_SIGNALS if signal.getsignal(getattr(signal, name)) is signal.SIG_IGN]


def _follow(connection: socket.socket, pid: int) -> int:
    """Forward signals to the run until it ends; its exit status, as the shell should see it."""

    def forward(number: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)

    ignored = ignored_signals()
    for name in FORWARDED_SIGNALS:
        if name not in ignored:  # an ignored one stays ignored here, as it is in the run
            signal.signal(getattr(signal, name), forward)
    connection.settimeout(None)
    try:
        end = read_message(connection)
    except (OSError, ValueError) as error:
        # Its supervisor is gone: nothing would report its end, so it must not go on unseen.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        _say(f"lost the preloaded run (pid {pid}): {error}; it was stopped")
        return 1
    if "signal" in end:  # die the same way, so the shell sees what it would have seen
        number = int(end["signal"])
        sys.stdout.flush()
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        time.sleep(1)
        return 128 + number
    return int(end.get("exit", 1))


def _start_after_this_run(path: Path, replace: bool = False) -> None:
    """Start a preloader for the next run once this (cold) one is over: started now, it would
    migrate the same new database and compete for the same cores. None is started from a
    namespace or cgroup entered for this command alone (:func:`entered_for_this_command`)."""
    import atexit

    if entered_for_this_command():
        return
    # With the environment as the caller has it now: the run is about to add the private home's.
    atexit.register(start_preloader, path, dict(os.environ), replace)


def entered_for_this_command() -> bool:
    """Whether this process runs in a namespace or cgroup its parent is not in, as under
    ``unshare -n python flow.py run`` or ``systemd-run --scope``: made for this one command, so a
    preloader started in it would serve no later run, and would keep it alive until idle."""
    try:
        ours, parents = process_context(), process_context(os.getppid())
    except OSError:
        return False
    return any(
        ours[key] != parents.get(key) for key in ours if key.startswith("namespace ") or key == "cgroups"
    )


def start_preloader(path: Path, environ: dict[str, str] | None = None, replace: bool = False) -> None:
    """Start a preloader in the background, detached from this terminal (it warms up while this
    run goes on), with this interpreter's options and start-up variables (:func:`interpreter`), so
    that it serves this caller; ``replace`` takes the socket over from a preloader that serves it."""
    log = path.with_suffix(".log")
    environ = dict(os.environ if environ is None else environ)
    started = startup_environment()
    for name in list(environ):
        if name in _LOCALE_VARIABLES or name.startswith("PYTHON"):
            del environ[name]
    environ.update(
        (name, value)
        for name, value in started.items()
        if name in _LOCALE_VARIABLES or name.startswith("PYTHON")
    )
    command = [sys.executable, *startup_options(), "-m", "airflow_flowspec.airflow.preloader"]
    with open(log, "ab") as output:
        subprocess.Popen(  # noqa: S603 - our own module, this interpreter
            [*command, "--socket", str(path), *(["--replace"] if replace else [])],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            cwd="/",
            env=environ,
            close_fds=True,
        )


def read_message(connection: socket.socket, received: bytes = b"") -> dict[str, Any]:
    """One length-prefixed JSON message; ``received`` is what of it already arrived (with the
    descriptors, which come with the first bytes)."""
    header = received[: _HEADER.size] + _read_exactly(connection, max(0, _HEADER.size - len(received)))
    (length,) = _HEADER.unpack(header)
    if length > 64 * 1024 * 1024:
        raise ValueError("message too long")
    body = received[_HEADER.size :]
    message = json.loads(body + _read_exactly(connection, max(0, length - len(body))))
    if not isinstance(message, dict):
        raise ValueError("not a message")
    return message


def write_message(connection: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    connection.sendall(_HEADER.pack(len(data)) + data)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(left)
        if not chunk:
            raise ValueError("the connection closed mid-message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _say(message: str) -> None:
    print(f"airflow-flowspec: {message}.", file=sys.stderr, flush=True)
