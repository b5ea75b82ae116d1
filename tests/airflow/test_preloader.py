"""``python flow.py run`` through the preloader: the same output, artifacts and exit status as a
cold run, never stale, never lost, never left running.

Each test has a preloader folder of its own (``XDG_RUNTIME_DIR``), and every preloader started
in it is stopped (and checked gone) at the end.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import REPO, printed_texts, run_id_of

# One xdist worker runs this module's tests one after another: a test here changes a package
# file's time (the preloader then counts itself stale), which would end another test's preloader.
pytestmark = pytest.mark.xdist_group("preloader")

FLOW = textwrap.dedent("""
    import sys
    from airflow_flowspec import FlowSpec, Parameter, step


    class EchoFlow(FlowSpec):
        word = Parameter("word", default="hello")
        fail = Parameter("fail", default=False, type=bool)

        @step
        def start(self):
            self.shout = self.word.upper()
            print("stdout is a terminal:", sys.stdout.isatty())
            self.next(self.end)

        @step
        def end(self):
            if self.fail:
                raise ValueError(f"told to fail after {self.shout}")
            print("said", self.shout)


    if __name__ == "__main__":
        EchoFlow()
""")


class Preloading:
    """Runs a flow file with the preloader on, in a folder of its own; knows its preloaders."""

    def __init__(self, root: Path, flow_file: Path):
        self.root = root
        self.flow_file = flow_file
        self.env = {
            **os.environ,
            "FLOWSPEC_PRELOAD": "1",
            "XDG_RUNTIME_DIR": str(root),
            "AIRFLOW__FLOWSPEC__PRELOAD_IDLE_MINUTES": "3",
        }
        self.folder = root / f"airflow-flowspec-{os.getuid()}"

    def run(self, *args: str, **how: Any) -> subprocess.CompletedProcess:
        return finish(self.launch(*args, **how))

    def launch(
        self,
        *args: str,
        flow_file: Path | None = None,
        options: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.Popen:
        """``[prefix] python [options] flow.py run [args]``, started; :func:`finish` waits for it."""
        flow_file = flow_file or self.flow_file
        return subprocess.Popen(
            [*prefix, sys.executable, *options, str(flow_file), "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=flow_file.parent,
            env=merged(self.env, env),
            preexec_fn=preexec_fn,
        )

    def start_preloader(
        self,
        options: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """Start the preloader a run started so would start at its end, without that first run
        (the database made first, as that run would have: runs may go on while it warms up)."""
        migrate = (
            "from airflow_flowspec.airflow import local_run as l; l.ensure_database(l.prepare_environment())"
        )
        if not list((Path(self.env["FLOWSPEC_HOME"]) / "airflow").glob(".flowspec-db-ready-*")):
            subprocess.run([sys.executable, "-c", migrate], env=self.env, check=True, timeout=240)
        code = "from airflow_flowspec import preload; preload.start_preloader(preload.socket_path())"
        subprocess.run([sys.executable, *options, "-c", code], env=merged(self.env, env),
                       preexec_fn=preexec_fn, check=True, timeout=60)  # fmt: skip

    def log(self) -> str:
        return "".join(path.read_text() for path in self.folder.glob("*.log"))

    def wait_until_ready(self, count: int = 1, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(" ready at ") < count:
            assert time.monotonic() < deadline, f"no preloader became ready:\n{self.log()}"
            time.sleep(0.2)

    def processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "airflow_flowspec.airflow.preloader" in cmdline and any(
                str(self.folder) in a for a in cmdline
            ):
                found.append(process)
        return found

    def stop(self) -> None:
        for process in self.processes():
            process.terminate()
        gone, alive = psutil.wait_procs(self.processes(), timeout=10)
        for process in alive:
            process.kill()
        assert not self.processes(), "a preloader outlived its test"


def merged(environment: dict[str, str], changes: dict[str, str | None] | None) -> dict[str, str]:
    """``environment`` with ``changes`` made (a variable changed to None is left out)."""
    every = {**environment, **(changes or {})}
    return {name: value for name, value in every.items() if value is not None}


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=240)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def preloading(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="fp-", dir="/tmp"))  # a Unix socket path must stay short
    flow_file = tmp_path / "echo_flow.py"
    flow_file.write_text(FLOW)
    helper = Preloading(root, flow_file)
    try:
        yield helper
    finally:
        helper.stop()


def normalized(text: str) -> str:
    """Output with what differs between any two runs (run ids, short ids, times, scratch paths)
    named instead."""
    text = re.sub(r"manual__[0-9T:.+-]+", "<run>", text)
    text = re.sub(r"\(run-id \d+\)", "(run-id <n>)", text)  # the short id, and the prefixes naming it
    text = re.sub(r"\[\d+/", "[<n>/", text)
    text = re.sub(r" run \d+ \(Airflow run ", " run <n> (Airflow run ", text)
    text = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ", "<time> ", text, flags=re.MULTILINE)
    text = re.sub(r" \(pid \d+\)\]", "]", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?", "<time>", text)
    return re.sub(r"/code/[0-9a-f]{64}/", "/code/<package>/", text)


def test_a_warm_run_prints_stores_and_exits_as_a_cold_one(preloading, monkeypatch):
    cold = preloading.run("--no-preload", "--word", "ahoy")
    assert cold.returncode == 0, cold.stderr
    first = preloading.run("--word", "ahoy")  # no preloader yet: cold, and starts one at its end
    assert first.returncode == 0 and normalized(first.stdout) == normalized(cold.stdout)
    preloading.wait_until_ready()
    warm = preloading.run("--word", "ahoy")
    assert warm.returncode == 0, warm.stderr
    assert normalized(warm.stdout) == normalized(cold.stdout)
    assert normalized(warm.stderr) == normalized(cold.stderr)
    assert preloading.log().count(" serves ") == 1  # the warm run, and only it, was the preloader's

    from airflow_flowspec.client import Flow, namespaces

    monkeypatch.setattr(namespaces, "_chosen", None)
    runs = {run.id: run for run in Flow("EchoFlow")}
    warm_id = run_id_of(warm.stdout)
    cold_id = run_id_of(cold.stdout)
    assert runs[warm_id].data.shout == runs[cold_id].data.shout == "AHOY"
    assert runs[warm_id].tags == runs[cold_id].tags

    status = preloading.folder.stat()
    assert status.st_mode & 0o777 == 0o700
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in preloading.folder.glob("*.sock"))


def test_a_failing_step_and_a_lint_error_end_warm_runs_as_they_end_cold_ones(preloading):
    preloading.run()
    preloading.wait_until_ready()
    for args in (("--fail", "true"), ("--word",)):  # a step's exception; a missing option value
        cold = preloading.run("--no-preload", *args)
        warm = preloading.run(*args)
        assert cold.returncode != 0 and warm.returncode == cold.returncode
        assert normalized(warm.stdout) == normalized(cold.stdout)
        assert normalized(warm.stderr).splitlines()[-3:] == normalized(cold.stderr).splitlines()[-3:]
        if args[0] == "--fail":
            assert "told to fail after HELLO" in warm.stdout + warm.stderr
    assert preloading.log().count(" serves ") == 1  # the option error never reached the preloader
    bad = preloading.flow_file.with_name("bad_flow.py")
    bad.write_text(FLOW.replace("self.next(self.end)", "self.next(self.nowhere)"))
    cold = subprocess.run([sys.executable, str(bad), "run", "--no-preload"], capture_output=True, text=True,
                          env=preloading.env, timeout=120)  # fmt: skip
    warm = subprocess.run([sys.executable, str(bad), "run"], capture_output=True, text=True,
                          env=preloading.env, timeout=120)  # fmt: skip
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert cold.returncode == 1 and "nowhere" in cold.stderr


def sleepy_flow(folder: Path) -> Path:
    """The test flow, its start step printing "sleeping" and then sleeping ``--nap`` seconds (30)."""
    sleepy = folder / "sleepy_flow.py"
    sleepy.write_text(
        FLOW.replace('    fail = Parameter(', '    nap = Parameter("nap", default=30)\n    fail = Parameter(')
        .replace('print("stdout is a terminal:", sys.stdout.isatty())',
                 'print("sleeping", flush=True)\n        import time; time.sleep(self.nap)')
    )  # fmt: skip
    return sleepy


def test_ctrl_c_ends_warm_and_cold_runs_alike_and_is_ignored_alike_where_the_caller_ignores_it(
    preloading, tmp_path
):
    """Guards: Ctrl-C reaches a warm run's step as it reaches a cold one's, and a caller that
    ignores it (a shell's background job) has both runs ignore it: the child takes the caller's
    signal dispositions, not the preloader's."""
    sleepy = sleepy_flow(tmp_path)
    preloading.run()
    preloading.wait_until_ready()

    def interrupted(*args: str, ctrl_c: object) -> tuple[int, str, float]:
        # The test's own runner may ignore SIGINT (CI starts it in the background): each run gets
        # the disposition under test, as a terminal or a background job would give it.
        process = subprocess.Popen([sys.executable, str(sleepy), "run", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=preloading.env,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, ctrl_c))  # fmt: skip
        seen = ""
        while "sleeping" not in seen:  # printed by the step's body: Ctrl-C finds the step running
            line = process.stdout.readline()
            assert line, seen
            seen += line
        pressed = time.monotonic()
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
        return process.returncode, seen + rest, time.monotonic() - pressed

    for args in (("--no-preload",), ()):
        code, output, took = interrupted(*args, ctrl_c=signal.SIG_DFL)
        assert (code, took < 10) == (1, True), (args, output)
        assert "KeyboardInterrupt" in output and "failed in step(s): start" in output
        code, output, took = interrupted(*args, "--nap", "3", ctrl_c=signal.SIG_IGN)
        assert code == 0 and "said HELLO" in output and "KeyboardInterrupt" not in output, (args, output)
    assert preloading.log().count(" serves ") == 2  # both runs without --no-preload were warm


def test_a_warm_run_whose_caller_is_killed_ends_also_when_it_ignores_sighup(preloading, tmp_path):
    """Guards: nothing is left running. A cold run dies with its process; a warm run's caller
    killed (SIGKILL: it forwards nothing) ends the run with SIGHUP, and with SIGKILL a few seconds
    later when the run ignores SIGHUP, as a run started under nohup does."""
    sleepy = sleepy_flow(tmp_path)
    preloading.run()
    preloading.wait_until_ready()
    for hangup, within in ((signal.SIG_DFL, 3), (signal.SIG_IGN, 12)):

        def hangup_disposition(hangup=hangup) -> None:
            signal.signal(signal.SIGHUP, hangup)

        process = subprocess.Popen([sys.executable, str(sleepy), "run"], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=preloading.env,
                                   preexec_fn=hangup_disposition)  # fmt: skip
        seen = ""
        while "sleeping" not in seen:
            line = process.stdout.readline()
            assert line, seen
            seen += line
        supervisor = int(re.findall(r"\(supervisor (\d+)\)", preloading.log())[-1])
        (run,) = psutil.Process(supervisor).children()
        process.kill()
        process.communicate(timeout=10)
        started = time.monotonic()
        _, alive = psutil.wait_procs([run], timeout=within + 10)
        assert not alive, f"the run outlived its killed caller (SIGHUP {hangup!r})"
        assert time.monotonic() - started < within

    # The other way round: the run's supervisor killed. Nothing would report the run's end, so
    # the caller stops it, says so in one line and exits 1.
    process = subprocess.Popen([sys.executable, str(sleepy), "run"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=preloading.env)  # fmt: skip
    while "sleeping" not in process.stdout.readline():
        assert process.poll() is None, process.stderr.read()
    supervisor = psutil.Process(int(re.findall(r"\(supervisor (\d+)\)", preloading.log())[-1]))
    (run,) = supervisor.children()
    supervisor.kill()
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 1 and "lost the preloaded run" in stderr and "it was stopped" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    _, alive = psutil.wait_procs([run], timeout=5)
    assert not alive, "the run outlived its supervisor"


def test_a_changed_package_file_makes_a_new_preloader_before_it_serves(preloading):
    """Guards: the preloader never serves a run with code that has changed since it started."""
    preloading.run()
    preloading.wait_until_ready()
    touched = REPO / "airflow_flowspec" / "preload.py"
    before = touched.stat()
    try:
        os.utime(touched, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
        run = preloading.run()  # answered "stale": runs cold, and starts a new preloader after
        assert run.returncode == 0 and "said HELLO" in run.stdout
        assert "exits: stale: " + str(touched) in preloading.log()
        preloading.wait_until_ready(count=2)
        served = preloading.log().count(" serves ")
        assert preloading.run().returncode == 0
        assert preloading.log().count(" serves ") == served + 1
    finally:
        os.utime(touched, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_preloader_that_fails_the_hand_over_costs_one_line_and_a_cold_run(preloading):
    """Guards: a lost or crashed preloader never loses a run."""
    from airflow_flowspec import preload

    preloading.folder.mkdir(mode=0o700, exist_ok=True)
    environment = {k: v for k, v in preloading.env.items() if k not in ("FLOWSPEC_PRELOAD",)}
    path = _socket_path_for(environment)
    crashing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashing.bind(str(path))
    crashing.listen(1)

    def accept_and_close() -> None:
        connection, _ = crashing.accept()
        connection.close()

    threading.Thread(target=accept_and_close, daemon=True).start()
    try:
        run = preloading.run()
    finally:
        crashing.close()
    assert run.returncode == 0 and "said HELLO" in run.stdout
    lines = [line for line in run.stderr.splitlines() if line.startswith("airflow-flowspec:")]
    assert len(lines) == 1 and "running it cold" in lines[0]
    assert preload.CHILD_VARIABLE not in run.stdout


def _socket_path_for(environment: dict[str, str]) -> Path:
    """The socket path a run with ``environment`` uses, computed as the run computes it."""
    code = "from airflow_flowspec import preload; print(preload.socket_path())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True
    )
    return Path(out.stdout.strip())


def test_an_idle_preloader_exits_and_removes_its_socket(preloading):
    preloading.folder.mkdir(mode=0o700, exist_ok=True)
    path = preloading.folder / "idle.sock"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_flowspec.airflow.preloader",
            "--socket",
            str(path),
            "--idle-minutes",
            "0.02",
        ],
        env=preloading.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "exits: idle" in output
    assert not path.exists()


# -- a warm run is the caller's process -----------------------------------------------------------

PROBE_FLOW = textwrap.dedent('''
    import json
    import os
    import sys

    from airflow_flowspec import FlowSpec, step


    def thread_stack_size():
        """The stack a new thread gets (glibc sizes it by RLIMIT_STACK as the process started)."""
        import ctypes
        import threading

        sizes = []

        def measure():
            libc = ctypes.CDLL(None)
            libc.pthread_self.restype = ctypes.c_ulong
            attributes = ctypes.create_string_buffer(256)
            if libc.pthread_getattr_np(ctypes.c_ulong(libc.pthread_self()), attributes) != 0:
                return
            size, address = ctypes.c_size_t(), ctypes.c_void_p()
            libc.pthread_attr_getstack(attributes, ctypes.byref(address), ctypes.byref(size))
            libc.pthread_attr_destroy(attributes)
            sizes.append(size.value)

        thread = threading.Thread(target=measure)
        thread.start()
        thread.join()
        return sizes[0] if sizes else None


    def process_report():
        """What the step's process took from whoever started the run."""
        import locale
        import resource
        import socket
        import tempfile
        import time
        import warnings
        from datetime import datetime

        import pendulum
        from airflow import settings
        from airflow._shared.timezones import timezone as core_timezone
        from airflow.sdk import timezone as sdk_timezone

        from airflow_flowspec import config

        umask = os.umask(0)
        os.umask(umask)
        with open(f"made-{os.getpid()}", "w") as made:
            mode = os.fstat(made.fileno()).st_mode & 0o777
        os.unlink(made.name)
        loopback = socket.socket()
        loopback.settimeout(5)
        try:
            loopback.connect(("127.0.0.1", int(os.environ.get("PROBE_PORT", "9"))))
            reachable = True
        except OSError:
            reachable = False
        finally:
            loopback.close()
        with open("/proc/self/oom_score_adj") as adjustment:
            oom_score_adj = int(adjustment.read())
        return {
            "umask": oct(umask),
            "new file mode": oct(mode),
            "limits": {
                name: resource.getrlimit(getattr(resource, name))
                for name in dir(resource)
                if name.startswith("RLIMIT_")
            },
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "scheduling policy": os.sched_getscheduler(0),
            "cpus": sorted(os.sched_getaffinity(0)),
            "oom_score_adj": oom_score_adj,
            "time zone": [time.tzname, datetime.now().astimezone().utcoffset().total_seconds()],
            "pendulum's local zone": pendulum.local_timezone().name,
            "Airflow's default zone": [
                settings.TIMEZONE.name,
                sdk_timezone.datetime(2026, 1, 1).tzinfo.name,
                core_timezone.datetime(2026, 1, 1).tzinfo.name,
            ],
            "temporary folder": tempfile.gettempdir(),
            "scratch folder": config.scratch_dir(),
            "streams": {
                name: [stream.encoding, stream.errors, stream.line_buffering, stream.write_through]
                for name in ("stdin", "stdout", "stderr", "__stdout__")
                for stream in [getattr(sys, name)]
            },
            "flags": repr(sys.flags),
            "assertions": __debug__,
            "warning options": sys.warnoptions,
            "warning filters": [
                [action, getattr(message, "pattern", None), category.__name__,
                 getattr(module, "pattern", None), line]
                for action, message, category, module, line in warnings.filters
            ],
            "-X options": sys._xoptions,
            "hash": hash("flowspec"),
            "thread stack": thread_stack_size(),
            "file system encoding": [sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()],
            "locale": [locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)],
            "command line": sys.orig_argv,
            "module search path": sys.path,
            "network namespace": os.readlink("/proc/self/ns/net"),
            "loopback reachable": reachable,
        }


    class ProbeFlow(FlowSpec):
        @step
        def start(self):
            print("PROBE " + json.dumps(process_report(), sort_keys=True), flush=True)
            print("printed: naïve", flush=True)
            self.next(self.end)

        @step
        def end(self):
            pass


    if __name__ == "__main__":
        ProbeFlow()
''')  # fmt: skip

#: A run with the preloader off, as ``run --no-preload`` is, with the same command line.
COLD = {"FLOWSPEC_PRELOAD": "0"}


def report(run: subprocess.CompletedProcess) -> dict[str, Any]:
    """The probe flow's report of its step's process."""
    assert run.returncode == 0, run.stderr
    (line,) = [line for line in printed_texts(run.stdout) if line.startswith("PROBE ")]
    return json.loads(line.removeprefix("PROBE "))


def notices(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("airflow-flowspec:")]


def without(values: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: value for name, value in values.items() if name not in names}


@pytest.fixture(scope="module")
def probing(tmp_path_factory):
    """A preloader started in this test's own context (UTC; Airflow's default zone "system", so
    its cached zone is the preloader's until a run reads TZ again), and the probe flow."""
    root = Path(tempfile.mkdtemp(prefix="fp-", dir="/tmp"))
    flow_file = tmp_path_factory.mktemp("probe") / "probe_flow.py"
    flow_file.write_text(PROBE_FLOW)
    helper = Preloading(root, flow_file)
    helper.env.update({"TZ": "UTC", "AIRFLOW__CORE__DEFAULT_TIMEZONE": "system"})
    helper.env.pop("TMPDIR", None)
    helper.start_preloader()
    try:
        yield helper
    finally:
        helper.stop()


def as_a_caller_of_its_own() -> None:
    """A shell's ``umask 077; ulimit ...; nice -n 7 taskset chrt -b``, and an OOM score of 500."""
    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1000, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    resource.setrlimit(resource.RLIMIT_CORE, (4096, 8192))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**40, 2**41))
    os.setpriority(os.PRIO_PROCESS, 0, 7)
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, cpus[-1:])
    with open("/proc/self/oom_score_adj", "w") as adjustment:
        adjustment.write("500")


