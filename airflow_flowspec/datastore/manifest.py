"""The manifest: what one task attempt produced, as a small JSON object. Its one definition.

A manifest is written last, atomically, by the step runtime (``<task>/attempt-<n>/manifest.json``)
and is the step's XCom value, so Airflow's XCom view shows it as is. Later steps, the XCom backend,
plain Airflow tasks, the client and the UI all find artifacts through it. This module is the only
place that builds one, parses one or decides whether a value is one: everything else reads a
:class:`Manifest`, whose JSON form is::

    {
      "flowspec_manifest": 1,                  # the marker, holding the format version
      "pathspec": "Flow/run/step/task",
      "flow": ..., "run_id": ..., "step": ..., "task_id": "0", "attempt": 1,
      "artifacts": {name: artifact reference},  # see ArtifactRef.to_json
      "parameters": [names of the artifacts that are the run's parameters],
      "foreach_stack": [{"step", "var", "index", "num_splits", "item": artifact reference}, ...],
      "created_at": "2026-01-01T00:00:00+00:00",  # when the attempt finished
      "foreach": {"var", "num_splits"},         # a foreach split only
      "switch": {"condition", "step"},          # a switch only: the arm taken
      "caught": {"type", "message"},            # @catch took the step's exception
      "code": artifact reference,               # the run's recorded code package
    }

A reader accepts every version up to :data:`MANIFEST_VERSION` and refuses a newer one by name, so
an older worker never misreads what a newer one wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from airflow_flowspec.datastore.artifacts import ArtifactRef
from airflow_flowspec.datastore.keys import AttemptKey
from airflow_flowspec.errors import DatastoreError, StepInputError

#: The key that marks a JSON object as a manifest; its value is the format version.
MANIFEST_MARKER = "flowspec_manifest"
#: The format this package writes, and the newest it reads.
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ForeachFrame:
    """One level of the foreach a task runs inside: which split it is, and its item."""

    step: str  # the step that did the foreach
    var: str  # the attribute it iterated over
    index: int
    num_splits: int
    item: ArtifactRef  # the task's item (``self.input``), stored like an artifact

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "var": self.var,
            "index": self.index,
            "num_splits": self.num_splits,
            "item": self.item.to_json(),
        }

    @classmethod
    def from_json(cls, value: Any) -> ForeachFrame:
        return cls(
            step=_text(value["step"]),
            var=_text(value["var"]),
            index=_whole(value["index"]),
            num_splits=_whole(value["num_splits"]),
            item=ArtifactRef.from_json(value["item"]),
        )


@dataclass(frozen=True)
class ForeachSplit:
    """What a foreach step recorded about the split it made."""

    var: str
    num_splits: int


@dataclass(frozen=True)
class SwitchTaken:
    """What a switch step recorded: its condition and the arm it took."""

    condition: str
    step: str


@dataclass(frozen=True)
class Caught:
    """The exception ``@catch`` took from the step (its message with secrets redacted)."""

    type: str
    message: str


@dataclass(frozen=True)
class Manifest:
    """What one task attempt produced: its artifacts by reference, and where it sat in the run."""

    attempt: AttemptKey
    artifacts: Mapping[str, ArtifactRef]
    parameters: tuple[str, ...] = ()  # the artifacts that are the run's parameters
    foreach_stack: tuple[ForeachFrame, ...] = ()
    created_at: str | None = None
    foreach: ForeachSplit | None = None
    switch: SwitchTaken | None = None
    caught: Caught | None = None
    code: ArtifactRef | None = None  # the run's recorded code package
    version: int = field(default=MANIFEST_VERSION, compare=False)

    @property
    def pathspec(self) -> str:
        """``Flow/run/step/task``: the task this attempt belongs to."""
        return self.attempt.task_pathspec

    @property
    def index(self) -> int | None:
        """The task's index in the innermost foreach it runs in, None outside a foreach."""
        return self.foreach_stack[-1].index if self.foreach_stack else None

    @property
    def foreach_indices(self) -> list[int]:
        """The task's index in each foreach it runs in, outermost first (orders a join's inputs)."""
        return [frame.index for frame in self.foreach_stack]

    def finished_at(self) -> datetime | None:
        if not self.created_at:
            return None
        try:
            moment = datetime.fromisoformat(self.created_at)
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            MANIFEST_MARKER: self.version,
            "pathspec": self.pathspec,
            "flow": self.attempt.flow,
            "run_id": self.attempt.run_id,
            "step": self.attempt.step,
            "task_id": self.attempt.task_id,
            "attempt": self.attempt.attempt,
            "artifacts": {name: ref.to_json() for name, ref in self.artifacts.items()},
            "parameters": list(self.parameters),
            "foreach_stack": [frame.to_json() for frame in self.foreach_stack],
            "created_at": self.created_at,
        }
        if self.foreach is not None:
            document["foreach"] = {"var": self.foreach.var, "num_splits": self.foreach.num_splits}
        if self.switch is not None:
            document["switch"] = {"condition": self.switch.condition, "step": self.switch.step}
        if self.caught is not None:
            document["caught"] = {"type": self.caught.type, "message": self.caught.message}
        if self.code is not None:
            document["code"] = self.code.to_json()
        return document

    @classmethod
    def from_json(cls, value: Any, *, where: str) -> Manifest:
        """``value`` (a manifest's JSON form, or the XCom backend's view of one) as a manifest this
        package can read; anything else is a :class:`StepInputError` naming ``where``."""
        document = checked_manifest(value, where=where)
        try:
            return _parsed(document)
        except (KeyError, TypeError, ValueError, DatastoreError) as error:
            raise StepInputError(
                f"{where} got a damaged manifest (from {document.get('pathspec')!r}): {error}. It was "
                f"not written by this package; run the step that produced it again."
            ) from None


