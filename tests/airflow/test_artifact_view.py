"""The artifact view in Airflow's own API server app (built in-process, with its real auth manager
and plugin loading): what it shows, who may see it, and what it refuses.

The integration test (``tests/integration``) runs the same view in a real API server process, with
PostgreSQL and a browser; this one covers the edges in seconds.
"""

from __future__ import annotations

import json
import pickle
import textwrap
from urllib.parse import quote

import pytest
from harness import run_flow

FLOW = """
import pandas as pd

from airflow_flowspec import FlowSpec, Parameter, step

MARK = {mark!r}


class Marker:
    \"\"\"Leaves a line in MARK whenever it is unpickled: the server must never do that.\"\"\"

    def __init__(self):
        self.note = "kept"

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(MARK, "a") as mark:
            mark.write("unpickled\\n")

    def __repr__(self):
        return "<script>alert('x')</script>" + "m" * 200


class TheSettingsOfAnExperimentWhoseClassNameIsLongerThanAnyColumnShouldBe:
    pass


class ArtifactViewFlow(FlowSpec):
    \"\"\"Artifacts of every shape the view shows,
    from a data frame to a value whose repr is markup.

    Detail that the view leaves out.
    \"\"\"

    rows = Parameter("rows", default=120)

    @step
    def start(self):
        \"\"\"Make the data: a frame of users
        and a long list.

        Detail of start that the view leaves out.
        \"\"\"
        users = [f"u{{i}}" for i in range(self.rows)]
        self.settings = TheSettingsOfAnExperimentWhoseClassNameIsLongerThanAnyColumnShouldBe()
        self.frame = pd.DataFrame({{"user": users, "score": range(self.rows)}})
        self.numbers = list(range(3000))
        self.marker = Marker()
        self.groups = ["a", "b"]
        self.next(self.outer, foreach="groups")

    @step
    def outer(self):
        \"\"\"One group.\"\"\"
        self.group = self.input
        self.members = [1, 2, 3]
        self.next(self.inner, foreach="members")

    @step
    def inner(self):
        self.label = f"{{self.group}}-{{self.input}}"
        self.next(self.join_inner)

    @step
    def join_inner(self, inputs):
        self.labels = [i.label for i in inputs]
        self.next(self.join_outer)

    @step
    def join_outer(self, inputs):
        self.labels = sorted(label for i in inputs for label in i.labels)
        self.next(self.end)

    @step
    def end(self):
        pass
"""

PASSWORDS = {"admin": "admin-pw", "viewer": "viewer-pw", "outsider": "outsider-pw"}


@pytest.fixture(scope="module")
def view(airflow_db, tmp_path_factory):
    """(test client of Airflow's API server app, finished run, mark file)."""
    from fastapi.testclient import TestClient

    folder = tmp_path_factory.mktemp("artifact-view")
    mark = folder / "unpickled.txt"
    flow_file = folder / "artifact_view_flow.py"
    flow_file.write_text(textwrap.dedent(FLOW.format(mark=str(mark))))
    run = run_flow(flow_file, {"rows": 120})
    assert run.succeeded
    mark.unlink(missing_ok=True)  # the run itself may unpickle; from here on nothing may

    passwords = folder / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("AIRFLOW__CORE__AUTH_MANAGER", "integration.auth_manager.DagRefusingAuthManager")
        environment.setenv(
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer,outsider:viewer"
        )
        environment.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        from airflow.api_fastapi.app import create_app

        client = TestClient(create_app(apps="all"))
        yield client, run, mark


def headers(client, user: str) -> dict[str, str]:
    response = client.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def run_path(run, api: bool = True) -> str:
    return f"/flowspec/{'api/' if api else ''}dags/ArtifactViewFlow/runs/{quote(run.run_id, safe='')}"


