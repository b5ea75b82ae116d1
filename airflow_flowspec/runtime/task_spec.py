"""What one task needs to run, as plain JSON.

The same spec drives the step on an Airflow worker (built in memory by the operator) and in an AWS
Batch container (written to the datastore, its key passed on the command line), so it holds only
JSON values: no Airflow objects.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TaskSpec:
    flow_file: str
    flow_name: str
    step: str
    run_id: str
    datastore_root: str
    map_index: int = -1
    attempt: int = 1  # Airflow's try_number, 1-based
    max_attempts: int = 1  # retries + 1: @catch acts only on the last one
    input_manifests: list[dict[str, Any]] = field(default_factory=list)
    foreach_stack: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # start step only: raw values by name
    context: dict[str, Any] = field(default_factory=dict)  # logical_date, data intervals, origin_run_id...

    @property
    def task_id(self) -> str:
        return str(max(self.map_index, 0))

    @property
    def pathspec(self) -> str:
        return f"{self.flow_name}/{self.run_id}/{self.step}/{self.task_id}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> TaskSpec:
        return cls(**json.loads(text))


@dataclass
class StepResult:
    """What the operator publishes: the manifest, and for a split what Airflow maps or follows."""

    manifest: dict[str, Any]
    foreach_children: list[dict[str, Any]] | None = None  # one element per mapped child task
    switch_step: str | None = None  # the switch arm taken

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StepResult:
        return cls(**json.loads(text))