def test_a_warm_run_takes_the_callers_umask_limits_nice_time_zone_temporary_folder_and_streams(
    probing, tmp_path
):
    """Guards, each by a field of the report that differs without it: the child takes the caller's
    umask, every resource limit, nice value, scheduling policy, CPUs and OOM score (from the
    request, in the child); reads TZ again (time.tzset, pendulum's and Airflow's cached local zone)
    and TMPDIR (tempfile's cached folder, and with it the S3 scratch folder); sets up its standard
    streams as the caller's Python did (PYTHONIOENCODING); and quiet_airflow_warnings, called
    again in the child, leaves the warning filters in a cold run's order."""
    folder = tmp_path / "temporary"
    folder.mkdir()
    settings = {"TZ": "Asia/Tokyo", "TMPDIR": str(folder), "PYTHONIOENCODING": "ascii:backslashreplace"}
    cold = probing.run(env={**settings, **COLD}, preexec_fn=as_a_caller_of_its_own)
    probing.wait_until_ready()
    served = probing.log().count(" serves ")
    warm = probing.run(env=settings, preexec_fn=as_a_caller_of_its_own)
    assert probing.log().count(" serves ") == served + 1, warm.stderr  # it was warm
    assert notices(warm) == []

    assert without(report(warm), "hash") == without(report(cold), "hash")
    taken = report(warm)
    assert (taken["umask"], taken["new file mode"], taken["nice"]) == ("0o77", "0o600", 7)
    assert taken["limits"]["RLIMIT_NOFILE"][0] == 1000 and taken["limits"]["RLIMIT_CORE"] == [4096, 8192]
    assert (taken["scheduling policy"], taken["oom_score_adj"]) == (os.SCHED_BATCH, 500)
    assert taken["time zone"] == [["JST", "JST"], 9 * 3600]
    assert taken["Airflow's default zone"] == [taken["pendulum's local zone"]] * 3 == ["Asia/Tokyo"] * 3
    assert taken["temporary folder"] == str(folder)
    assert taken["scratch folder"].startswith(str(folder))
    assert taken["streams"]["stdout"][:2] == ["ascii", "backslashreplace"]
    assert "printed: na\\xefve" in warm.stdout and "printed: na\\xefve" in cold.stdout


