"""The step's own output kept with its attempt (runtime/task_log.py): bounded, never in the way of
the step, and masked as a whole."""

from __future__ import annotations

import io
import sys
import time

import pytest

from airflow_flowspec.datastore.keys import AttemptKey
from airflow_flowspec.datastore.store import Datastore
from airflow_flowspec.runtime.masking import SecretMask
from airflow_flowspec.runtime.task_log import MAX_LOG_CHARS, TaskLog

IDENTITY = AttemptKey("LogFlow", "run-1", "start", "0", 1)


def test_huge_output_keeps_its_start_and_end_in_bounded_memory_and_linear_time(tmp_path, monkeypatch):
    """Guards the buffer's bound and its cost: millions of short writes stay linear (a list popped
    from the front made each write cost the whole tail), and one huge write is cut too."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    log = TaskLog()
    started = time.process_time()
    with log.capture():
        for number in range(1_000_000):
            print(f"line {number}")
        sys.stdout.write("x" * (3 * MAX_LOG_CHARS) + "\nthe end\n")
    assert time.process_time() - started < 20  # quadratic was hours
    datastore = Datastore(str(tmp_path / "store"))
    log.store(datastore, IDENTITY)
    kept = datastore.read_attempt_file(IDENTITY, "stdout.log").decode()
    assert len(kept) <= MAX_LOG_CHARS + 100
    assert kept.startswith("line 0\nline 1\n") and kept.endswith("x\nthe end\n")
    assert "characters of output not kept" in kept


def test_a_refused_write_and_a_secret_split_across_writes(tmp_path, monkeypatch):
    """A bytes write that the real stream refuses raises for the step as it would without the
    capture and is not kept (it used to poison the stored log); a secret written in two pieces, or
    after the step's masked output ended, is masked in what is stored."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    log = TaskLog()
    log.mask = SecretMask(["hunter2-secret"])
    with log.capture():
        with pytest.raises(TypeError):
            sys.stdout.write(b"raw bytes")
        print("token: hunter2-", end="")
        print("secret")
    datastore = Datastore(str(tmp_path / "store"))
    log.store(datastore, IDENTITY)
    kept = datastore.read_attempt_file(IDENTITY, "stdout.log").decode()
    assert kept == "token: ***\n"
