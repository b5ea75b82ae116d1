"""What every benchmark case shares: measurements as ratios, fresh processes, peak memory, moto.

Machines here are noisy, so a case never judges an absolute time: it measures our figure and a
baseline in the same run, takes medians of several repetitions, and compares their ratio with the
target. Memory is measured in a fresh process as the RSS high-water mark above what the process
held just before the operation (Linux: /proc/self/clear_refs resets the mark).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
MB = 1024 * 1024


@dataclass
class Measurement:
    """One row of the table: our figure, the baseline's, and whether the ratio meets the target."""

    case: str
    metric: str
    ours: float
    baseline: float
    unit: str
    baseline_name: str
    max_ratio: float | None = None  # target: ours / baseline <= max_ratio
    min_ratio: float | None = None  # target: baseline / ours >= min_ratio ("N x faster")
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.min_ratio is not None:
            return self.baseline / self.ours if self.ours else float("inf")
        return self.ours / self.baseline if self.baseline else float("inf")

    @property
    def reported_only(self) -> bool:
        """A figure the issue asks to report, with no target to meet."""
        return self.min_ratio is None and self.max_ratio is None

    @property
    def target(self) -> str:
        if self.min_ratio is not None:
            return f">= {self.min_ratio:g}x faster"
        if self.max_ratio is None:
            return "reported"
        return f"<= {self.max_ratio:g}x"

    @property
    def passed(self) -> bool:
        if self.min_ratio is not None:
            return self.ratio >= self.min_ratio
        return self.max_ratio is None or self.ratio <= self.max_ratio


@dataclass
class Context:
    """Per-run settings and shared resources (a moto server is started only if a case asks)."""

    repeat: int = 3
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flowspec-bench-")))
    _moto: object | None = None
    _endpoint: str | None = None

    def s3_endpoint(self) -> str:
        """moto's S3 server on 127.0.0.1 (started once), with a bucket ``bench``."""
        if self._endpoint is None:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            self._moto, self._endpoint = server, f"http://{host}:{port}"
            os.environ.update(s3_environment(self._endpoint))
            import boto3

            boto3.session.Session().client("s3").create_bucket(Bucket="bench")
        return self._endpoint

    def close(self) -> None:
        if self._moto is not None:
            self._moto.stop()


def s3_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def private_airflow_env(root: Path) -> dict[str, str]:
    """Environment for an Airflow home, SQLite DB and datastore of its own under ``root``
    (set before Airflow is imported in the child), configured as a flowspec user would."""
    from airflow_flowspec.airflow.local_run import airflow_environment  # imports no Airflow

    home = root / "airflow"
    (home / "dags").mkdir(parents=True, exist_ok=True)
    return {
        **airflow_environment(home),
        "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(root / "datastore"),
        "FLOWSPEC_HOME": str(root / "flowspec-home"),
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def median_of(runs: list[dict], field: str) -> float:
    """The median of one field over the JSON results of several child-process runs."""
    return median([run[field] for run in runs])


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def run_python(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> dict:
    """Run ``code`` in a fresh interpreter (benchmarks/ importable); it prints JSON as its last line."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(BENCHMARKS), str(REPO), environment.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=environment, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark process failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_command(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 900
) -> tuple[float, int, str]:
    """Wall time, peak RSS (bytes) and output of a command.

    The peak is of the whole process tree's summed RSS, sampled every 20 ms with psutil: Metaflow
    runs each task in a child process and we run them in one, so only the tree's total compares
    like with like.
    """
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    output: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: output.append(process.stdout.read()), daemon=True)
    reader.start()
    peak = 0
    root = psutil.Process(process.pid)
    while process.poll() is None:
        total = 0
        try:
            for member in [root, *root.children(recursive=True)]:
                try:
                    total += member.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        if time.perf_counter() - start > timeout:
            process.kill()
            raise RuntimeError(f"{' '.join(map(str, argv))} timed out after {timeout} s")
        time.sleep(0.02)
    wall = time.perf_counter() - start
    reader.join()
    text = "".join(output)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({process.returncode}):\n{text[-4000:]}")
    return wall, peak, text
