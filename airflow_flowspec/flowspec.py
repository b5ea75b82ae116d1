"""The user-facing ``FlowSpec`` base class.

Kept small on purpose (see shared/STYLE.md): it holds the authoring API a step body uses
(``self.next``, ``self.input``, ``self.index``, ``self.merge_artifacts``, artifact attributes) and
nothing about how a step executes. The step runtime gives the instance one object before calling a
step, in the slot :data:`TASK_STATE_SLOT` (a ``runtime/task_state.py`` ``TaskState``), and reads it
afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow_flowspec.errors import FlowspecError, MergeArtifactsError, TransitionError

if TYPE_CHECKING:
    from airflow_flowspec.datastore.manifest import ForeachFrame
    from airflow_flowspec.runtime.task_state import TaskState

#: Where a flow instance a step runs on holds the runtime's task state (an artifact never starts
#: with ``_flowspec_``).
TASK_STATE_SLOT = "_flowspec_state"


class Transition:
    """What a step's ``self.next(...)`` call asked for, checked by the runtime against the graph."""

    def __init__(
        self,
        targets: list[str],
        foreach: str | None,
        condition: str | None,
        switch_cases: dict[str, str] | None,
    ):
        self.targets = targets
        self.foreach = foreach
        self.condition = condition
        self.switch_cases = switch_cases


def _step_name(target: Any) -> str:
    name = getattr(target, "__name__", None)
    if name is None or not getattr(target, "is_step", False):
        raise TransitionError(
            f"self.next() takes steps such as self.train, got {target!r}. Pass the step method itself."
        )
    return name


class FlowSpec:
    """Base class of a flow: subclass it, write ``@step`` methods, end each with ``self.next(...)``.

    Defining the class inside Airflow's dags folder is enough to get a DAG named after the class;
    calling ``TrainFlow()`` under ``if __name__ == "__main__":`` runs the command line
    (``python flow.py run|show|check``).
    """

    _flowspec_schedule = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._flowspec_class_changed()

    @classmethod
    def _flowspec_class_changed(cls) -> None:
        """Called when the class is defined, and again when a flow decorator (``@schedule``) changes
        it: if Airflow's DagBag is importing the flow file, this (re)builds the flow's DAG. Outside
        a DagBag import it imports no Airflow and does nothing."""
        from airflow_flowspec.airflow.registration import register_if_parsing

        register_if_parsing(cls)

    def __init__(self, use_cli: bool = True):
        if use_cli:
            from airflow_flowspec.cli import main

            main(type(self))

    # --- what a step body uses -------------------------------------------------------------

    @property
    def name(self) -> str:
        return type(self).__name__

    def next(self, *steps: Any, foreach: str | None = None, condition: str | None = None) -> None:  # noqa: A003
        """Declare where the flow goes after this step (linear, branch, foreach or switch)."""
        task = self._flowspec_task_state()
        if task is not None and task.transition is not None:
            raise TransitionError(f"self.next() was called twice in step {task.step_name}.")
        switch_cases = None
        if condition is not None:
            if len(steps) != 1 or not isinstance(steps[0], dict):
                raise TransitionError(
                    "A switch is written self.next({'a': self.a, 'b': self.b}, condition='attr')."
                )
            switch_cases = {str(key): _step_name(value) for key, value in steps[0].items()}
            targets = list(switch_cases.values())
        else:
            targets = [_step_name(target) for target in steps]
        if task is not None:  # outside a step the runtime runs, nothing reads it
            task.transition = Transition(targets, foreach, condition, switch_cases)

    @property
    def input(self) -> Any:  # noqa: A003
        """The foreach item this task handles (in a step inside a foreach)."""
        task, frame = self._innermost_frame("input")
        return task.foreach_value(frame)

    @property
    def index(self) -> int:
        """The position of this task's item in the foreach (0-based)."""
        return self._innermost_frame("index")[1].index

    def foreach_stack(self) -> list[tuple[int, int, Any]]:
        """(index, number of splits, item) for each enclosing foreach, outermost first."""
        task = self._flowspec_task_state()
        if task is None:
            return []
        return [(f.index, f.num_splits, task.foreach_value(f)) for f in task.foreach_stack]

    def merge_artifacts(
        self, inputs: Iterable[Any], include: list[str] | None = None, exclude: list[str] | None = None
    ) -> None:
        """Copy to this join step every artifact its inputs agree on (Metaflow semantics).

        Artifacts already set in the join are left alone; an artifact whose value differs between
        inputs raises, naming it, unless excluded (or resolved by assigning it first).
        """
        task = self._flowspec_task_state()
        if task is None or not task.is_join:
            raise MergeArtifactsError("merge_artifacts(inputs) can only be called in a join step.")
        if include and exclude:
            raise MergeArtifactsError("merge_artifacts takes include= or exclude=, not both.")
        task.merge_artifacts(self, list(inputs), include=include, exclude=exclude)

    # --- artifacts -------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: the artifact was not set in this step.
        if name.startswith("__") or name.startswith("_flowspec_"):
            raise AttributeError(name)
        task = self._flowspec_task_state()
        if task is not None and name in task.artifacts:
            return task.artifacts.load(name)
        where = f" in step '{task.step_name}'" if task is not None else ""
        raise AttributeError(
            f"Flow {type(self).__name__} has no artifact '{name}'{where}: no step before it set "
            f"self.{name}. In a join step, read inputs first (inputs.<step>.{name}) or call "
            f"self.merge_artifacts(inputs)."
        )

    def _flowspec_attach(self, task: TaskState) -> None:
        """Called by the runtime on a new instance, before the step runs."""
        self.__dict__[TASK_STATE_SLOT] = task

    def _flowspec_task_state(self) -> TaskState | None:
        state: TaskState | None = self.__dict__.get(TASK_STATE_SLOT)
        return state

    def _innermost_frame(self, what: str) -> tuple[TaskState, ForeachFrame]:
        task = self._flowspec_task_state()
        if task is None or not task.foreach_stack:
            raise FlowspecError(
                f"self.{what} is only defined in steps inside a foreach "
                f"(after self.next(self.step, foreach='items'))."
            )
        return task, task.foreach_stack[-1]