def test_a_run_page_shows_the_graph_every_task_by_foreach_index_and_each_artifact(view):
    client, run, mark = view
    viewer = headers(client, "viewer")
    overview = client.get(run_path(run), headers=viewer).json()
    steps = {step["name"]: step for step in overview["steps"]}
    assert [s["name"] for s in overview["steps"]][0] == "start" and overview["steps"][-1]["name"] == "end"
    assert steps["start"]["next"] == ["outer"] and steps["start"]["foreach"] == "groups"
    inner = steps["inner"]
    assert inner["task_count"] == 6
    assert sorted(tuple(t["foreach_path"]) for t in inner["tasks"]) == [
        (g, m) for g in (0, 1) for m in (0, 1, 2)
    ]
    start = {a["name"]: a for a in steps["start"]["tasks"][0]["artifacts"]}
    assert start["frame"]["type"].endswith("DataFrame") and start["frame"]["has_preview"]
    assert start["numbers"]["repr"].startswith("[0, 1, 2") and start["numbers"]["size"] > 1000
    assert start["rows"]["repr"] == "120"

    page = client.get(run_path(run, api=False), headers=viewer)
    assert page.status_code == 200 and "inner" in page.text and "task 5 [1][2]" in page.text
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text  # a repr is text, never markup
    assert not mark.exists()


def test_a_value_opens_paginated_a_data_frame_as_a_table_and_downloads_as_its_pickle(view):
    client, run, mark = view
    viewer = headers(client, "viewer")
    base = f"{run_path(run)}/tasks/start/artifacts"

    numbers = client.get(f"{base}/numbers", headers=viewer).json()
    assert numbers["pages"] > 1 and numbers["text"].startswith("[0, 1, 2")
    second = client.get(f"{base}/numbers?page=2", headers=viewer).json()
    assert second["page"] == 2 and second["text"] and second["text"] not in numbers["text"]

    frame = client.get(f"{base}/frame", headers=viewer).json()
    assert frame["table"]["columns"] == ["user", "score"] and frame["table"]["total_rows"] == 120
    assert frame["table"]["rows"][0] == ["u0", "0"] and frame["pages"] == 4  # 100 rows kept, 25 a page
    html = client.get(f"{run_path(run, api=False)}/tasks/start/artifacts/frame?page=2", headers=viewer).text
    assert "<td>u25</td>" in html and "Download pickle" in html

    download = client.get(f"{base}/numbers/download", headers=viewer)
    assert download.status_code == 200
    assert download.headers["content-disposition"] == 'attachment; filename="start-0-numbers.pkl"'
    assert pickle.loads(download.content) == list(range(3000))  # here, in the test: not on the server

    marker = client.get(f"{base}/marker", headers=viewer).json()
    assert marker["text"].startswith("<script>")  # the repr recorded at save time, as JSON text
    assert client.get(f"{base}/marker/download", headers=viewer).status_code == 200
    assert not mark.exists(), "the server unpickled an artifact"


def test_each_step_task_carries_an_artifacts_link_to_its_page(view):
    client, run, _ = view
    viewer = headers(client, "viewer")
    links = client.get(
        f"/api/v2/dags/ArtifactViewFlow/dagRuns/{quote(run.run_id, safe='')}/taskInstances/inner/links",
        params={"map_index": 4},
        headers=viewer,
    ).json()
    url = links["extra_links"]["Artifacts"]
    assert url.startswith("/flowspec/dags/ArtifactViewFlow/runs/") and url.endswith(
        "/tasks/inner?map_index=4"
    )
    page = client.get(url, headers=viewer)
    assert page.status_code == 200 and "label" in page.text and "b-2" in page.text
    # A task that is not a step (the translator's flattening of the nested foreach) gets no button.
    instances = f"/api/v2/dags/ArtifactViewFlow/dagRuns/{quote(run.run_id, safe='')}/taskInstances"
    flatten = client.get(f"{instances}/outer__foreach/links", headers=viewer).json()
    assert not flatten["extra_links"].get("Artifacts")

    plugins = client.get("/api/v2/plugins", headers=viewer).json()["plugins"]
    views = {v["destination"]: v for p in plugins if p["name"] == "flowspec" for v in p["external_views"]}
    assert set(views) == {"nav", "dag_run", "task_instance"}
    # The task tab's link as the UI fills it in for a task that is not mapped ({MAP_INDEX} stays).
    tab = views["task_instance"]["href"].replace("{DAG_ID}", "ArtifactViewFlow")
    tab = tab.replace("{RUN_ID}", quote(run.run_id, safe="")).replace("{TASK_ID}", "start")
    assert "frame" in client.get(tab, headers=viewer).text


