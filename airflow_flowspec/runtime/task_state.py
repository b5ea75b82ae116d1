"""The one object a running step's flow instance holds for the runtime.

A step runs on an ordinary instance of the user's class, and every attribute a step sets on it is
an artifact. What the runtime lends the step (the artifacts to load on first use, its foreach
frames, whether it is a join) and what the step hands back besides artifacts (its ``self.next``
call) therefore sit in one slot (``flowspec.TASK_STATE_SLOT``, which saving artifacts skips), that
``FlowSpec``, ``Parameter`` and the failure report read. The runtime gives it to the flow instance
through ``FlowSpec._flowspec_attach``: importing the authoring module here would close a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_flowspec.datastore.artifacts import ArtifactRef
from airflow_flowspec.datastore.manifest import ForeachFrame
from airflow_flowspec.datastore.views import ArtifactLoader, InputView, foreach_item_name
from airflow_flowspec.errors import MergeArtifactsError
from airflow_flowspec.runtime.task_spec import TaskSpec

if TYPE_CHECKING:
    from airflow_flowspec.flowspec import Transition


class TaskState:
    """What ``self.input``, ``self.next``, ``merge_artifacts`` and artifact reads consult in a step."""

    def __init__(self, spec: TaskSpec, datastore: Any, *, is_join: bool, artifacts: ArtifactLoader):
        self.spec = spec
        self.datastore = datastore
        self.is_join = is_join
        self.step_name = spec.step
        self.flow_name = spec.flow_name
        self.foreach_stack = spec.foreach_stack
        #: The artifacts the step can read without having set them: its parent's (a join: only the
        #: parameters, until ``merge_artifacts``), loaded on first use.
        self.artifacts = artifacts
        #: What the step's ``self.next(...)`` asked for; None until it calls it.
        self.transition: Transition | None = None
        self._items: dict[str, Any] = {}

    def foreach_value(self, frame: ForeachFrame) -> Any:
        digest = frame.item.hash
        if digest not in self._items:
            self._items[digest] = self.datastore.artifacts.load(frame.item, what=foreach_item_name(frame))
        return self._items[digest]

    def merge_artifacts(
        self, flow: Any, inputs: list[InputView], include: list[str] | None, exclude: list[str] | None
    ) -> None:
        offered: dict[str, dict[str, ArtifactRef]] = {}
        origins: dict[str, str] = {}
        for view in inputs:
            manifest = view.typed_manifest
            for name, ref in manifest.artifacts.items():
                offered.setdefault(name, {})[ref.hash] = ref
                origins.setdefault(name, manifest.pathspec)
        if include:
            missing = [name for name in include if name not in offered]
            if missing:
                raise MergeArtifactsError(
                    f"Step '{self.step_name}' asked merge_artifacts to include {', '.join(missing)}, "
                    f"but no input has such an artifact."
                )
            candidates = list(include)
        else:
            candidates = sorted(set(offered) - set(exclude or []))
        conflicts = []
        for name in candidates:
            if name in flow.__dict__ or name in self.artifacts:
                continue  # set in the join already (or a parameter): the join's value wins
            if len(offered[name]) > 1:
                conflicts.append(name)
                continue
            self.artifacts.add(name, next(iter(offered[name].values())), origins[name])
        if conflicts:
            raise MergeArtifactsError(
                f"Step '{self.step_name}' of flow {self.flow_name} cannot merge artifact(s) "
                f"{', '.join(conflicts)}: the inputs hold different values. Set them explicitly in the "
                f"join before calling merge_artifacts (e.g. self.{conflicts[0]} = max(i.{conflicts[0]} "
                f"for i in inputs)), or pass exclude=[{', '.join(repr(c) for c in conflicts)}]."
            )
