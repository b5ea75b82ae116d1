"""``python flow.py run``'s DAG run: its ready tasks at once, each in a process of its own.

``dag.test()`` runs a DAG run's tasks one after another in its own process. ``run`` keeps its loop
(Airflow's ``DagRun.update_state`` says which tasks are ready; Airflow's in-process task runner,
the one ``dag.test()`` calls, runs each of them, with retries and deferral as Airflow defines them)
and runs every ready task in a forked copy of this process, up to ``max_workers`` at once, as
Metaflow's local runtime does. ``dag.test(use_executor=True)`` with Airflow's LocalExecutor was the
other way, and three things rule it out for a command people wait on: its task processes parse the
flow file again (and get the dags folder's DAG, not this run's: the branch ``--branch`` chose, the
retry delays ``run`` drops), they talk to an execution API over HTTP that would have to be served
from here, and its loop sleeps a second whenever no task is ready, which a flow of short steps would
pay at every step. A forked copy already holds this run's DAG, Airflow imported, and its in-process
execution API.

Every line a task writes reaches the terminal whole, on the stream the task used, prefixed as
Metaflow prefixes it: ``2026-12-07 14:11:40.626 [<run>/<step>/<task> (pid N)] <line>``. The run's own
lines (a task starting, finishing, failing, waiting for a retry) are printed here, where the task's
outcome is known; a task process's runtime prints none of them (:data:`LINES_PREFIXED`).

Ctrl-C (or SIGTERM) stops every running task: each gets SIGINT (once: a task process has a
process group of its own, out of the terminal's reach), then SIGKILL after
:data:`STOP_GRACE_SECONDS`; the tasks stopped are marked failed, and so is the run. A task process
dies with this process (``PR_SET_PDEATHSIG``), so a run killed outright leaves none behind.

The private Airflow APIs used here (``get_or_create_dagrun``, the SDK's ``_run_task``) are the ones
``dag.test()`` itself is built from.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

from airflow_flowspec.config import DEFAULT_MAX_WORKERS
from airflow_flowspec.runtime.task_log import LINES_PREFIXED

#: How long stopped tasks get to end on their own before they are killed.
STOP_GRACE_SECONDS = 5.0
#: A line longer than this is written out in pieces (a task printing without newlines).
_LONGEST_LINE = 64 * 1024
_PR_SET_PDEATHSIG = 1


@dataclass
class _Stream:
    """One of a task process's output pipes, and the partial line read from it so far."""

    fd: int
    target: TextIO
    pending: bytes = b""


@dataclass
class _TaskProcess:
    pid: int
    pidfd: int
    task_id: str
    map_index: int
    try_number: int
    label: str
    streams: list[_Stream] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        return self.task_id, self.map_index