#: Interpreter options and start-up variables a forked child cannot take. LANG=C alone: Python
#: then sets LC_CTYPE in its os.environ, which a preloader must not be started with.
OPTIONS = ("-O", "-P", "-W", "always::UserWarning", "-X", "int_max_str_digits=5000")
STARTUP = {"PYTHONWARNINGS": "ignore::FutureWarning", "PYTHONHASHSEED": "7", "LANG": "C", "LC_ALL": None,
           "LC_CTYPE": None}  # fmt: skip


def with_a_larger_stack() -> None:
    resource.setrlimit(resource.RLIMIT_STACK, (16 * 2**20, resource.getrlimit(resource.RLIMIT_STACK)[1]))


def test_a_caller_with_other_interpreter_options_gets_a_preloader_started_with_them(probing):
    """Guards: a caller with interpreter options (-O, -P, -W, -X) and start-up variables
    (PYTHONWARNINGS, PYTHONHASHSEED, the locale) is not served by the preloader of a plain
    ``python`` (its first run is cold, with its own options), and the preloader it starts has
    them all, PYTHONWARNINGS counted once and LC_CTYPE as it was before Python set it: the warm
    run's flags, warning options and filters, hash seed, locale, file system encoding, thread
    stacks and module search path (no script folder under -P) are the cold run's."""
    probing.wait_until_ready()
    logs = set(probing.folder.glob("*.log"))
    how = {"options": OPTIONS, "env": STARTUP, "preexec_fn": with_a_larger_stack}
    cold = probing.run(**how)  # none serves these options yet: cold, and starts one at its end
    assert notices(cold) == [] and "optimize=1" in report(cold)["flags"], cold.stderr
    deadline = time.monotonic() + 90
    while not any(" ready at " in log.read_text() for log in set(probing.folder.glob("*.log")) - logs):
        assert time.monotonic() < deadline, f"no preloader became ready:\n{probing.log()}"
        time.sleep(0.2)
    warm = probing.run(**how)
    (log,) = set(probing.folder.glob("*.log")) - logs
    assert log.read_text().count(" serves ") == 1 and notices(warm) == [], warm.stderr

    assert report(warm) == report(cold)
    taken = report(warm)
    assert not taken["assertions"] and "safe_path=True" in taken["flags"]
    assert taken["warning options"] == ["ignore::FutureWarning", "always::UserWarning"]
    assert taken["-X options"] == {"int_max_str_digits": "5000"}
    assert str(probing.flow_file.parent) not in taken["module search path"]
    assert taken["thread stack"] in (16 * 2**20, None)  # None: no glibc to ask


