"""``python flow.py run``'s DAG run: its ready tasks at once, in processes of their own.

``dag.test()`` runs a DAG run's tasks one after another in its own process. ``run`` keeps its loop
(Airflow's ``DagRun.update_state`` says which tasks are ready; Airflow's in-process task runner,
the one ``dag.test()`` calls, runs each of them, with retries and deferral as Airflow defines them)
and hands every ready task to a worker: a forked copy of this process that runs the tasks it is
given one at a time, as the LocalExecutor's workers do. Up to ``max_workers`` work at once (as
Metaflow's local runtime runs its tasks); a worker's second task finds Airflow's execution API,
the database's statements and the flow's module warm, so a chain of steps costs what it cost
in one process. ``dag.test(use_executor=True)`` with the LocalExecutor itself was the other way,
and three things rule it out for a command people wait on: its task processes parse the flow file
again (and get the dags folder's DAG, not this run's: the branch ``--branch`` chose, the retry
delays ``run`` drops), they talk to an execution API over HTTP that would have to be served from
here, and its loop sleeps a second whenever no task is ready, which a flow of short steps would
pay at every step.

Every line a task writes reaches the terminal whole, on the stream the task used, prefixed as
Metaflow prefixes it: ``2026-12-07 14:11:40.626 [<run>/<step>/<task> (pid N)] <line>``. The run's own
lines (a task starting, finishing, failing, waiting for a retry) are printed here, where the task's
outcome is known; a task's runtime prints none of them (:data:`LINES_PREFIXED`). A worker flushes
its output before it reports a task done, so every line is told under the task that wrote it.

Ctrl-C (or SIGTERM) stops every running task: each gets SIGINT (once: a worker has a process group
of its own, out of the terminal's reach), then SIGKILL after :data:`STOP_GRACE_SECONDS`; the tasks
stopped are marked failed, and so is the run. A worker dies with this process
(``PR_SET_PDEATHSIG``), so a run killed outright leaves none behind; a worker that dies during a
task fails that task's attempt, which Airflow retries as any failure.

The private Airflow APIs used here (creating the run, running one task) are the ones ``dag.test()``
itself is built from; they are reached through :mod:`._internals`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    """One of a worker's output pipes, and the partial line read from it so far."""

    fd: int
    error: bool
    pending: bytes = b""


def _handling_order(what: Any) -> int:
    if isinstance(what, _Stream):
        return 1 if what.error else 0
    return 2 if what == "control" else 3


@dataclass
class _Task:
    task_id: str
    map_index: int
    label: str

    @property
    def key(self) -> tuple[str, int]:
        return self.task_id, self.map_index


@dataclass
class _Worker:
    """A forked copy of the run's process that runs tasks one at a time, as it is given them."""

    pid: int
    pidfd: int
    control: socket.socket
    streams: list[_Stream]
    task: _Task | None = None  # the task it runs now
    last_label: str = ""  # whose lines it writes between tasks
    reply: bytes = b""

    def fds(self) -> list[int]:
        return [self.pidfd, self.control.fileno(), *(stream.fd for stream in self.streams)]


