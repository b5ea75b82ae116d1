"""Bad input meets the client: a tag that breaks the tag rule is refused by ``add_tag``, and a run
whose record cannot be read is skipped with one warning naming it, never hiding the flow's other
runs, and refused with a clear error when asked for by name.

Runs are written through the Datastore calls the runtime makes (``write_run_meta``, ``index_run``,
``finish_run``); a damaged record is then planted as a broken disk, another tool or an attacker
with write access would leave it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from harness import a_manifest

from airflow_flowspec import Flow, Run, metadata
from airflow_flowspec.client.namespaces import in_namespace
from airflow_flowspec.datastore import keys
from airflow_flowspec.datastore.store import Datastore
from airflow_flowspec.errors import TagError, UnreadableRecordError, UnreadableRecordWarning

# The client in every namespace, its root and namespace forgotten after each test (conftest).
pytestmark = pytest.mark.usefixtures("every_namespace")

FLOW = "LedgerFlow"


def record_run(datastore: Datastore, run_id: str, day: int, *, user: str = "ana", tags=()) -> None:
    record = datastore.write_run_meta(
        FLOW,
        run_id,
        {
            "created_at": f"2026-11-{day:02d}T00:00:00+00:00",
            "tags": [f"user:{user}", *tags],
            "system_tags": [f"user:{user}"],
        },
    )
    datastore.write_manifest(a_manifest(FLOW, run_id, "start"))
    datastore.index_run(FLOW, run_id, record)
    datastore.finish_run(FLOW, run_id, True, {})


@pytest.fixture
def three_runs(tmp_path) -> Datastore:
    """Runs first, middle and last, one day apart, by user ana; the client reads this root."""
    datastore = Datastore(str(tmp_path / "store"))
    for day, run_id in enumerate(["first", "middle", "last"], start=1):
        record_run(datastore, run_id, day)
    metadata(datastore.root)
    return datastore


def plant(datastore: Datastore, run_id: str, text: str) -> Path:
    path = Path(datastore.backend.describe(keys.run_meta_key(FLOW, run_id)))
    path.write_text(text)
    return path


DAMAGED_RECORDS = {
    "not JSON": ("{truncated", "is not valid JSON"),
    "a JSON list": ("[1, 2]", "holds list, not a JSON object"),
    "tags as one string": (
        json.dumps({"run_id": "last", "created_at": "2026-11-03T00:00:00+00:00", "tags": "user:ana"}),
        "holds tags 'user:ana', not a list of strings",
    ),
    "system tags as one string": (
        json.dumps({"run_id": "last", "tags": ["user:ana"], "system_tags": "user:ana"}),
        "holds system_tags 'user:ana', not a list of strings",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGED_RECORDS))
def test_one_unreadable_record_is_skipped_with_one_warning_and_hides_no_other_run(three_runs, damage):
    """Guards the client's skip of an UnreadableRecordError (client/unreadable.py, called by
    Flow.runs and Flow._latest) and what makes a record unreadable (_read_json, checked_run_record):
    the newest run's record is damaged; listing, iterating and latest_run still answer with the
    others, each saying once which run was skipped and which file to look at."""
    text, reason = DAMAGED_RECORDS[damage]
    path = plant(three_runs, "last", text)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own filter: each message once
        assert [run.id for run in Flow(FLOW)] == ["middle", "first"]
        assert [run.id for run in Flow(FLOW).runs()] == ["middle", "first"]
        assert Flow(FLOW).latest_run.id == "middle"
        assert Flow(FLOW).latest_successful_run.id == "middle"
    (warning,) = caught
    assert warning.category is UnreadableRecordWarning
    message = str(warning.message)
    assert message.startswith(f"Run {FLOW}/last is skipped: its record cannot be read. {path} {reason}")
    assert "\n" not in message

    with pytest.raises(UnreadableRecordError, match=f"Run {FLOW}/last cannot be read: {path} {reason}"):
        Run(f"{FLOW}/last")


def test_tags_stored_as_one_string_never_match_a_namespace_by_substring():
    """Guards in_namespace's list check, the second lock behind checked_run_record: "ana" is a
    substring of "user:ana", not one of its tags."""
    assert not in_namespace({"tags": "user:ana"}, "ana")
    assert not in_namespace({"tags": "user:ana"}, "user:ana")
    assert in_namespace({"tags": ["user:ana"]}, "user:ana")
    assert in_namespace({"tags": "user:ana"}, None)  # namespace(None) shows every run


def test_add_tag_refuses_control_characters_and_an_old_bad_tag_can_still_be_removed(three_runs):
    """Guards Run.replace_tags's call of the shared tag rule (run_tags.check_tags): a tag with a
    newline, a tab or an escape is refused naming the rule, and nothing is written; removing a tag
    stored before the rule is still allowed, so a user can clean it up."""
    run = Run(f"{FLOW}/middle")
    for tag in ["exp\nfake-run\tsucceeded", "\x1b[2J", "a\u202eb", ""]:
        with pytest.raises(TagError) as refused:
            run.add_tag(tag)
        assert str(refused.value).startswith(f"The tag {tag!r} of run {FLOW}/middle is refused: it ")
        assert "The rule: a tag is a non-empty string" in str(refused.value)
        with pytest.raises(ValueError):  # as the client's tag methods always raised
            run.replace_tags([], ["fine", tag])
    assert Run(f"{FLOW}/middle").tags == {"user:ana"}
    run.add_tag("café-実験-✓")  # printable Unicode is a tag like any other
    assert Run(f"{FLOW}/middle").user_tags == {"café-実験-✓"}

    old = "written\nbefore the rule"
    record_run(three_runs, "older", 4, tags=[old])
    Run(f"{FLOW}/older").remove_tag(old)
    assert Run(f"{FLOW}/older").tags == {"user:ana"}
