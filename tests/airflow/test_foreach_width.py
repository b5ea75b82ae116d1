"""What one foreach child costs does not depend on how wide the foreach is (issue 14).

Airflow resolves a mapped task's element by pulling its upstream's whole return value, so a
split's list of children used to cost every child all of it: bytes grew with the square of the
width. Here a foreach runs 20 and 200 wide under ``dag.test()`` and each child's requests to
Airflow's execution API (and the bytes of the answers) and to the datastore are counted.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import FLOWS, run_flow

pytestmark = pytest.mark.usefixtures("airflow_db")

WIDTH_FLOW = """
from airflow_flowspec import FlowSpec, Parameter, step


class PerChildCostFlow(FlowSpec):
    width = Parameter("width", default=20)

    @step
    def start(self):
        self.items = [f"item {i} of {self.width}" for i in range(self.width)]  # stored anew in each run
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.shout = self.input.upper()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.shouts = [i.shout for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass
"""


@contextlib.contextmanager
def costs_per_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[tuple[str, int], Counter]]:
    """While ``dag.test()`` runs, per task instance: its requests to the execution API, the bytes
    of the answers, how many XComs each answer held, and its datastore requests and bytes read."""
    from airflow.sdk.execution_time import supervisor

    from airflow_flowspec import config
    from airflow_flowspec.datastore import open_datastore

    counters = open_datastore(config.datastore_root()).backend.counters
    costs: dict[tuple[str, int], Counter] = defaultdict(Counter)
    running: list[tuple[str, int]] = []
    send, run = supervisor.InProcessSupervisorComms.send, supervisor.run_task_in_process

    def recording_send(self: Any, msg: Any) -> Any:
        answer = send(self, msg)
        if running:
            cost = costs[running[-1]]
            cost["api_requests"] += 1
            cost["api_bytes"] += len(answer.model_dump_json()) if answer is not None else 0
            if type(msg).__name__ == "GetXComSequenceSlice":
                cost["xcoms_in_slices"] += len(answer.root)
        return answer

    def recording_run(ti: Any, task: Any, client: Any = None) -> Any:
        running.append((ti.task_id, ti.map_index))
        before = counters.snapshot()
        try:
            return run(ti=ti, task=task, client=client)
        finally:
            after = counters.snapshot()
            costs[running.pop()].update(
                store_requests=after["requests"] - before["requests"],
                store_bytes_read=after["bytes_read"] - before["bytes_read"],
            )

    monkeypatch.setattr(supervisor.InProcessSupervisorComms, "send", recording_send)
    monkeypatch.setattr(supervisor, "run_task_in_process", recording_run)
    yield costs


def per_child(costs: dict[tuple[str, int], Counter], step: str, width: int) -> dict[str, float]:
    children = [cost for (task_id, map_index), cost in costs.items() if task_id == step and map_index >= 0]
    assert len(children) == width
    return {name: sum(cost[name] for cost in children) / width for name in children[0]}


def test_a_childs_requests_and_bytes_are_the_same_at_20_and_200_wide(tmp_path, monkeypatch):
    """Both widths fill their chunks (10 children a chunk here, 64 in use), so that what is left
    to differ is what grows with the width: nothing but the chunk's proof, one hash per doubling."""
    from airflow_flowspec.xcom_backend import values

    monkeypatch.setattr(values, "CHUNK_ITEMS", 10)
    flow_file = tmp_path / "per_child_cost_flow.py"
    flow_file.write_text(WIDTH_FLOW, encoding="utf-8")
    measured = {}
    for width in (20, 200):
        with costs_per_task(monkeypatch) as costs:
            run = run_flow(flow_file, {"width": width})
        assert run.succeeded, run.states()
        assert run.artifacts("join")["shouts"] == [f"ITEM {i} OF {width}" for i in range(width)]
        measured[width] = per_child(costs, "body", width)
    narrow, wide = measured[20], measured[200]
    # The row of the split's children and the split's manifest: the same few requests and bytes.
    assert wide["api_requests"] == narrow["api_requests"] <= 4
    assert abs(wide["api_bytes"] - narrow["api_bytes"]) <= 16, measured
    # One chunk of 10 children each, with a proof of 1 hash at 20 and 5 at 200 (67 bytes each), and
    # frames a few digits longer (the index, the width, the item's repr).
    assert wide["store_requests"] == narrow["store_requests"]
    assert 0 < wide["store_bytes_read"] - narrow["store_bytes_read"] <= 4 * 67 + 10 * 8, measured
    assert wide["api_bytes"] + wide["store_bytes_read"] < 6000, measured  # a children list would be 60 KB


def test_a_join_inside_an_outer_foreach_reads_only_its_own_items_children(monkeypatch):
    """The inner join runs once per outer item (rows 1, 2, 3 have 1, 2, 3 cells); each reads its
    own cells' manifests in one request, not all six of every row."""
    with costs_per_task(monkeypatch) as costs:
        run = run_flow(Path(FLOWS) / "nested_foreach_flow.py")
    assert run.succeeded, run.states()
    assert run.artifacts("join_rows")["products"] == [[10], [20, 21], [30, 31, 32]]
    assert [costs[("join_cols", row)]["xcoms_in_slices"] for row in range(3)] == [1, 2, 3]
    assert costs[("join_rows", -1)]["xcoms_in_slices"] == 3  # a join after a foreach reads them all
