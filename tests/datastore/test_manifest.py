"""The manifest format's one definition: what it builds is what it recognises, and a manifest of a
newer format, or anything that is not a manifest, is refused by name instead of misread."""

from __future__ import annotations

import pytest

from airflow_flowspec.datastore.manifest import (
    MANIFEST_MARKER,
    MANIFEST_VERSION,
    checked_manifest,
    new_manifest,
)
from airflow_flowspec.errors import StepInputError, is_flow_mistake


def manifest(**changes):
    built = new_manifest(
        flow="TrainFlow",
        run_id="r1",
        step="fit",
        task_id="2",
        attempt=1,
        artifacts={"score": {"hash": "ab" * 32, "type": "float", "size": 9, "repr": "0.5"}},
        parameters=["alpha"],
        foreach_stack=[],
        switch={"condition": "mode", "step": "fast"},
    )
    return {**built, **changes}


def test_a_built_manifest_is_recognised_and_carries_its_version():
    built = manifest()
    assert checked_manifest(built, where="test") is built
    assert built[MANIFEST_MARKER] == MANIFEST_VERSION and built["pathspec"] == "TrainFlow/r1/fit/2"
    assert "foreach" not in built and "caught" not in built  # sections only when they apply


@pytest.mark.parametrize(
    "value, message",
    [
        (manifest(**{MANIFEST_MARKER: MANIFEST_VERSION + 1}), "format version 2 (from TrainFlow/r1/fit/2)"),
        ({"model": "x"}, "expected a step's manifest, got dict"),
        ("s3://bucket/key", "expected a step's manifest, got str"),
    ],
    ids=["newer version", "a dict", "a URL"],
)
def test_what_cannot_be_read_is_refused_as_a_mistake(value, message):
    with pytest.raises(StepInputError) as caught:
        checked_manifest(value, where="Step 'join' of flow TrainFlow")
    assert message in str(caught.value) and str(caught.value).startswith("Step 'join' of flow TrainFlow")
    assert is_flow_mistake(caught.value)  # retrying the task would read the same value again