def test_only_users_airflow_lets_read_the_dag_see_its_artifacts(view):
    """Guards: plugin routes are not protected by Airflow on their own; the view asks the
    configured auth manager, for every route, whether the user may read the DAG."""
    client, run, _ = view
    outsider = headers(client, "outsider")
    for path in (
        run_path(run),
        run_path(run, api=False),
        f"{run_path(run)}/tasks/start/artifacts/numbers",
        f"{run_path(run)}/tasks/start/artifacts/numbers/download",
        "/flowspec/api/dags/ArtifactViewFlow",
    ):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=outsider).status_code == 403, path
    assert client.get("/flowspec/api/dags", headers=outsider).json() == []
    assert "ArtifactViewFlow" in [
        d["dag_id"] for d in client.get("/flowspec/api/dags", headers=headers(client, "viewer")).json()
    ]
    login = client.get(run_path(run, api=False))
    assert login.status_code == 401 and "/auth/login/" in login.text


def test_a_run_opens_by_its_short_id_and_as_latest_and_links_by_airflows_id(view):
    """Guards short ids in the view (issue 21): the run's number and ``latest`` open the run that
    Airflow's run id opens (numbered by its start step under Airflow), its pages link by Airflow's
    id, access is still the DAG's, and a number no run of the DAG has is a 404 saying so."""
    from airflow_flowspec import Flow, Run, namespace

    client, run, _ = view
    viewer = headers(client, "viewer")
    namespace(None)
    number = Run(f"ArtifactViewFlow/{run.run_id}").number
    assert isinstance(number, int)
    by_airflow_id = client.get(run_path(run), headers=viewer).json()
    assert by_airflow_id["number"] == number and by_airflow_id["dag_run_id"] == run.run_id
    assert (
        client.get(f"/flowspec/api/dags/ArtifactViewFlow/runs/{number}", headers=viewer).json()
        == by_airflow_id
    )
    latest = client.get("/flowspec/api/dags/ArtifactViewFlow/runs/latest", headers=viewer).json()
    assert latest["run_id"] == Flow("ArtifactViewFlow").latest_run.id
    page = client.get(
        f"/flowspec/dags/ArtifactViewFlow/runs/{number}/tasks/inner?map_index=4", headers=viewer
    )
    assert page.status_code == 200 and "b-2" in page.text
    assert f"/runs/{quote(run.run_id, safe='')}/" in page.text and f"/runs/{number}/" not in page.text
    outsider = headers(client, "outsider")
    assert client.get("/flowspec/api/dags/ArtifactViewFlow/runs/latest", headers=outsider).status_code == 403
    missing = client.get("/flowspec/api/dags/ArtifactViewFlow/runs/999999", headers=viewer)
    assert missing.status_code == 404 and "has no run number 999999 of the DAG" in missing.json()["detail"]