class Console:
    """Where a run's lines go: the task's own lines and the run's, each whole and prefixed."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def line(self, label: str, text: str, *, pid: int | None = None, error: bool = False) -> None:
        head = f"[{label} (pid {pid})]" if pid else f"[{label}]"
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        stream = self.stderr if error else self.stdout
        stream.write(f"{stamp} {head} {text}\n")
        stream.flush()

    def run_line(self, text: str, *, error: bool = False) -> None:
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        stream = self.stderr if error else self.stdout
        stream.write(f"{stamp} {text}\n")
        stream.flush()


def run_dag(
    dag: Any,
    *,
    run_id: str,
    label_of: Callable[[str, int], str],
    logical_date: datetime,
    conf: dict[str, Any],
    max_workers: int = DEFAULT_MAX_WORKERS,
    console: Console | None = None,
) -> Any:
    """Create the DAG run ``run_id`` of ``dag`` and run it to its end; return the DagRun.

    ``label_of(task_id, map_index)`` names a task in the terminal's prefix (``run/step/task``).
    """
    from airflow import settings
    from airflow.utils.state import DagRunState

    console = console or Console()
    session = settings.Session()
    dag_run = _create_dag_run(dag, run_id, logical_date, conf, session)
    loop = _Loop(dag, dag_run, session, label_of, max(1, max_workers), console)
    with _interrupted_by_sigterm():
        try:
            loop.run()
        except KeyboardInterrupt:  # Ctrl-C: the run fails, as a step's own failure fails it
            loop.stop_all()
        except BaseException:
            loop.stop_all()
            raise
    if dag_run.state == DagRunState.RUNNING:  # stopped before its end
        dag_run.set_state(DagRunState.FAILED)
        session.commit()
    return dag_run


def _create_dag_run(dag: Any, run_id: str, logical_date: datetime, conf: dict[str, Any], session: Any) -> Any:
    """The DAG run, created as ``dag.test()`` creates its own."""
    from airflow.models.dagrun import get_or_create_dagrun
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.types import DagRunTriggeredByType

    dag.validate()
    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    # Callbacks do not survive serialization; dag.test() hands them over the same way.
    scheduler_dag.on_success_callback = dag.on_success_callback
    scheduler_dag.on_failure_callback = dag.on_failure_callback
    data_interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=logical_date)
    return get_or_create_dagrun(
        dag=scheduler_dag,
        run_id=run_id,
        logical_date=logical_date,
        data_interval=data_interval,
        run_after=logical_date,
        conf=conf,
        triggered_by=DagRunTriggeredByType.CLI,
        triggering_user_name=_user(),
        start_date=logical_date,
        session=session,
    )


class _Loop:
    def __init__(
        self,
        dag: Any,
        dag_run: Any,
        session: Any,
        label_of: Callable[[str, int], str],
        max_workers: int,
        console: Console,
    ):
        self.dag = dag
        self.dag_run = dag_run
        self.session = session
        self.label_of = label_of
        self.max_workers = max_workers
        self.console = console
        self.selector = selectors.DefaultSelector()
        self.running: dict[int, _TaskProcess] = {}  # by pid
        self.told_waiting: set[tuple[str, int, int]] = set()

    def run(self) -> None:
        from airflow.utils.state import DagRunState, TaskInstanceState

        while True:
            self.session.expire_all()
            schedulable, _ = self.dag_run.update_state(session=self.session)
            for ti in schedulable:  # as dag.test() readies them
                if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                    ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
                ti.scheduled_dttm = datetime.now(timezone.utc)
            self.session.commit()
            if self.dag_run.state != DagRunState.RUNNING and not self.running:
                return
            instances = self.dag_run.get_task_instances(session=self.session)
            busy = {process.key for process in self.running.values()}
            ready = sorted(
                (
                    ti
                    for ti in instances
                    if ti.state == TaskInstanceState.SCHEDULED and (ti.task_id, ti.map_index) not in busy
                ),
                key=lambda ti: (-(ti.priority_weight or 0), ti.task_id, ti.map_index),
            )
            for ti in ready[: max(0, self.max_workers - len(self.running))]:
                self._start(ti)
            waiting = [ti for ti in instances if ti.state == TaskInstanceState.UP_FOR_RETRY]
            if not self.running:
                if self.dag_run.state != DagRunState.RUNNING:
                    return
                if not ready:  # nothing runs or can: a retry's delay (a step on AWS Batch)
                    self._tell_waiting(waiting)
                    time.sleep(1.0)
                continue
            self._pump(timeout=1.0 if waiting else 30.0)

    # -- starting a task -------------------------------------------------------------------------

    def _start(self, ti: Any) -> None:
        from airflow.utils.state import TaskInstanceState

        task = self.dag.task_dict[ti.task_id]
        label = self.label_of(ti.task_id, ti.map_index)
        ti.state = TaskInstanceState.QUEUED  # taken: the next pass must not start it again
        self.session.commit()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        inherited = [fd for process in self.running.values() for fd in _fds(process)]
        key = (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the task's process: it never returns
            os.close(out_read)
            os.close(err_read)
            _task_process(key, task, out_write, err_write, inherited + [self.selector.fileno()])
        with contextlib.suppress(OSError):  # also done in the child: whichever comes first
            os.setpgid(pid, pid)
        os.close(out_write)
        os.close(err_write)
        process = _TaskProcess(pid, os.pidfd_open(pid), ti.task_id, ti.map_index, ti.try_number, label)
        process.streams = [_Stream(out_read, self.console.stdout), _Stream(err_read, self.console.stderr)]
        self.running[pid] = process
        for stream in process.streams:
            os.set_blocking(stream.fd, False)
            self.selector.register(stream.fd, selectors.EVENT_READ, (process, stream))
        self.selector.register(process.pidfd, selectors.EVENT_READ, (process, None))
        retry = " (retry)." if ti.try_number > 1 else "."
        self.console.line(label, f"Task is starting{retry}", pid=pid)

    # -- watching tasks --------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        """Copy what tasks wrote to the terminal until one of them ends (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ended = []
            for key, _ in self.selector.select(left):
                process, stream = key.data
                if stream is None:
                    ended.append(process)
                else:
                    self._read(process, stream)
            if ended:
                for process in ended:
                    self._finish(process)
                self._reap_ended()
                return

    def _reap_ended(self) -> None:
        """Finish every other task whose process has ended by now, before the run looks at
        Airflow's states again: their lines come before those of the tasks that follow them."""
        while True:
            ended = []
            for key, _ in self.selector.select(0):
                process, stream = key.data
                if stream is None:
                    ended.append(process)
                else:
                    self._read(process, stream)
            if not ended:
                return
            for process in ended:
                self._finish(process)

    def _read(self, process: _TaskProcess, stream: _Stream) -> None:
        try:
            data = os.read(stream.fd, 65536)
        except BlockingIOError:
            return
        if not data:  # closed: the task's process has ended (or handed the pipe on and closed it)
            self._close(stream, process)
            return
        stream.pending += data
        *lines, stream.pending = stream.pending.split(b"\n")
        if len(stream.pending) > _LONGEST_LINE:
            lines.append(stream.pending)
            stream.pending = b""
        for line in lines:
            self._echo(process, stream, line)

    def _echo(self, process: _TaskProcess, stream: _Stream, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        self.console.line(process.label, text, pid=process.pid, error=stream.target is self.console.stderr)

    def _close(self, stream: _Stream, process: _TaskProcess) -> None:
        if stream.pending:
            self._echo(process, stream, stream.pending)
            stream.pending = b""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(stream.fd)
        with contextlib.suppress(OSError):
            os.close(stream.fd)
        process.streams = [kept for kept in process.streams if kept is not stream]

    def _finish(self, process: _TaskProcess) -> None:
        """Reap a task's process, show the rest of its output, and say how the task ended."""
        _, status = os.waitpid(process.pid, 0)
        self.selector.unregister(process.pidfd)
        os.close(process.pidfd)
        for stream in list(process.streams):  # what it wrote last (a child it left may still write)
            while stream in process.streams:
                try:
                    data = os.read(stream.fd, 65536)
                except BlockingIOError:
                    break
                if not data:
                    break
                stream.pending += data
                *lines, stream.pending = stream.pending.split(b"\n")
                for line in lines:
                    self._echo(process, stream, line)
            self._close(stream, process)
        del self.running[process.pid]
        self._report(process, status)

    def _report(self, process: _TaskProcess, status: int) -> None:
        from airflow.utils.state import TaskInstanceState

        self.session.expire_all()
        ti = self.dag_run.get_task_instance(
            process.task_id, map_index=process.map_index, session=self.session
        )
        if ti is None:
            return
        if ti.state in (TaskInstanceState.QUEUED, TaskInstanceState.RUNNING, TaskInstanceState.SCHEDULED):
            # Its process ended without telling Airflow (killed, or os._exit in the step): a failure
            # of this attempt, retried as Airflow retries any failure.
            how = _how_it_ended(status)
            ti.handle_failure(f"The task's process {how}.", session=self.session)
            self.session.commit()
            self.console.line(process.label, f"Task failed: its process {how}.", pid=process.pid, error=True)
            return
        if ti.state == TaskInstanceState.SUCCESS:
            self.console.line(process.label, "Task finished successfully.", pid=process.pid)
        elif ti.state == TaskInstanceState.UP_FOR_RETRY:
            self.console.line(process.label, "Task failed.", pid=process.pid, error=True)
        elif ti.state == TaskInstanceState.FAILED:
            self.console.line(process.label, "Task failed.", pid=process.pid, error=True)
            if ti.try_number <= ti.max_tries:
                self.console.line(process.label, "This failed task will not be retried.", error=True)

    def _tell_waiting(self, waiting: list[Any]) -> None:
        for ti in waiting:
            attempt = (ti.task_id, ti.map_index, ti.try_number)
            if attempt in self.told_waiting:
                continue
            self.told_waiting.add(attempt)
            delay = self.dag.task_dict[ti.task_id].retry_delay.total_seconds() / 60
            if delay > 0:
                label = self.label_of(ti.task_id, ti.map_index)
                self.console.line(label, f"Sleeping {delay:g} minute(s) before the next retry.")

    # -- stopping --------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every running task (SIGINT, then SIGKILL), show what they wrote, mark them failed."""
        from airflow.utils.state import State, TaskInstanceState

        self.console.run_line("Workflow interrupted: its running tasks are stopped.", error=True)
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        with _signals_held():
            while self.running and time.monotonic() < deadline:
                self._pump(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            for process in list(self.running.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                self._finish(process)
            self.session.rollback()
            self.session.expire_all()
            for ti in self.dag_run.get_task_instances(session=self.session):
                if ti.state in (TaskInstanceState.QUEUED, TaskInstanceState.RUNNING):
                    ti.state = TaskInstanceState.FAILED  # stopped while it ran
                elif ti.state not in State.finished:
                    ti.state = TaskInstanceState.UPSTREAM_FAILED  # never started
            self.session.commit()


def _task_process(
    key: tuple[str, str, str, int], task: Any, out_fd: int, err_fd: int, inherited: list[int]
) -> None:
    """Run one task in this forked process and exit: Airflow's in-process task runner, as
    ``dag.test()`` runs a task, with the process's output going to the run's pipes."""
    code = 1
    try:
        _die_with_parent()
        # A process group of its own: the terminal's Ctrl-C reaches the run, which stops each task
        # once (a second SIGINT would cut short the task's own clean-up and report).
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        # SIGINT stays as the caller left it (a background job ignores Ctrl-C, and so do its tasks).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ[LINES_PREFIXED] = "1"
        code = _run_task(key, task)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - anything left is printed, then the process ends
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run_task(key: tuple[str, str, str, int], task: Any) -> int:
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk.definitions.dag import _run_task as run_task_as_dag_test
    from sqlalchemy import select

    dag_id, run_id, task_id, map_index = key
    settings.Session.remove()  # this process's own session, on its own connection
    session = settings.Session()
    ti = session.scalar(
        select(TaskInstance).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == map_index,
        )
    )
    if ti is None:
        print(f"Task {task_id}[{map_index}] of {dag_id} run {run_id} is gone.", file=sys.stderr)
        return 1
    try:
        run_task_as_dag_test(ti=ti, task=task, run_triggerer=True)
    except Exception:  # noqa: BLE001 - as dag.test(): the state Airflow recorded says the rest
        from airflow.utils.state import State, TaskInstanceState

        traceback.print_exc()
        session.expire_all()
        if ti.state not in State.finished:
            ti.set_state(TaskInstanceState.FAILED)
    return 0


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when the run's process dies (Linux; elsewhere, no-op)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took
        os._exit(1)


def _fds(process: _TaskProcess) -> list[int]:
    return [process.pidfd, *(stream.fd for stream in process.streams)]


def _how_it_ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@contextlib.contextmanager
def _interrupted_by_sigterm() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does, so its tasks are stopped, not orphaned."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """A second Ctrl-C while tasks are being stopped does not cut the stopping short."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
