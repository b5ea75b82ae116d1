"""Bad input meets the client: a tag that breaks the tag rule is refused by ``add_tag``.

Runs are written through the Datastore calls the runtime makes (``write_run_meta``, ``index_run``,
``finish_run``).
"""

from __future__ import annotations

import pytest

from airflow_flowspec import Run, metadata, namespace
from airflow_flowspec.client import source
from airflow_flowspec.datastore.store import Datastore
from airflow_flowspec.errors import TagError

FLOW = "LedgerFlow"


@pytest.fixture(autouse=True)
def forget_root_and_namespace(monkeypatch):
    monkeypatch.setattr(source, "_chosen_root", None)
    namespace(None)
    yield
    namespace(None)


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
    datastore.write_manifest(FLOW, run_id, "start", 0, 1, {"attempt": 1, "artifacts": {}})
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