def test_what_a_forked_child_cannot_take_is_in_the_fingerprint(tmp_path):
    """Guards, one by one: each interpreter option, start-up variable, the stack limit and the
    process context changes the fingerprint (so the socket), and so gets its caller a preloader
    of its own; a change the flow makes to os.environ does not (it would make a preloader stale
    at every run); ``python -i`` and ``-x`` run cold."""
    script = tmp_path / "fingerprint.py"
    script.write_text(
        "# a first line, which -x skips\n"
        "import json, os, sys\n"
        "os.environ.update(PYTHONHASHSEED='1', LC_ALL='C') if 'change' in sys.argv else None\n"
        "from airflow_flowspec import preload\n"
        "print(json.dumps([preload.fingerprint(), preload.enabled()]))\n"
    )
    base = merged(os.environ, {"LANG": "C.UTF-8", "LC_ALL": None, "LC_CTYPE": None, "FLOWSPEC_PRELOAD": "1"})

    def printed(*options: str, env: dict[str, str | None] | None = None, **how: Any) -> list[Any]:
        prefix, args = how.pop("prefix", ()), how.pop("args", ())
        command = [*prefix, sys.executable, *options, str(script), *args]
        out = subprocess.run(command, env=merged(base, env), capture_output=True, text=True, **how)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    plain, enabled = printed()
    assert enabled and printed() == [plain, True]
    for options in (("-O",), ("-B",), ("-W", "error"), ("-X", "dev"), ("-P",), ("-E",)):
        assert printed(*options)[0]["interpreter"] != plain["interpreter"], options
    for name, value in (
        ("PYTHONWARNINGS", "error"),
        ("PYTHONHASHSEED", "1"),
        ("LANG", "C"),
        ("LC_ALL", "C.UTF-8"),
    ):
        assert printed(env={name: value})[0]["interpreter"] != plain["interpreter"], name
    assert printed(preexec_fn=with_a_larger_stack)[0]["interpreter"] != plain["interpreter"]
    assert printed(prefix=("unshare", "-u"))[0]["context"] != plain["context"]
    assert printed(args=("change",)) == [plain, True]
    for options in (("-i",), ("-x",)):
        assert printed(*options, stdin=subprocess.DEVNULL)[1] is False, options


