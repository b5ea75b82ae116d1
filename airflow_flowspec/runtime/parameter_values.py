"""Parameter values that only the place where a run starts can know, carried to a start step that
runs somewhere else (an AWS Batch container).

An ``IncludeFile`` names a file on the machine that started the run (relative to its working
directory), and a callable default (``default=lambda: os.environ["TOKEN"]``) reads that machine's
environment; a container has neither. So the operator resolves them before submitting the start
job: the file's content and the default's value are stored in the datastore (a secret salted, as
its artifact is), and the spec names them by reference, so no secret is written into the spec.
"""

from __future__ import annotations

from typing import Any

from airflow_flowspec.datastore.artifacts import ArtifactRef

#: The key of a spec parameter value that is a reference to a value resolved where the run started.
RESOLVED_MARKER = "flowspec_resolved_parameter"
CONTENT = "content"  # an IncludeFile's content: the parameter's value as it is
RAW = "raw"  # a raw value (a callable default's, a secret's): converted as any given value


def resolve_where_the_run_starts(
    parameters: list[Any], given: dict[str, Any], datastore: Any, flow_name: str
) -> dict[str, Any]:
    """``given`` (the run's raw parameter values) with what only this machine can resolve stored
    in the datastore and replaced by references."""
    resolved = dict(given)
    for parameter in parameters:
        raw = given.get(parameter.name)
        from_default = raw is None and callable(parameter.default)
        if from_default:
            raw = parameter.default_value(flow_name)
        if raw is None:
            continue
        if parameter.is_include_file:
            kind, value = CONTENT, parameter.read(parameter.convert(raw, flow_name), flow_name)
        elif from_default or parameter.secret:
            kind, value = RAW, raw
        else:
            continue
        secret = [parameter.name] if parameter.secret else []
        ref = datastore.artifacts.save_many({parameter.name: value}, secret_names=secret)[parameter.name]
        resolved[parameter.name] = {RESOLVED_MARKER: kind, "ref": ref.to_json()}
    return resolved


def stored_value(raw: Any, datastore: Any, name: str) -> tuple[str, Any] | None:
    """``(kind, value)`` when ``raw`` refers to a value resolved where the run started, else None."""
    if not isinstance(raw, dict) or RESOLVED_MARKER not in raw:
        return None
    value = datastore.artifacts.load(ArtifactRef.from_json(raw["ref"]), what=f"parameter '{name}'")
    return raw[RESOLVED_MARKER], value
