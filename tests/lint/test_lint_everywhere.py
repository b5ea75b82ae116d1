"""``python flow.py check``, ``python flow.py run`` and the dags-folder import lint alike.

Guards the promise that ``check`` never says a flow is fine that ``run`` or Airflow then refuses:
every lint case of every rule family (plus the Airflow-only rules) is written to a file, and the
same one-paragraph message must come out of all three places.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

from flow_source import HEADER
from harness import parse_dags_folder
from lint_cases import all_cases

#: ``[core] max_map_length`` for this test, so that a stated width can exceed it.
MAX_MAP_LENGTH = 8

EXTRA_CASES = {
    "stated foreach width over max_map_length": (
        textwrap.dedent("""
        class WideFlow(FlowSpec):
            @step
            def start(self):
                self.items = list(range(10))  # <-
                self.next(self.body, foreach="items")

            @step
            def body(self):
                self.next(self.join)

            @step
            def join(self, inputs):
                self.next(self.end)

            @step
            def end(self):
                pass
        """),
        ["runs over self.items, which has 10 items", "max_map_length (8)"],
    ),
}

# Run as `python <file> ARGS` is: the file is __main__, and the flow class is its last FlowSpec.
MAIN = """

if __name__ == "__main__":
    _flows = [v for v in list(globals().values()) if isinstance(v, type) and issubclass(v, FlowSpec)]
    _flows[-1]()
"""

# One interpreter for all files and both commands: each is run as `python <file> <command>` would
# run it, with its exit status and what it printed to stderr.
DRIVER = textwrap.dedent("""
    import contextlib, io, json, runpy, sys

    report = {}
    for path in sys.argv[1:]:
        for command in ("check", "run"):
            sys.argv = [path, command]
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                try:
                    runpy.run_path(path, run_name="__main__")
                    code = 0
                except SystemExit as exit:
                    code = exit.code
            report.setdefault(path, {})[command] = [code, stderr.getvalue()]
    print(json.dumps(report))
""")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".py"


def test_check_run_and_the_dags_folder_give_every_lint_error_alike(tmp_path):
    cases = {**all_cases(), **EXTRA_CASES}
    folder = tmp_path / "dags"
    folder.mkdir()
    files = {}
    for name, (body, _) in cases.items():
        path = folder / slug(name)
        path.write_text(HEADER + textwrap.dedent(body) + MAIN)
        files[name] = str(path)
    limit = {"AIRFLOW__CORE__MAX_MAP_LENGTH": str(MAX_MAP_LENGTH)}
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, *files.values()],
        capture_output=True,
        text=True,
        env={**os.environ, **limit},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cli = json.loads(result.stdout.splitlines()[-1])
    import_errors = parse_dags_folder(folder, {"AIRFLOW__CORE__MAX_MAP_LENGTH": str(MAX_MAP_LENGTH)})[
        "errors"
    ]

    for name, (_, expected) in cases.items():
        path = files[name]
        (check_code, check_err), (run_code, run_err) = cli[path]["check"], cli[path]["run"]
        assert check_code == 1 and run_code == 1, f"{name}: check exited {check_code}, run {run_code}"
        # The message, from the file name to the end of its paragraph: the same in all three.
        message = check_err.strip().split(": ", 1)[1]
        assert message.startswith(f"{path}, line "), f"{name}: {check_err}"
        assert "Traceback" not in check_err and "Traceback" not in run_err, name
        assert run_err.strip().split(": ", 1)[1] == message, f"{name}: check and run differ"
        assert message in import_errors[path], f"{name}: the dags folder says {import_errors[path][-500:]}"
        for fragment in expected:
            assert fragment in message, f"{name}: {fragment!r} not in {message!r}"
    assert set(import_errors) == set(files.values())
