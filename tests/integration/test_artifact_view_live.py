"""The artifact view in a real Airflow: served by the API server process (plugin loaded from the
package's entry point), read over HTTP with the users' own tokens, and used in headless Chromium
through Airflow's UI, from a task's "Artifacts" button to an artifact's value.

Chromium is Debian's ``chromium`` package, installed by ``.ci/install-browser`` (``.ci/run`` runs it);
the ``chromium`` fixture fails without it where CI promised it (``CI=true``) and skips elsewhere.
Playwright (the test extra) drives it. Screenshots go to ``test-output/browser/`` under the
repository root.
"""

from __future__ import annotations

import pickle
from urllib.parse import quote

import pytest

from .services import CHROMIUM_ARGS, REPO, AirflowServices

OUTPUT = REPO / "test-output" / "browser"


@pytest.fixture(scope="module")
def nested_run(airflow_services: AirflowServices) -> str:
    """A finished run of the nested-foreach example, triggered through REST."""
    run_id = airflow_services.trigger("NestedForeachFlow")
    airflow_services.wait_for_run("NestedForeachFlow", run_id, timeout=180)
    return run_id


def view_path(run_id: str, rest: str = "", api: bool = True) -> str:
    prefix = "/flowspec/api" if api else "/flowspec"
    return f"{prefix}/dags/NestedForeachFlow/runs/{quote(run_id, safe='')}{rest}"


def test_the_plugin_api_serves_a_run_only_to_users_airflow_lets_read_it(airflow_services, nested_run, client):
    """Guards (in the API server process): authentication, Airflow's per-DAG authorization, path
    escapes, and downloads that are the stored pickle."""
    services = airflow_services
    overview = services.get_json(view_path(nested_run), user="viewer")
    cell = next(step for step in overview["steps"] if step["name"] == "cell")
    assert sorted(tuple(t["foreach_path"]) for t in cell["tasks"]) == [
        (0, 0),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
        (2, 2),
    ]
    assert {a["name"] for a in cell["tasks"][0]["artifacts"]} >= {"product", "stack"}

    download = services.api(
        "GET", view_path(nested_run, "/tasks/end/artifacts/products/download"), user="viewer"
    )
    assert download.status_code == 200
    stored = client.Flow("NestedForeachFlow")[nested_run]["end"].task
    assert pickle.loads(download.content) == stored.data.products == [[10], [20, 21], [30, 31, 32]]

    assert services.http.get(view_path(nested_run)).status_code == 401  # no token, no cookie
    assert services.api("GET", view_path(nested_run), user="outsider").status_code == 403
    assert services.get_json("/flowspec/api/dags", user="outsider") == []
    for escape in ("/runs/%2E%2E", "/runs/..%2F..%2Fdata/tasks/end"):
        path = f"/flowspec/api/dags/NestedForeachFlow{escape}"
        assert services.api("GET", path, user="viewer").status_code in (404, 422), path
    escape = view_path(nested_run, "/tasks/end/artifacts/..%2F..%2Frun.json")
    assert services.api("GET", escape, user="viewer").status_code in (404, 422)


def test_a_user_follows_a_tasks_artifacts_link_to_its_values_in_chromium(
    airflow_services, nested_run, chromium
):
    from playwright.sync_api import sync_playwright

    services = airflow_services
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.goto(f"{services.base_url}/auth/login/")
            page.get_by_label("Username").fill("viewer")
            page.get_by_label("Password").fill(services.passwords["viewer"])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)

            # The task instance page of one nested-foreach task, as a user reaches it in the grid.
            run = quote(nested_run, safe="")
            # Airflow lists a task's extra links under "Extra Links" on its Details tab; one on the
            # UI's own origin opens in place.
            page.goto(f"{services.base_url}/dags/NestedForeachFlow/runs/{run}/tasks/cell/mapped/4/details")
            link = page.get_by_role("link", name="Artifacts", exact=True)
            link.wait_for(timeout=60_000)
            link.click()
            page.wait_for_url("**/flowspec/dags/**", timeout=30_000)
            artifacts = page
            artifacts.wait_for_load_state()
            assert "/flowspec/dags/NestedForeachFlow/runs/" in artifacts.url
            text = artifacts.inner_text("body")
            for name in ("product", "row_value", "stack"):
                assert name in text
            assert "[(2, 3), (1, 3)]" in text  # cell 4: item 1 of 3 in row 2 of 3, the value as recorded
            artifacts.screenshot(path=str(OUTPUT / "task-artifacts.png"), full_page=True)

            artifacts.get_by_role("link", name="stack").click()
            artifacts.wait_for_load_state()
            assert "Download pickle" in artifacts.inner_text("body")

            # The run's "Artifacts" tab: the view inside Airflow's own page (docs/artifact-view.png).
            page.goto(f"{services.base_url}/dags/NestedForeachFlow/runs/{run}/plugin/flow-run-artifacts")
            frame = page.frame_locator("iframe")
            frame.get_by_text("join_all").first.wait_for(timeout=60_000)
            page.screenshot(path=str(OUTPUT / "run-artifacts-tab.png"))
        finally:
            browser.close()