def test_a_preloader_not_started_as_its_callers_were_exits_before_warming_up(preloading):
    """Guards: a preloader whose own fingerprint does not name its socket (its interpreter could
    not be started as its callers' was) exits at once, instead of warming up to be found stale by
    every run."""
    preloading.folder.mkdir(mode=0o700, exist_ok=True)
    path = preloading.folder / ("0" * 20 + ".sock")
    command = [sys.executable, "-m", "airflow_flowspec.airflow.preloader", "--socket", str(path)]
    out = subprocess.run(command, env=preloading.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "exits: not started as its callers were" in out.stderr, out.stderr
    assert " ready at " not in out.stdout and not path.exists()


def test_a_run_in_another_namespace_or_cgroup_never_reaches_a_preloader_outside_it(probing, tmp_path):
    """Guards: the namespaces and cgroup are part of the fingerprint (a run under ``unshare -n``
    is cold, silently, as a first run is, and starts no preloader that only it could use); the
    preloader compares the caller's namespaces and cgroup, read through /proc from the pid the
    socket reports, with its own and declines in one line whatever the caller says about itself."""
    listener = socket.create_server(("127.0.0.1", 0))
    probing.env["PROBE_PORT"] = str(listener.getsockname()[1])
    own = os.readlink("/proc/self/ns/net")
    from airflow_flowspec import preload

    liar = tmp_path / "liar.py"  # reports the preloader's context as its own
    liar.write_text(
        textwrap.dedent("""
        import json, runpy, sys
        from airflow_flowspec import preload
        outer, real = json.loads(sys.argv.pop(1)), preload.process_context
        preload.process_context = lambda pid="self": outer if pid == "self" else real(pid)
        sys.argv.pop(0)
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    )
    probing.wait_until_ready()  # for the lying run to reach
    logs = set(probing.folder.glob("*.log"))
    procs = new_cgroup()
    try:
        unshared = ("unshare", "-n")
        runs = {
            "cold": probing.launch(prefix=unshared, env=COLD),
            "preloaded": probing.launch(prefix=unshared),
            "lying": subprocess.Popen(
                ["unshare", "-n", "-m", "-u", "-i", sys.executable, str(liar),
                 json.dumps(preload.process_context()), str(probing.flow_file), "run"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=probing.env,
                cwd=probing.flow_file.parent, preexec_fn=lambda: procs and procs.write_text(str(os.getpid())),
            ),
        }  # fmt: skip
        runs = {name: finish(process) for name, process in runs.items()}
    finally:
        if procs is not None:
            procs.parent.rmdir()
        listener.close()

    for name in ("cold", "preloaded"):
        assert report(runs[name])["loopback reachable"] is False, name
        assert report(runs[name])["network namespace"] != own
    apart = ("hash", "network namespace")  # each run is in a namespace of its own
    assert without(report(runs["preloaded"]), *apart) == without(report(runs["cold"]), *apart)
    assert notices(runs["preloaded"]) == []  # a run of its own context: cold as a first run is

    lying = runs["lying"]
    assert report(lying)["loopback reachable"] is False
    (line,) = notices(lying)
    assert line.startswith("airflow-flowspec: running this cold: its network namespace, mount ")
    for name in ("network namespace", "mount namespace", "IPC namespace", "(UTS) namespace"):
        assert name in line
    assert ("cgroup are not the preloader's" in line) == (procs is not None)
    assert "declines " + str(probing.flow_file) in probing.log()
    assert set(probing.folder.glob("*.log")) == logs  # nothing started a preloader


def new_cgroup() -> Path | None:
    """A new, empty cgroup's ``cgroup.procs`` (cgroup v2, or v1's pids hierarchy), or None where
    this process may not make one."""
    for hierarchy in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/pids"):
        if not os.path.exists(os.path.join(hierarchy, "cgroup.procs")):
            continue
        folder = Path(hierarchy) / f"flowspec-test-{os.getpid()}"
        try:
            folder.mkdir(exist_ok=True)
        except OSError:
            continue
        return folder / "cgroup.procs"
    return None


PR_CAPBSET_DROP, CAP_SYS_NICE, CAP_SYS_RESOURCE = 24, 23, 24


def unprivileged(nice: int, hard_file_limit: int) -> Callable[[], None]:
    """A caller at ``nice`` with at most ``hard_file_limit`` open files, that (root or not) may
    neither lower its nice value nor raise a hard limit: CAP_SYS_NICE and CAP_SYS_RESOURCE gone."""

    def preexec() -> None:
        import ctypes

        os.setpriority(os.PRIO_PROCESS, 0, nice)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard_file_limit))
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (CAP_SYS_NICE, CAP_SYS_RESOURCE):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return preexec


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities for a caller needs root")
def test_a_preloader_that_cannot_give_a_run_the_callers_nice_value_or_limits_declines_and_is_replaced(
    preloading,
):
    """Guards: a child that cannot take the caller's nice value (lower than its preloader's) or a
    hard limit (higher than its preloader's) is not run: the caller runs cold with one line naming
    both, and starts a preloader that can, which takes the socket over (a preloader started by a
    restricted caller is not left to turn everyone else away)."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 8192:
        pytest.skip("needs a hard limit of 8192 open files to hand out")
    preloading.flow_file.write_text(PROBE_FLOW)
    preloading.start_preloader(preexec_fn=unprivileged(nice=5, hard_file_limit=4096))
    preloading.wait_until_ready()
    caller = unprivileged(nice=0, hard_file_limit=8192)
    declined = preloading.run(preexec_fn=caller)
    (line,) = notices(declined)
    assert "RLIMIT_NOFILE 1024/8192 (its own hard limit is 4096)" in line
    assert "nice 0 (its own is 5;" in line and line.endswith("a preloader that can starts after it.")
    assert (report(declined)["nice"], report(declined)["limits"]["RLIMIT_NOFILE"]) == (0, [1024, 8192])

    preloading.wait_until_ready(count=2)
    warm = preloading.run(preexec_fn=caller)
    assert notices(warm) == [] and preloading.log().count(" serves ") == 1, warm.stderr
    assert without(report(warm), "hash") == without(report(declined), "hash")


# -- preloaders that add up: at most [flowspec] preload_max_count per user -------------------------


def shell_preloaders(preloading: Preloading, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "airflow_flowspec.shell", "preloaders", *args]
    return subprocess.run(command, env=preloading.env, capture_output=True, text=True, timeout=60)


def registered(preloading: Preloading) -> dict[Path, int]:
    """The live preloaders' pids by socket, as the cap counts them."""
    from airflow_flowspec import preloaders

    with preloaders.lock(preloading.folder):
        return {registration.socket: registration.pid for registration in preloaders.live(preloading.folder)}


def wait_gone(pids: list[int]) -> None:
    _, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids], timeout=15)
    assert not alive, f"preloaders {[process.pid for process in alive]} did not exit"


