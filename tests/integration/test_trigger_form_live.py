"""Airflow's trigger form in Chromium, typed into as a user does: one field of each parameter kind,
"Run tags" left optional, a JSON default left as it is, and the run carrying every value with the
type the flow declared (``tests/airflow/test_trigger_form.py`` covers the edges without a browser).
"""

from __future__ import annotations

from .services import CHROMIUM_ARGS, REPO, AirflowServices

#: The flow of tests/airflow/test_trigger_form.py, with a parameter no run starts without.
KINDS_FLOW = (REPO / "tests" / "flows" / "parameter_kinds_flow.py").read_text()
REQUIRED_SEED = KINDS_FLOW.replace(
    'Parameter("seed", default=1)', 'Parameter("seed", type=int, required=True)'
)


def test_a_user_types_each_parameter_kind_into_the_trigger_form(
    airflow_services: AirflowServices, chromium, client
):
    from playwright.sync_api import sync_playwright

    services = airflow_services
    assert REQUIRED_SEED != KINDS_FLOW
    flow_file = services.dags_folder / "parameter_kinds_flow.py"
    flow_file.write_text(REQUIRED_SEED)
    services.wait_for_dags(["ParameterKindsFlow"], timeout=60, files=[flow_file])
    services.unpause("ParameterKindsFlow")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(f"{services.base_url}/auth/login/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(services.passwords["admin"])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)
            page.goto(f"{services.base_url}/dags/ParameterKindsFlow")
            page.get_by_role("button", name="Trigger").first.click()
            page.get_by_text("Run Parameters").wait_for(timeout=60_000)
            form = page.locator("[role=dialog][data-state=open]")

            def field(name: str):
                return form.locator(f"[name=element_{name}]")

            # The form marks a field required by its input's `required`: only seed, not "Run tags".
            fields = form.locator("input[name^=element_], textarea[name^=element_]")
            marked = fields.evaluate_all("inputs => inputs.filter(i => i.required).map(i => i.name)")
            assert marked == ["element_seed"]
            assert field("grid").input_value() == "[0.0, 0.1, 1.0, 10.0]"  # shown as the flow wrote it

            field("seed").fill("11")
            field("count").fill("5")
            field("ratio").fill("2.0")
            field("label").fill("tuned")
            form.locator("#switch\\:element_verbose").click()
            field("config").fill('{"depth": 4.0, "names": []}')
            field("flowspec_tags").fill("exp7\nbaseline")
            with page.expect_response(
                lambda r: r.url.endswith("/dagRuns") and r.request.method == "POST"
            ) as sent:
                form.get_by_role("button", name="Trigger", exact=True).click()
            assert sent.value.status == 200, sent.value.text()
            run_id = sent.value.json()["dag_run_id"]
        finally:
            browser.close()

    services.wait_for_run("ParameterKindsFlow", run_id, timeout=120)
    run = client.Run(f"ParameterKindsFlow/{run_id}")
    given = run["start"].task.data
    values = {name: getattr(given, name) for name in ("label", "count", "ratio", "verbose", "seed")}
    assert {name: (value, type(value)) for name, value in values.items()} == {
        "label": ("tuned", str),
        "count": (5, int),
        "ratio": (2.0, float),
        "verbose": (True, bool),
        "seed": (11, int),
    }
    assert given.grid == [0.0, 0.1, 1.0, 10.0] and {type(rate) for rate in given.grid} == {float}
    assert given.config == {"depth": 4.0, "names": []} and type(given.config["depth"]) is float
    assert {"exp7", "baseline"} <= run.tags
