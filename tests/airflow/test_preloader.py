"""``python flow.py run`` through the preloader: the same output, artifacts and exit status as a
cold run, never stale, never lost, never left running.

Each test has a preloader folder of its own (``XDG_RUNTIME_DIR``), and every preloader started
in it is stopped (and checked gone) at the end.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from harness import REPO

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

    def run(self, *args: str, **popen: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(self.flow_file), "run", *args],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=self.flow_file.parent,
            env=self.env,
            **popen,
        )

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
    """Output with what differs between any two runs (run ids, times, scratch paths) named instead."""
    text = re.sub(r"manual__[0-9T:.+-]+", "<run>", text)
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
    warm_id = re.search(r"Run id: (\S+)", warm.stdout).group(1)
    cold_id = re.search(r"Run id: (\S+)", cold.stdout).group(1)
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
        while "sleeping" not in seen:
            line = process.stdout.readline()
            assert line, seen
            seen += line
        time.sleep(0.5)  # the step is in its sleep by now, as a user's Ctrl-C would find it
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