def test_names_from_the_url_cannot_reach_outside_the_run(view):
    """Guards: run ids, step and artifact names from the URL never reach outside the datastore
    root; a run is shown only if Airflow has it for that DAG."""
    client, run, _ = view
    viewer = headers(client, "viewer")
    run_id = quote(run.run_id, safe="")
    refused = [
        "/flowspec/api/dags/ArtifactViewFlow/runs/%2E%2E",
        "/flowspec/api/dags/ArtifactViewFlow/runs/..%2F..%2Fetc/tasks/start",
        f"/flowspec/api/dags/ArtifactViewFlow/runs/{run_id}/tasks/%2E%2E%2Fstart",
        f"/flowspec/api/dags/ArtifactViewFlow/runs/{run_id}/tasks/start/artifacts/..%2F..%2Fpasswd",
        f"/flowspec/api/dags/ArtifactViewFlow/runs/{run_id}/tasks/start/artifacts/__class__",
        f"/flowspec/api/dags/ArtifactViewFlow/runs/{run_id}/tasks/inner?map_index=99",
        "/flowspec/api/dags/ArtifactViewFlow/runs/manual__1999-01-01T00:00:00+00:00",  # not in Airflow
        f"/flowspec/api/dags/OtherFlow/runs/{run_id}",  # Airflow has no such run of that DAG
    ]
    for path in refused:
        response = client.get(path, headers=viewer)
        assert response.status_code in (404, 422), (path, response.status_code, response.text)


def test_a_wide_step_lists_its_first_tasks_on_the_run_page_and_the_rest_page_by_page(view, monkeypatch):
    from airflow_flowspec.client import overview

    client, run, _ = view
    viewer = headers(client, "viewer")
    monkeypatch.setattr(overview, "TASKS_PER_STEP", 4)  # inner has 6 tasks: two pages
    inner = next(s for s in client.get(run_path(run), headers=viewer).json()["steps"] if s["name"] == "inner")
    assert (inner["task_count"], inner["pages"], [t["id"] for t in inner["tasks"]]) == (
        6,
        2,
        ["0", "1", "2", "3"],
    )
    assert "2 more tasks of inner" in client.get(run_path(run, api=False), headers=viewer).text

    second = client.get(f"{run_path(run)}/steps/inner?page=2", headers=viewer).json()
    assert [(t["id"], t["foreach_path"]) for t in second["tasks"]] == [("4", [1, 1]), ("5", [1, 2])]
    html = client.get(f"{run_path(run, api=False)}/steps/inner?page=2", headers=viewer).text
    assert "page 2 of 2" in html and "b-2" in html
    assert client.get(f"{run_path(run)}/steps/nowhere", headers=viewer).status_code == 404
    assert client.get(f"{run_path(run)}/steps/inner", headers=headers(client, "outsider")).status_code == 403


def step_sections(html: str) -> dict[str, str]:
    """The run page's HTML of each step (its name, docstring, tasks and their tables)."""
    sections = {}
    for part in html.split('<div class="step" id="step-')[1:]:
        name, _, rest = part.partition('"')
        sections[name] = rest
    return sections


def test_the_run_page_shows_each_steps_docstring_and_the_flow_list_its_description(view):
    """Guards the docstrings a run records (its graph) and the DAG's description: each shows its
    first paragraph, joined, and leaves the detail after the blank line out."""
    client, run, _ = view
    viewer = headers(client, "viewer")
    steps = {s["name"]: s for s in client.get(run_path(run), headers=viewer).json()["steps"]}
    assert steps["start"]["doc"] == "Make the data: a frame of users and a long list."
    assert (steps["outer"]["doc"], steps["inner"]["doc"]) == ("One group.", "")
    sections = step_sections(client.get(run_path(run, api=False), headers=viewer).text)
    assert "<p class='doc'>Make the data: a frame of users and a long list.</p>" in sections["start"]
    assert "<p class='doc'>One group.</p>" in sections["outer"] and "class='doc'" not in sections["inner"]
    assert "Detail" not in "".join(sections.values())
    outer_page = client.get(f"{run_path(run, api=False)}/steps/outer", headers=viewer).text
    assert "<p class='doc'>One group.</p>" in outer_page

    listing = client.get("/flowspec/", headers=viewer).text
    summary = "Artifacts of every shape the view shows, from a data frame to a value whose repr is markup."
    assert f"<td>{summary}</td>" in listing and "Detail" not in listing


