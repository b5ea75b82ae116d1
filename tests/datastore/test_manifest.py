"""The manifest's one definition: what it builds is what it parses back, field for field, and a
manifest of a newer format, a damaged one, or anything that is not a manifest, is refused by name
instead of misread."""

from __future__ import annotations

import json

import pytest

from airflow_flowspec.datastore.artifacts import ArtifactRef
from airflow_flowspec.datastore.keys import AttemptKey
from airflow_flowspec.datastore.manifest import (
    MANIFEST_MARKER,
    MANIFEST_VERSION,
    Caught,
    ForeachFrame,
    ForeachSplit,
    Manifest,
    SwitchTaken,
    new_manifest,
)
from airflow_flowspec.errors import StepInputError, is_flow_mistake

SCORE = ArtifactRef(hash="ab" * 32, type="float", size=9, repr="0.5")
ITEM = ArtifactRef(hash="cd" * 32, type="int", size=5, repr="3", pack="ef" * 32, offset=10)


def built(**sections) -> Manifest:
    return new_manifest(
        AttemptKey("TrainFlow", "r1", "fit", "2", 1),
        artifacts={"score": SCORE},
        parameters=["beta", "alpha"],
        foreach_stack=[ForeachFrame(step="start", var="rates", index=2, num_splits=4, item=ITEM)],
        **sections,
    )


def document(**changes) -> dict:
    return {**built(switch=SwitchTaken("mode", "fast")).to_json(), **changes}


def test_a_manifest_survives_json_field_for_field():
    """Guards the format every reader depends on: what the runtime writes is what every reader
    parses, through JSON (as the datastore and Airflow's XCom table keep it)."""
    manifest = built(
        foreach=ForeachSplit("rates", 4),
        switch=SwitchTaken("mode", "fast"),
        caught=Caught("ValueError", "bad rate"),
        code=ITEM,
    )
    again = Manifest.from_json(json.loads(json.dumps(manifest.to_json())), where="test")
    assert again == manifest
    assert again.pathspec == "TrainFlow/r1/fit/2" and again.index == 2 and again.foreach_indices == [2]
    assert again.parameters == ("alpha", "beta")
    assert again.finished_at() is not None


def test_sections_appear_in_the_json_only_when_they_apply():
    plain = built().to_json()
    assert plain[MANIFEST_MARKER] == MANIFEST_VERSION and plain["pathspec"] == "TrainFlow/r1/fit/2"
    assert not {"foreach", "switch", "caught", "code"} & set(plain)


@pytest.mark.parametrize(
    "value, message",
    [
        (document(**{MANIFEST_MARKER: MANIFEST_VERSION + 1}), "format version 2 (from TrainFlow/r1/fit/2)"),
        ({"model": "x"}, "expected a step's manifest, got dict"),
        ("s3://bucket/key", "expected a step's manifest, got str"),
        (document(attempt="1"), "damaged manifest (from 'TrainFlow/r1/fit/2')"),
        (document(artifacts={"score": {"hash": "ab"}}), "damaged manifest"),
        (document(foreach_stack=[{"step": "start"}]), "damaged manifest"),
    ],
    ids=["newer version", "a dict", "a URL", "attempt as text", "a broken reference", "a broken frame"],
)
def test_what_cannot_be_read_is_refused_as_a_mistake(value, message):
    with pytest.raises(StepInputError) as caught:
        Manifest.from_json(value, where="Step 'join' of flow TrainFlow")
    assert message in str(caught.value)
    assert str(caught.value).startswith("Step 'join' of flow TrainFlow")
    assert is_flow_mistake(caught.value)  # retrying the task would read the same value again
