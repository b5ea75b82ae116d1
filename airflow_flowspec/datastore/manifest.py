"""The manifest: what one task attempt produced, as a small JSON object. Its one definition.

A manifest is written last, atomically, by the step runtime (``<task>/attempt-<n>/manifest.json``)
and is the step's XCom value, so Airflow's XCom view shows it as is. Later steps, the XCom backend,
plain Airflow tasks, the client and the UI all find artifacts through it. This module is the only
place that builds one or decides whether a value is one; everything else reads its fields::

    {
      "flowspec_manifest": 1,                  # the marker, holding the format version
      "pathspec": "Flow/run/step/task",
      "flow": ..., "run_id": ..., "step": ..., "task_id": "0", "attempt": 1,
      "artifacts": {name: artifact reference},  # see ArtifactRef.to_json
      "parameters": [names of the artifacts that are the run's parameters],
      "foreach_stack": [{"step", "var", "index", "num_splits", "item": artifact reference}, ...],
      "created_at": "2026-01-01T00:00:00+00:00",  # when the attempt finished (absent before 0.2)
      "foreach": {"var", "num_splits"},         # a foreach split only
      "switch": {"condition", "step"},          # a switch only: the arm taken
      "caught": {"type", "message"},            # @catch took the step's exception
      "code": artifact reference,               # the run's recorded code package
    }

A reader accepts every version up to :data:`MANIFEST_VERSION` and refuses a newer one by name, so
an older worker never misreads what a newer one wrote.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow_flowspec.errors import StepInputError

#: The key that marks a JSON object as a manifest; its value is the format version.
MANIFEST_MARKER = "flowspec_manifest"
#: The format this package writes, and the newest it reads.
MANIFEST_VERSION = 1


def new_manifest(
    *,
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    attempt: int,
    artifacts: dict[str, dict[str, Any]],
    parameters: list[str],
    foreach_stack: list[dict[str, Any]],
    foreach: dict[str, Any] | None = None,
    switch: dict[str, Any] | None = None,
    caught: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        MANIFEST_MARKER: MANIFEST_VERSION,
        "pathspec": f"{flow}/{run_id}/{step}/{task_id}",
        "flow": flow,
        "run_id": run_id,
        "step": step,
        "task_id": task_id,
        "attempt": attempt,
        "artifacts": artifacts,
        "parameters": sorted(parameters),
        "foreach_stack": foreach_stack,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    for name, section in (("foreach", foreach), ("switch", switch), ("caught", caught), ("code", code)):
        if section is not None:
            manifest[name] = section
    return manifest


def is_manifest(value: Any) -> bool:
    """Whether ``value`` is a manifest (of any version; :func:`checked_manifest` refuses newer ones)."""
    return isinstance(value, dict) and MANIFEST_MARKER in value and isinstance(value.get("artifacts"), dict)


def checked_manifest(value: Any, *, where: str) -> dict[str, Any]:
    """``value`` as a manifest this package can read, or a :class:`StepInputError` naming ``where``.

    XCom pulls may hand back the artifact view the XCom backend builds around a manifest; its
    ``manifest`` attribute is the manifest.
    """
    manifest = getattr(value, "manifest", value)
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