def a_dead_preloaders_registration(folder: Path) -> tuple[Path, Path]:
    """What a preloader killed with SIGKILL leaves: its socket and its registration (here, the
    most recently used one: counted, it would make a live preloader exit)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = folder / ("f" * 20 + ".sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()
    registration = path.with_suffix(".json")
    record = {"pid": dead.pid, "process_start": "1", "started": time.time(), "socket": str(path),
              "socket_inode": path.stat().st_ino, "serves": "a preloader that was killed"}  # fmt: skip
    registration.write_text(json.dumps(record))
    os.utime(registration, (time.time() + 60, time.time() + 60))
    return path, registration


def test_a_new_preloader_past_the_cap_makes_the_least_recently_used_exit(preloading):
    """Guards the user's memory: starting preloaders for a third environment leaves two (the
    default cap), the one that served a run most recently among them; a registration left by a
    preloader that died does not count; ``[flowspec] preload_max_count`` is honoured, and
    ``airflow-flowspec preloaders`` lists them and stops them."""
    preloading.folder.mkdir(mode=0o700, exist_ok=True)
    dead_socket, dead_registration = a_dead_preloaders_registration(preloading.folder)
    environments = {name: {"AIRFLOW__FLOWSPEC_TESTS__ENVIRONMENT": name} for name in ("a", "b", "c")}
    sockets = {name: _socket_path_for(merged(preloading.env, env)) for name, env in environments.items()}
    assert len(set(sockets.values())) == 3  # three fingerprints: three preloaders

    # Two starting at once, under the default cap: neither makes the other exit.
    preloading.start_preloader(env=environments["a"])
    preloading.start_preloader(env=environments["b"])
    preloading.wait_until_ready(count=2)
    first_two = registered(preloading)
    assert set(first_two) == {sockets["a"], sockets["b"]}
    assert not dead_socket.exists() and not dead_registration.exists()

    warm = preloading.run(env=environments["a"])  # a is now the more recently used
    assert warm.returncode == 0 and preloading.log().count(" serves ") == 1, warm.stderr

    preloading.start_preloader(env=environments["c"])
    preloading.wait_until_ready(count=3)
    wait_gone([first_two[sockets["b"]]])
    assert set(registered(preloading)) == {sockets["a"], sockets["c"]}
    assert not sockets["b"].exists() and not sockets["b"].with_suffix(".json").exists()
    assert f"asks preloader {first_two[sockets['b']]} to exit" in preloading.log()
    assert "exits: asked to stop" in sockets["b"].with_suffix(".log").read_text()

    listing = shell_preloaders(preloading)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith(f"2 preloaders in {preloading.folder} (at most 2 at once; each exits after 3 ")
    assert lines[1].split() == ["PID", "AGE", "IDLE", "MEMORY", "SERVES"]
    rows = [line.split() for line in lines[2:]]
    assert [int(row[0]) for row in rows] == [registered(preloading)[sockets[name]] for name in ("c", "a")]
    assert all(row[4] == "MB" and int(row[3]) > 50 for row in rows), listing.stdout
    assert all(sys.executable in line or os.path.realpath(sys.executable) in line for line in lines[2:])
    assert "AIRFLOW__FLOWSPEC_TESTS__ENVIRONMENT" in listing.stdout and " a;" not in listing.stdout

    # One started with a cap of 1 makes both others exit.
    before = registered(preloading)
    preloading.start_preloader(env={**environments["b"], "AIRFLOW__FLOWSPEC__PRELOAD_MAX_COUNT": "1"})
    preloading.wait_until_ready(count=4)
    wait_gone(list(before.values()))
    (only,) = registered(preloading).items()
    assert only[0] == sockets["b"]

    stopped = shell_preloaders(preloading, "--stop")
    assert stopped.returncode == 0 and stopped.stdout.startswith("Stopped 1 preloader in "), stopped
    wait_gone([only[1]])
    assert not list(preloading.folder.glob("*.sock"))
    assert not list(preloading.folder.glob("*.json"))
    assert shell_preloaders(preloading).stdout.startswith("0 preloaders in ")
    assert shell_preloaders(preloading, "--stop").stdout.startswith("No preloader runs in ")


def test_a_registration_counts_only_while_its_process_runs_and_owns_its_socket(tmp_path):
    """Guards the cap against what dead preloaders leave: a registration whose pid is gone, or
    names another process now (pid reuse), or whose socket another preloader took, is not live,
    and is removed (with the socket only when that is still the dead one's)."""
    from airflow_flowspec import preloaders

    folder = Path(tempfile.mkdtemp(prefix="fp-", dir="/tmp"))

    def listening(name: str) -> tuple[Path, socket.socket]:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(folder / f"{name}.sock"))
        return folder / f"{name}.sock", listener

    ours, ours_listener = listening("ours")
    reused, reused_listener = listening("reused")
    taken, taken_listener = listening("taken")
    print_ = {"python": sys.executable, "environment": {"FLOWSPEC_HOME": "/somewhere"}, "interpreter": {}}
    with preloaders.lock(folder):
        for path in (ours, reused, taken):
            preloaders.register(path, path.stat().st_ino, print_)
    record = json.loads(reused.with_suffix(".json").read_text())
    reused.with_suffix(".json").write_text(json.dumps({**record, "process_start": "1"}))  # pid reused
    replacement = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    replacement.bind(f"{taken}.new")
    os.replace(f"{taken}.new", taken)  # another preloader took the path over (--replace)
    taken_listener.close()

    with preloaders.lock(folder):
        (live,) = preloaders.live(folder)
    assert live.socket == ours and live.pid == os.getpid()
    assert live.serves == f"{sys.executable}; FLOWSPEC_HOME=/somewhere"
    assert not reused.exists() and not reused.with_suffix(".json").exists()
    assert taken.exists() and not taken.with_suffix(".json").exists()
    preloaders.unregister(live.path)
    assert not live.path.exists()
    for listener in (ours_listener, reused_listener, replacement):
        listener.close()


def test_run_help_says_where_preloaders_are_how_many_live_how_long_and_how_to_stop_them(preloading):
    out = preloading.run("--help", env={"AIRFLOW__FLOWSPEC__PRELOAD_MAX_COUNT": "3", "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    said = " ".join(out.stdout.split())
    assert f"Preloaders listen in {preloading.folder} (with their logs); at most 3 live at once" in said
    assert "each exits after 3 minutes without a run" in said
    assert "`airflow-flowspec preloaders --stop` stops them" in said

    bad = preloading.run(env={"AIRFLOW__FLOWSPEC__PRELOAD_MAX_COUNT": "none"})
    assert bad.returncode == 1 and "[flowspec] preload_max_count is 'none'" in bad.stderr
    assert not preloading.folder.exists() or not list(preloading.folder.glob("*.sock"))