def _parsed(document: dict[str, Any]) -> Manifest:
    artifacts = document["artifacts"]
    sections = {name: document.get(name) for name in ("foreach", "switch", "caught")}
    foreach, switch, caught = sections["foreach"], sections["switch"], sections["caught"]
    return Manifest(
        attempt=AttemptKey(
            flow=_text(document["flow"]),
            run_id=_text(document["run_id"]),
            step=_text(document["step"]),
            task_id=str(document["task_id"]),
            attempt=_whole(document["attempt"]),
        ),
        artifacts={_text(name): ArtifactRef.from_json(ref) for name, ref in artifacts.items()},
        parameters=tuple(_text(name) for name in document.get("parameters") or ()),
        foreach_stack=tuple(ForeachFrame.from_json(frame) for frame in document.get("foreach_stack") or ()),
        created_at=document.get("created_at"),
        foreach=None
        if foreach is None
        else ForeachSplit(_text(foreach["var"]), _whole(foreach["num_splits"])),
        switch=None if switch is None else SwitchTaken(_text(switch["condition"]), _text(switch["step"])),
        caught=None if caught is None else Caught(_text(caught["type"]), _text(caught["message"])),
        code=None if document.get("code") is None else ArtifactRef.from_json(document["code"]),
        version=document[MANIFEST_MARKER],
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not a whole number")
    return value


def new_manifest(
    attempt: AttemptKey,
    *,
    artifacts: Mapping[str, ArtifactRef],
    parameters: list[str],
    foreach_stack: tuple[ForeachFrame, ...] | list[ForeachFrame],
    foreach: ForeachSplit | None = None,
    switch: SwitchTaken | None = None,
    caught: Caught | None = None,
    code: ArtifactRef | None = None,
) -> Manifest:
    """The manifest of an attempt finishing now."""
    return Manifest(
        attempt=attempt,
        artifacts=dict(artifacts),
        parameters=tuple(sorted(parameters)),
        foreach_stack=tuple(foreach_stack),
        created_at=datetime.now(timezone.utc).isoformat(),
        foreach=foreach,
        switch=switch,
        caught=caught,
        code=code,
    )


def is_manifest(value: Any) -> bool:
    """Whether ``value`` is a manifest's JSON form (of any version; :func:`checked_manifest`
    refuses newer ones)."""
    return isinstance(value, dict) and MANIFEST_MARKER in value and isinstance(value.get("artifacts"), dict)


def checked_manifest(value: Any, *, where: str) -> dict[str, Any]:
    """``value`` as the JSON form of a manifest this package can read, or a
    :class:`StepInputError` naming ``where``.

    XCom pulls may hand back the artifact view the XCom backend builds around a manifest; its
    ``manifest`` attribute is the manifest.
    """
    manifest = getattr(value, "manifest", value)
    if isinstance(manifest, Manifest):
        return manifest.to_json()
    if not is_manifest(manifest):
        raise StepInputError(
            f"{where} expected a step's manifest, got {type(value).__name__}: {value!r:.200}. Is "
            f"[core] xcom_backend set to airflow_flowspec.xcom_backend.FlowspecXComBackend?"
        )
    version = manifest[MANIFEST_MARKER]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MANIFEST_VERSION:
        raise StepInputError(
            f"{where} got a manifest of format version {version!r} (from {manifest.get('pathspec')}); "
            f"this airflow-flowspec reads versions 1 to {MANIFEST_VERSION}. Install the same "
            f"airflow-flowspec version on every worker and in every Batch image."
        )
    return manifest
