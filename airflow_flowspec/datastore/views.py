"""Lazy, read-only views of the artifacts a manifest describes: the one read path for artifacts.

A join step's ``inputs``, a plain Airflow task's ``ti.xcom_pull("train").model``, the client and
the UI all read artifacts through these classes. A step that never touches an artifact
never downloads it: a view holds only references (name -> content hash) until an attribute is read,
then loads that one artifact and keeps it.

Outside a step (a plain task, a notebook), an artifact may be an instance of a class defined in
the flow file, pickled by reference to ``flowspec_flows.<FlowName>``; the view then imports the
flow file the run recorded and tries again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from airflow_flowspec.datastore import keys
from airflow_flowspec.datastore.artifacts import ArtifactRef
from airflow_flowspec.datastore.manifest import ForeachFrame, Manifest
from airflow_flowspec.errors import FlowLoadError
from airflow_flowspec.flow_loader import (
    is_missing_flow_module,
    load_recorded_flow_class,
    stable_module_name,
)


class ArtifactLoader:
    """References to artifacts (name -> reference) with load-on-first-use."""

    def __init__(
        self,
        datastore: Any,
        refs: Mapping[str, ArtifactRef],
        import_flow_module: Callable[[], None] | None = None,
        *,
        origin: str = "",
    ):
        self.datastore = datastore
        self.refs = dict(refs)
        # name -> pathspec of the task whose manifest listed it, for messages about it.
        self.origins = dict.fromkeys(self.refs, origin)
        self.loaded: dict[str, Any] = {}
        # Outside a step (a plain task, a notebook), the flow file is imported on demand.
        self._import_flow_module = import_flow_module

    def __contains__(self, name: object) -> bool:
        return name in self.refs

    def names(self) -> list[str]:
        return sorted(self.refs)

    def add(self, name: str, ref: ArtifactRef, origin: str) -> None:
        self.refs[name] = ref
        self.origins[name] = origin

    def load(self, name: str) -> Any:
        if name not in self.loaded:
            ref = self.refs[name]
            what = f"artifact '{name}' of {self.origins.get(name) or 'this task'}"
            try:
                self.loaded[name] = self.datastore.artifacts.load(ref, what=what)
            except Exception as error:
                if self._import_flow_module is None or not is_missing_flow_module(error):
                    raise
                self._import_flow_module()
                self.loaded[name] = self.datastore.artifacts.load(ref, what=what)
        return self.loaded[name]


class InputView:
    """One task's artifacts: an input of a join step, or what a plain task pulls from a step."""

    def __init__(self, manifest: Manifest, datastore: Any, foreach_value: Callable[[ForeachFrame], Any]):
        object.__setattr__(self, "_manifest", manifest)
        object.__setattr__(
            self,
            "_loader",
            ArtifactLoader(datastore, manifest.artifacts, self._import_flow_module, origin=manifest.pathspec),
        )
        object.__setattr__(self, "_foreach_value", foreach_value)

    def _import_flow_module(self) -> None:
        import_flow_of_run(self._loader.datastore, self._manifest.attempt.flow, self._manifest.attempt.run_id)

    @property
    def step_name(self) -> str:
        return self._manifest.attempt.step

    @property
    def manifest(self) -> dict[str, Any]:
        """The task's manifest as JSON: artifact names, hashes, types, sizes and short reprs."""
        return self._manifest.to_json()

    @property
    def typed_manifest(self) -> Manifest:
        return self._manifest

    def artifact_names(self) -> list[str]:
        return self._loader.names()

    @property
    def index(self) -> int | None:
        return self._manifest.index

    @property
    def input(self) -> Any:  # noqa: A003
        stack = self._manifest.foreach_stack
        return self._foreach_value(stack[-1]) if stack else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._loader:
            return self._loader.load(name)
        raise AttributeError(
            f"Input from step '{self.step_name}' has no artifact '{name}'; "
            f"it has: {', '.join(self._loader.names()) or 'none'}."
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"Inputs of a join are read-only; set self.{name} = ... on the join step instead."
        )

    def __repr__(self) -> str:
        return f"<input from {self._manifest.pathspec}>"


class Inputs:
    """The ``inputs`` argument of a join step: iterable, indexable, and ``inputs.<step>``."""

    def __init__(self, views: list[InputView]):
        self._views = views

    def __iter__(self) -> Iterator[InputView]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __getitem__(self, index: int) -> InputView:
        return self._views[index]

    def __getattr__(self, name: str) -> InputView:
        if name.startswith("_"):
            raise AttributeError(name)
        for view in self._views:
            if view.step_name == name:
                return view
        steps = ", ".join(sorted({v.step_name for v in self._views}))
        raise AttributeError(
            f"This join has no input from a step named '{name}'; its inputs come from {steps}."
        )


def task_view(manifest: Manifest, datastore: Any) -> InputView:
    """A task's artifacts for code outside a step (a plain Airflow task, a notebook)."""

    def foreach_value(frame: ForeachFrame) -> Any:
        return datastore.artifacts.load(frame.item, what=foreach_item_name(frame))

    return InputView(manifest, datastore, foreach_value)


def foreach_item_name(frame: ForeachFrame) -> str:
    return f"item {frame.index} of the foreach over self.{frame.var} in step '{frame.step}'"


def import_flow_of_run(datastore: Any, flow_name: str, run_id: str) -> None:
    """Import the flow file a run used, so that classes defined in it unpickle outside a step.

    A step imports its flow file anyway; a plain Airflow task or a notebook reading the run's
    artifacts has not, and an instance of a class from the flow file (pickled by reference to
    ``flowspec_flows.<FlowName>``) cannot be rebuilt without it. The run's recorded code is
    imported: the classes as the run defined them, whatever the flow file has become since.
    """
    if stable_module_name(flow_name) in sys.modules:
        return
    meta = datastore.read_run_meta(flow_name, run_id)
    package_ref = (meta.get("code") or {}).get("package")
    if not package_ref:
        raise FlowLoadError(
            f"An artifact of run {run_id} of flow {flow_name} is an instance of a class defined in the "
            f"flow file, and the run records no code package to import it from "
            f"({datastore.backend.describe(keys.run_meta_key(flow_name, run_id))} names none): the "
            f"artifact cannot be loaded outside the flow's own steps."
        )
    from airflow_flowspec.datastore import code_package

    folder, index = code_package.materialize(datastore, package_ref)
    load_recorded_flow_class(folder, index, flow_name)