def test_artifacts_carried_unchanged_into_each_foreach_task_are_shown_once(view):
    """An artifact whose content hash every task of a step shares with the step before it is one
    row under "Unchanged from <step that set it>", not a row in each task's table; a carried
    artifact whose value differs between tasks stays in each task's table, marked."""
    client, run, _ = view
    viewer = headers(client, "viewer")
    steps = {s["name"]: s for s in client.get(run_path(run), headers=viewer).json()["steps"]}
    from_start = {"frame", "groups", "marker", "numbers", "rows", "settings"}
    assert steps["start"]["unchanged"] == []
    assert {(a["name"], a["from"], a["from_task"]) for a in steps["outer"]["unchanged"]} == {
        (name, "start", "0") for name in from_start
    }
    # In inner: members ([1, 2, 3] in both outer tasks) is one value from outer; group is not.
    assert {(a["name"], a["from"]) for a in steps["inner"]["unchanged"]} == {
        *((name, "start") for name in from_start),
        ("members", "outer"),
    }
    for task in steps["inner"]["tasks"]:
        marks = {a["name"]: a["unchanged_from"] for a in task["artifacts"]}
        assert (marks["group"], marks["label"], marks["numbers"]) == ("outer", None, "start")
    assert {a["name"] for a in steps["end"]["unchanged"]} == {"rows", "labels"}
    assert {a["from"] for a in steps["end"]["unchanged"] if a["name"] == "labels"} == {"join_outer"}

    sections = step_sections(client.get(run_path(run, api=False), headers=viewer).text)
    outer, inner = sections["outer"], sections["inner"]
    assert outer.count("Unchanged from start in every task:") == 1
    assert outer.count("<code>numbers</code>") == 1 and inner.count("<code>numbers</code>") == 1
    numbers_href = f"{run_path(run, api=False)}/tasks/start/artifacts/numbers?map_index=0"
    assert f'href="{numbers_href}"' in outer  # the one row opens the value where it was set
    assert inner.count("<code>group</code>") == 6 and inner.count("unchanged from outer</span>") == 6
    assert "Unchanged from outer in every task:" in inner and inner.count("<code>members</code>") == 1
    assert outer.count("<code>group</code>") == 2 and "No other artifacts." not in outer
    assert "Unchanged from join_outer in the task:" in sections["end"]

    # A step's later page says the same, from the steps before it.
    second = client.get(f"{run_path(run, api=False)}/steps/inner?page=1", headers=viewer).text
    assert second.count("<code>numbers</code>") == 1 and "Unchanged from start in every task:" in second


@pytest.fixture(scope="module")
def chromium_page():
    """A headless Chromium page (Debian's chromium, driven by Playwright; see tests/browser.py)."""
    from browser import installed_chromium
    from playwright.sync_api import sync_playwright

    chromium = installed_chromium()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            yield browser.new_page(viewport={"width": 760, "height": 900})
        finally:
            browser.close()


def test_sizes_never_wrap_and_a_long_type_name_wraps_within_its_column(view, chromium_page):
    """The run page as Chromium lays it out in a narrow window: every size is on one line (it
    wrapped to "21 / bytes"), and the long type name breaks inside its own column."""
    client, run, _ = view
    page = chromium_page
    page.set_content(client.get(run_path(run, api=False), headers=headers(client, "viewer")).text)
    lines_per_size = page.eval_on_selector_all(
        "td.size",
        """cells => cells.map(cell => {
            const range = document.createRange();
            range.selectNodeContents(cell);
            return new Set([...range.getClientRects()].map(rect => Math.round(rect.top))).size;
        })""",
    )
    assert lines_per_size and set(lines_per_size) == {1}, lines_per_size
    long_type = page.locator("td.type", has_text="TheSettingsOfAnExperiment").first
    box = long_type.bounding_box()
    assert box["width"] <= 16 * 14 + 2 * 8 + 2  # the column's cap (16em at 14px, padding, border)
    assert box["height"] > 2 * 16  # so the name wrapped in it
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