class Console:
    """Where a run's lines go: the task's own lines and the run's, each whole and prefixed."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def line(self, label: str, text: str, *, pid: int | None = None, error: bool = False) -> None:
        head = f"[{label} (pid {pid})]" if pid else f"[{label}]"
        stream = self.stderr if error else self.stdout
        stream.write(f"{_stamp()} {head} {text}\n")
        stream.flush()

    def run_line(self, text: str, *, error: bool = False) -> None:
        stream = self.stderr if error else self.stdout
        stream.write(f"{_stamp()} {text}\n")
        stream.flush()


def _stamp() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


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
    import_what_tasks_import()
    session = settings.Session()  # type: ignore[misc]  # set up when Airflow was imported
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
        finally:
            loop.close()
    if dag_run.state == DagRunState.RUNNING:  # stopped before its end
        dag_run.set_state(DagRunState.FAILED)
        session.commit()
    _call_dag_callbacks(dag, dag_run)
    return dag_run


def _call_dag_callbacks(dag: Any, dag_run: Any) -> None:
    """The DAG's success or failure callbacks, with the context a DAG callback gets when no task
    instance is named (the DAG, the run and why), as the scheduler would call them."""
    from airflow.utils.state import DagRunState

    succeeded = dag_run.state == DagRunState.SUCCESS
    callbacks = dag.on_success_callback if succeeded else dag.on_failure_callback
    if not callbacks:
        return
    context = {
        "dag": dag,
        "dag_run": dag_run,
        "run_id": dag_run.run_id,
        "reason": "success" if succeeded else "task_failure",
    }
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        callback(context)


#: What every task would otherwise import for itself: imported once, before the forks.
_TASK_IMPORTS = (
    "a2wsgi",  # the in-process execution API's transport
    "cloudpickle",
    "encodings.idna",
    "jinja2.ext",
    "airflow_flowspec.datastore.gc",  # the lease a task takes is gc's
    "airflow_flowspec.datastore.leases",
    "airflow_flowspec.runtime.step_runner",
)


def import_what_tasks_import() -> None:
    for name in _TASK_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _create_dag_run(dag: Any, run_id: str, logical_date: datetime, conf: dict[str, Any], session: Any) -> Any:
    """The DAG run, created as ``dag.test()`` creates its own."""
    from airflow_flowspec.airflow._internals import create_test_dag_run, scheduler_dag

    dag.validate()
    scheduler_view = scheduler_dag(dag)
    # The DAG's callbacks run once the run ends (_call_dag_callbacks), not inside update_state as
    # dag.test() has them: Airflow's in-process callback context fails to validate the Param of a
    # required parameter, and a run stopped by Ctrl-C never reaches that code.
    scheduler_view.has_on_success_callback = False
    scheduler_view.has_on_failure_callback = False
    # Marked as dag.test() marks its runs: the step tasks read a run so marked as a local test run
    # (not production, its user the one running it: operators.step_task).
    return create_test_dag_run(
        scheduler_view, dag, run_id=run_id, logical_date=logical_date, conf=conf, session=session
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
        self.workers: dict[int, _Worker] = {}  # by pid
        self.told_waiting: set[tuple[str, int, int]] = set()

    @property
    def busy(self) -> list[_Worker]:
        return [worker for worker in self.workers.values() if worker.task is not None]

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
            running = self.busy
            if self.dag_run.state != DagRunState.RUNNING and not running:
                return
            instances = self.dag_run.get_task_instances(session=self.session)
            taken = {worker.task.key for worker in running if worker.task is not None}
            ready = sorted(
                (
                    ti
                    for ti in instances
                    if ti.state == TaskInstanceState.SCHEDULED and (ti.task_id, ti.map_index) not in taken
                ),
                key=lambda ti: (-(ti.priority_weight or 0), ti.task_id, ti.map_index),
            )
            for ti in ready[: max(0, self.max_workers - len(running))]:
                self._start(ti)
            waiting = [ti for ti in instances if ti.state == TaskInstanceState.UP_FOR_RETRY]
            if not self.busy:
                if self.dag_run.state != DagRunState.RUNNING:
                    return
                if not ready:  # nothing runs or can: a retry's delay (a step on AWS Batch), or
                    # the run's end, which the next look at its state records
                    self._tell_waiting(waiting)
                    time.sleep(1.0 if waiting else 0.02)
                continue
            self._pump(timeout=1.0 if waiting else 30.0)

    # -- giving a task to a worker ---------------------------------------------------------------

    def _start(self, ti: Any) -> None:
        from airflow.utils.state import TaskInstanceState

        task = _Task(ti.task_id, ti.map_index, self.label_of(ti.task_id, ti.map_index))
        ti.state = TaskInstanceState.QUEUED  # taken: the next pass must not start it again
        self.session.commit()
        worker = next((worker for worker in self.workers.values() if worker.task is None), None)
        if worker is None:
            worker = self._fork_worker()
        worker.task = task
        worker.last_label = task.label
        message = json.dumps({"key": [ti.dag_id, ti.run_id, ti.task_id, ti.map_index]}) + "\n"
        worker.control.sendall(message.encode())
        retry = " (retry)." if ti.try_number > 1 else "."
        self.console.line(task.label, f"Task is starting{retry}", pid=worker.pid)

    def _fork_worker(self) -> _Worker:
        ours, theirs = socket.socketpair()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        inherited = [fd for worker in self.workers.values() for fd in worker.fds()]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: it never returns
            ours.close()
            os.close(out_read)
            os.close(err_read)
            _worker_main(self.dag, theirs, out_write, err_write, inherited + [self.selector.fileno()])
        with contextlib.suppress(OSError):  # also done in the worker: whichever comes first
            os.setpgid(pid, pid)
        theirs.close()
        os.close(out_write)
        os.close(err_write)
        streams = [_Stream(out_read, error=False), _Stream(err_read, error=True)]
        worker = _Worker(pid, os.pidfd_open(pid), ours, streams)
        self.workers[pid] = worker
        for stream in streams:
            os.set_blocking(stream.fd, False)
            self.selector.register(stream.fd, selectors.EVENT_READ, (worker, stream))
        ours.setblocking(False)
        self.selector.register(ours.fileno(), selectors.EVENT_READ, (worker, "control"))
        self.selector.register(worker.pidfd, selectors.EVENT_READ, (worker, "exit"))
        return worker

    # -- watching workers ------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        """Copy what tasks write to the terminal until a task ends (or ``timeout`` passes), then
        take in every other task that has ended by then too."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._handle(self.selector.select(left)):
                while self._handle(self.selector.select(0)):
                    pass
                return

    def _handle(self, events: list[Any]) -> bool:
        """Handle ready file descriptors; whether a task ended."""
        ended = False
        # A task's output before its errors, both before its end: a step that prints and then
        # fails has both pipes ready at once, and the terminal shows them in the order written.
        for key, _ in sorted(events, key=lambda event: _handling_order(event[0].data[1])):
            worker, what = key.data
            if worker.pid not in self.workers:
                continue  # gone while handling an earlier event of this batch
            if isinstance(what, _Stream):
                self._read(worker, what)
            elif what == "control":
                ended |= self._read_reply(worker)
            else:
                ended |= self._worker_exited(worker)
        return ended

    def _read(self, worker: _Worker, stream: _Stream, *, until_empty: bool = False) -> None:
        while True:
            try:
                data = os.read(stream.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # closed: the worker has ended
                self._echo_pending(worker, stream)
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(stream.fd)
                return
            stream.pending += data
            *lines, stream.pending = stream.pending.split(b"\n")
            if len(stream.pending) > _LONGEST_LINE:
                lines.append(stream.pending)
                stream.pending = b""
            for line in lines:
                self._echo(worker, stream, line)
            if not until_empty:
                return

    def _echo(self, worker: _Worker, stream: _Stream, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        label = worker.task.label if worker.task is not None else worker.last_label
        self.console.line(label, text, pid=worker.pid, error=stream.error)

    def _flush(self, worker: _Worker) -> None:
        """Everything the worker wrote so far, its last partial lines included."""
        for stream in worker.streams:
            self._read(worker, stream, until_empty=True)
            self._echo_pending(worker, stream)

    def _echo_pending(self, worker: _Worker, stream: _Stream) -> None:
        """A last line the worker wrote without its newline."""
        if stream.pending:
            self._echo(worker, stream, stream.pending)
            stream.pending = b""

    def _read_reply(self, worker: _Worker) -> bool:
        try:
            data = worker.control.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            return self._worker_exited(worker)
        worker.reply += data
        ended = False
        while b"\n" in worker.reply:
            _, worker.reply = worker.reply.split(b"\n", 1)  # a task is done
            if worker.task is None:
                continue
            self._flush(worker)  # what the task wrote came before its reply
            task, worker.task = worker.task, None
            self._report(task, worker.pid)
            ended = True
        return ended

    def _worker_exited(self, worker: _Worker) -> bool:
        _, status = os.waitpid(worker.pid, 0)
        self._flush(worker)
        self._forget(worker)
        if worker.task is None:
            return False
        task, worker.task = worker.task, None
        self._report(task, worker.pid, died=_how_it_ended(status))
        return True

    def _forget(self, worker: _Worker) -> None:
        for fd in worker.fds():
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        for stream in worker.streams:
            with contextlib.suppress(OSError):
                os.close(stream.fd)
        worker.control.close()
        with contextlib.suppress(OSError):
            os.close(worker.pidfd)
        self.workers.pop(worker.pid, None)

    def _report(self, task: _Task, pid: int, died: str | None = None) -> None:
        from airflow.utils.state import TaskInstanceState

        self.session.expire_all()
        ti = self.dag_run.get_task_instance(task.task_id, map_index=task.map_index, session=self.session)
        if ti is None:
            return
        if died is not None and ti.state in (
            TaskInstanceState.QUEUED,
            TaskInstanceState.RUNNING,
            TaskInstanceState.SCHEDULED,
        ):
            # Its process ended without telling Airflow (killed, or os._exit in the step): a failure
            # of this attempt, retried as Airflow retries any failure.
            ti.handle_failure(f"The task's process {died}.", session=self.session)
            self.session.commit()
            self.console.line(task.label, f"Task failed: its process {died}.", pid=pid, error=True)
            return
        if ti.state == TaskInstanceState.SUCCESS:
            self.console.line(task.label, "Task finished successfully.", pid=pid)
        elif ti.state == TaskInstanceState.UP_FOR_RETRY:
            self.console.line(task.label, "Task failed.", pid=pid, error=True)
        elif ti.state == TaskInstanceState.FAILED:
            self.console.line(task.label, "Task failed.", pid=pid, error=True)
            if ti.try_number <= ti.max_tries:
                self.console.line(task.label, "This failed task will not be retried.", error=True)

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
        with _signals_held():
            for worker in self.busy:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGINT)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while self.busy and time.monotonic() < deadline:
                self._handle(self.selector.select(min(0.2, max(0.0, deadline - time.monotonic()))))
            for worker in self.busy:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
                while worker.pid in self.workers:
                    self._handle(self.selector.select(0.2))
            self.session.rollback()
            self.session.expire_all()
            for ti in self.dag_run.get_task_instances(session=self.session):
                if ti.state in (TaskInstanceState.QUEUED, TaskInstanceState.RUNNING):
                    ti.state = TaskInstanceState.FAILED  # stopped while it ran
                elif ti.state not in State.finished:
                    ti.state = TaskInstanceState.UPSTREAM_FAILED  # never started
            self.session.commit()

    def close(self) -> None:
        """End the idle workers (their control socket closes; they exit) and wait for them."""
        for worker in list(self.workers.values()):
            with contextlib.suppress(OSError):
                worker.control.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self.workers and time.monotonic() < deadline:
            self._handle(self.selector.select(min(0.2, max(0.0, deadline - time.monotonic()))))
        for worker in list(self.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)
            self._forget(worker)
        self.selector.close()


def _worker_main(dag: Any, control: socket.socket, out_fd: int, err_fd: int, inherited: list[int]) -> None:
    """Run tasks as the run's process sends them, one at a time, until it closes the socket.

    Each task is Airflow's in-process task runner, as ``dag.test()`` runs a task; the worker's
    environment and working folder are put back after each one. A task interrupted (Ctrl-C) ends
    the worker once it has said so."""
    code = 0
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
        environment = dict(os.environ)
        folder = os.getcwd()
        requests = control.makefile("rb")
        for request in requests:
            dag_id, run_id, task_id, map_index = json.loads(request)["key"]
            interrupted = False
            try:
                _run_task((dag_id, run_id, task_id, map_index), dag.task_dict[task_id])
            except KeyboardInterrupt:
                interrupted = True
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
            control.sendall(b"done\n")
            if interrupted:
                code = 130
                break
            os.environ.clear()
            os.environ.update(environment)
            with contextlib.suppress(OSError):
                os.chdir(folder)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - anything left is printed, then the process ends
        code = 1
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run_task(key: tuple[str, str, str, int], task: Any) -> None:
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    from airflow_flowspec.airflow._internals import run_task_in_process

    dag_id, run_id, task_id, map_index = key
    settings.Session.remove()  # type: ignore[union-attr]  # this process's own session and connection
    session = settings.Session()  # type: ignore[misc]
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
        return
    try:
        run_task_in_process(ti, task)
    except Exception:  # noqa: BLE001 - as dag.test(): the state Airflow recorded says the rest
        from airflow.utils.state import State, TaskInstanceState

        traceback.print_exc()
        session.expire_all()
        if ti.state not in State.finished:
            ti.set_state(TaskInstanceState.FAILED)


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when the run's process dies (Linux; elsewhere, no-op)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took
        os._exit(1)


def _how_it_ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


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
