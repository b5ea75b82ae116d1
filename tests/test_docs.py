"""Every fenced code block in README.md and docs/*.md is run or checked, every link between the
pages lands on a file and heading that exist, and docs/metaflow-compatibility.md's statuses agree
with what the package exports and what a flow file's command line accepts.

A block says how it is checked with an HTML comment on the line before its fence,
``<!-- docs-test: KIND (why, for a reader of the source) -->``; a block without one, or with a kind
this module does not know, fails :func:`test_every_block_says_how_it_is_checked`, so a new page
cannot add an unchecked block. The kinds:

- ``flow NAME``: a flow file, saved as NAME; the ``run`` blocks run it.
- ``run``: shell lines run as written (``<run_id>`` is the id of the one run the module makes), or
  Python run in a fresh process, against a datastore of this module's own.
- ``exec``: Python run in a fresh process.
- ``fragment``: the steps of a flow, run as the body of a flow class.
- ``parse``: commands that need running services, parsed by the real parser of their program.
- ``syntax``: shell that needs running services, checked with ``bash -n`` only.
- ``airflow-cfg``: airflow.cfg settings, compared with what ``airflow-flowspec airflow up`` writes.
- ``quick-start``: README's two commands, compared with what CI runs.
- ``layout``: the datastore's layout, compared with ``datastore/keys.py`` and a real run's files.
"""

from __future__ import annotations

import configparser
import keyword
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import REPO, load_flow, run_id_of

#: One worker runs this module: its tests share one run (under --dist loadgroup).
pytestmark = pytest.mark.xdist_group("docs")

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
KINDS = {"flow", "run", "exec", "fragment", "parse", "syntax", "airflow-cfg", "quick-start", "layout"}

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!-- docs-test: (\S+)(?: (\S+))?.*-->$")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, counted from 1
    language: str
    kind: str | None
    argument: str | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    def command_lines(self) -> list[str]:
        """Shell lines without comments and blank lines."""
        return [line for line in self.text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_blocks(page: Path) -> list[Block]:
    blocks, lines = [], page.read_text().splitlines()
    number = 0
    while number < len(lines):
        fence = _FENCE.match(lines[number])
        if fence is None:
            number += 1
            continue
        end = next(i for i in range(number + 1, len(lines)) if lines[i].startswith("```"))
        marker = _MARKER.match(lines[number - 1]) if number else None
        blocks.append(
            Block(
                page=page,
                line=number + 1,
                language=fence.group(1),
                kind=marker.group(1) if marker else None,
                argument=marker.group(2) if marker else None,
                text="\n".join(lines[number + 1 : end]) + "\n",
            )
        )
        number = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]


def blocks_of(kind: str) -> list[Block]:
    return [block for block in BLOCKS if block.kind == kind]


def ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


def test_every_block_says_how_it_is_checked():
    unchecked = [
        f"{block.where} ({block.kind or 'no docs-test comment'})"
        for block in BLOCKS
        if block.kind not in KINDS
    ]
    assert not unchecked, f"code blocks no test checks: {unchecked}; put <!-- docs-test: KIND --> before each"


# ---------------------------------------------------------------------- one run, shared by the pages


@dataclass(frozen=True)
class DocsRun:
    folder: Path
    environment: dict[str, str]
    run_id: str
    run_line: str


def _run_line(block: Block, flow_file: str) -> str | None:
    return next((line for line in block.command_lines() if line.startswith(f"python {flow_file} run")), None)


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory) -> DocsRun:
    """README.md's flow, saved under its name and run once with the documented command line."""
    folder = tmp_path_factory.mktemp("docs")
    (flow,) = blocks_of("flow")
    (folder / flow.argument).write_text(flow.text)
    environment = {**os.environ, "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(folder / "store")}
    run_line = next(line for block in blocks_of("run") if (line := _run_line(block, flow.argument)))
    result = _shell(run_line, folder, environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return DocsRun(folder, environment, run_id_of(result.stdout), run_line)


def _shell(
    line: str, folder: Path, environment: dict[str, str], run_id: str = ""
) -> subprocess.CompletedProcess:
    """A documented shell line as a user types it, with this Python for ``python`` and
    ``airflow-flowspec``."""
    line = line.replace("<run_id>", shlex.quote(run_id))
    line = re.sub(r"^python ", f"{shlex.quote(sys.executable)} ", line)
    line = re.sub(r"^airflow-flowspec ", f"{shlex.quote(sys.executable)} -m airflow_flowspec.shell ", line)
    return subprocess.run(
        ["bash", "-c", line], cwd=folder, env=environment, capture_output=True, text=True, timeout=240
    )


@pytest.mark.parametrize("block", blocks_of("run"), ids=ids(blocks_of("run")))
def test_run_blocks_run(block, docs_run):
    if block.language == "python":
        result = subprocess.run(
            [sys.executable, "-c", block.text],
            cwd=docs_run.folder,
            env=docs_run.environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip(), "the block printed nothing"
        return
    assert block.language == "bash", block.where
    for line in block.command_lines():
        if line == docs_run.run_line:
            continue  # the module's run, made once
        result = _shell(line, docs_run.folder, docs_run.environment, docs_run.run_id)
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_the_client_block_reads_the_documented_run(docs_run):
    """The client example prints the end step's ``best`` of the run the page before it made."""
    (block,) = [b for b in blocks_of("run") if b.language == "python"]
    result = subprocess.run(
        [sys.executable, "-c", block.text],
        env=docs_run.environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    alpha = float(re.search(r"--alpha (\S+)", docs_run.run_line).group(1))
    assert result.stdout.splitlines()[0] == str(max(row * alpha for row in [1, 2, 3]))
    assert docs_run.run_id in result.stdout.splitlines()[1]


# ---------------------------------------------------------------------- Python


@pytest.mark.parametrize("block", blocks_of("exec"), ids=ids(blocks_of("exec")))
def test_exec_blocks_run(block):
    result = subprocess.run([sys.executable, "-c", block.text], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("block", blocks_of("fragment"), ids=ids(blocks_of("fragment")))
def test_fragment_steps_get_the_larger_of_their_batch_and_resources_sizes(block):
    """A fragment is steps of a flow; a step on Batch is sized as its comment says."""
    from airflow_flowspec import FlowSpec, batch, resources, step
    from airflow_flowspec.aws_batch.jobs import step_job_settings
    from airflow_flowspec.decorators.base import step_decorators_of

    source = "class DocsFragmentFlow(FlowSpec):\n" + textwrap.indent(block.text, "    ")
    namespace = {"FlowSpec": FlowSpec, "batch": batch, "resources": resources, "step": step}
    exec(compile(source, block.where, "exec"), namespace)
    steps = [f for f in vars(namespace["DocsFragmentFlow"]).values() if "batch" in step_decorators_of(f)]
    assert steps, f"{block.where}: no step with @batch"
    for step_func in steps:
        decorators = step_decorators_of(step_func)
        given = {**decorators["batch"].attributes}
        settings = step_job_settings(
            step_func,
            flow_name="DocsFragmentFlow",
            step_name=step_func.__name__,
            queue="",
            job_definition="",
            image="",
            iam_role="",
        )
        for size in ("cpu", "memory", "gpu"):
            wanted = max(float(d.attributes[size] or 0) for d in decorators.values() if size in d.attributes)
            assert float(getattr(settings, size)) == wanted, size
        assert (settings.image, settings.queue) == (given["image"], given["queue"])


def test_the_flow_block_passes_the_lint(docs_run):
    (flow,) = blocks_of("flow")
    result = _shell(f"python {flow.argument} check", docs_run.folder, docs_run.environment)
    assert result.returncode == 0 and "lint passed" in result.stdout, result.stdout + result.stderr


# ---------------------------------------------------------------------- commands that need services


@pytest.mark.parametrize("block", blocks_of("parse"), ids=ids(blocks_of("parse")))
def test_parse_blocks_are_accepted_by_their_programs_parsers(block):
    for line in block.command_lines():
        argv = shlex.split(line, comments=True)
        if argv[0] == "airflow-flowspec":
            from airflow_flowspec.shell import _parser

            parser = _parser()
        elif argv[0] == "airflow":
            from airflow.cli.cli_parser import get_parser

            parser = get_parser()
        else:
            pytest.fail(f"{block.where}: no parser known for {argv[0]!r}")
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{block.where}: {line!r} is refused by {argv[0]}'s parser")


def test_the_up_block_shows_what_up_prints():
    (block,) = [b for b in blocks_of("parse") if "airflow up" in b.text]
    printed = [
        line.lstrip("# ").split(":")[0] for line in block.text.splitlines() if re.match(r"# \w[\w ]*: ", line)
    ]
    source = (REPO / "airflow_flowspec" / "shell.py").read_text()
    assert printed and all(f'f"{label}:' in source for label in printed), printed


@pytest.mark.parametrize("block", blocks_of("syntax"), ids=ids(blocks_of("syntax")))
def test_syntax_blocks_are_valid_shell(block):
    result = subprocess.run(["bash", "-n", "-c", block.text], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("block", blocks_of("airflow-cfg"), ids=ids(blocks_of("airflow-cfg")))
def test_airflow_cfg_blocks_match_what_up_writes(block, tmp_path):
    from airflow_flowspec.airflow.local_services import airflow_cfg

    documented = configparser.ConfigParser(interpolation=None)
    documented.read_string(block.text)
    written = airflow_cfg(tmp_path, 8080, tmp_path / "dags")
    for section in documented.sections():
        for option, value in documented.items(section):
            assert option in written.get(section, {}), f"[{section}] {option} is not written by airflow up"
            if section != "flowspec":  # [flowspec] values are the reader's own
                assert written[section][option] == value, f"[{section}] {option}"


# ---------------------------------------------------------------------- README's quick start


def test_the_quick_start_has_ci_s_command_and_the_example_run():
    (block,) = blocks_of("quick-start")
    install_and_run, install_and_test = block.command_lines()
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert install_and_test == ci_command
    install, run = install_and_run.rsplit(" && ", 1)
    assert install == "python3 -m venv .venv && .venv/bin/pip install -q -e ."
    example = run.removeprefix(".venv/bin/python ").removesuffix(" run")
    # tests/test_examples.py runs this command (test_readme_quick_start_command_...).
    assert (REPO / example).is_file() and run == f".venv/bin/python {example} run"


# ---------------------------------------------------------------------- the datastore's layout


def _layout_pattern(path: str) -> str:
    return re.sub(r"<[^>]*>", "*", path.removeprefix("<root>/"))


def test_the_layout_is_keys_py_s_and_every_file_of_a_run_has_a_line(docs_run):
    from airflow_flowspec.datastore import keys, scratch

    (block,) = blocks_of("layout")
    documented = {_layout_pattern(line.split()[0]) for line in block.text.splitlines() if line.strip()}
    layout = keys.__doc__.split("::", 1)[1].split("Why this shape")[0]
    in_keys = {_layout_pattern(line.split()[0]) for line in layout.splitlines() if line.strip()}
    assert in_keys <= documented, f"keys.py has, the page has not: {sorted(in_keys - documented)}"
    assert documented - in_keys == {f".tmp/{scratch.PREFIX}*-*-*"}, sorted(documented - in_keys)

    patterns = [re.compile(re.escape(p).replace(r"\*", "[^/]+") + "$") for p in documented]
    store = docs_run.folder / "store"
    files = [path.relative_to(store).as_posix() for path in store.rglob("*") if path.is_file()]
    assert files
    unlisted = [f for f in files if not any(p.match(f) for p in patterns)]
    assert not unlisted, f"a run left files the layout does not list: {unlisted}"


# ---------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(page: Path) -> list[str]:
    """The page's lines outside code blocks."""
    lines, inside = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            lines.append(line)
    return lines


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in _prose(page) if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_links_land_on_files_and_headings_that_exist(page):
    broken = []
    for line in _prose(page):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif anchor and (linked.suffix != ".md" or anchor not in _anchors(linked)):
                broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_the_readme_is_short_and_lists_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) < 10_000
    unlisted = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme]
    assert not unlisted, f"docs pages the README's table does not list: {unlisted}"


def test_bad_pages_are_caught(tmp_path):
    """The checks above would see an unmarked block and a broken anchor."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nSee [there](#elsewhere).\n\n```bash\necho hi\n```\n")
    (block,) = read_blocks(page)
    assert block.kind is None and block.kind not in KINDS
    assert "elsewhere" not in _anchors(page) and "title" in _anchors(page)
    assert _slug("Cleaning up: `airflow-flowspec gc`") == "cleaning-up-airflow-flowspec-gc"


# ---------------------------------------------------------------------- the Metaflow compatibility page


def _compatibility_rows(table: str) -> list[tuple[list[str], str, str]]:
    """The rows of one table of metaflow-compatibility.md: (names in the first column, status, notes)."""
    page = (REPO / "docs" / "metaflow-compatibility.md").read_text()
    section = page.split(f"## {table}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] in {"supported", "partly", "not yet", "not applicable"}:
            rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[1], cells[2]))
    assert rows, table
    return rows


def _metaflow_names(names: list[str]) -> list[str]:
    """The names of Metaflow's top-level API among ``names`` (``@retry(times)`` is ``retry``)."""
    import metaflow

    found = [re.sub(r"^@|^metaflow\.|\(.*$", "", name) for name in names]
    return [name for name in found if name.isidentifier() and hasattr(metaflow, name)]


@pytest.mark.parametrize("table", ["Authoring API", "Decorators", "Client API"])
def test_the_compatibility_page_says_which_of_metaflows_names_exist(table):
    import airflow_flowspec

    wrong = []
    for names, status, _ in _compatibility_rows(table):
        for name in _metaflow_names(names):
            if hasattr(airflow_flowspec, name) != (status in {"supported", "partly"}):
                wrong.append(f"{name}: {status}")
    assert not wrong, f"the page's status disagrees with what airflow_flowspec exports: {wrong}"


def test_the_compatibility_page_names_current_s_missing_attributes():
    from airflow_flowspec import current

    ((_, status, notes),) = [row for row in _compatibility_rows("Authoring API") if row[0] == ["current"]]
    supported, _, missing = notes.partition("Not yet:")
    assert status == "partly"
    for name in re.findall(r"`(?:current\.)?(\w+)", missing):
        assert not hasattr(type(current), name), f"current.{name} exists: the page says not yet"
    for name in re.findall(
        r"\b(\w+)\b", " ".join(c for c in re.findall(r"`([^`]+)`", supported) if not c.startswith("@"))
    ):
        if keyword.iskeyword(name):  # `name in current`
            continue
        assert hasattr(type(current), name), f"current.{name} is missing: the page says it is there"


def test_the_compatibility_page_says_which_commands_a_flow_file_has(docs_run):
    from airflow_flowspec.cli import _parser

    (flow,) = blocks_of("flow")
    parser = _parser(load_flow(docs_run.folder / flow.argument))
    commands = next(a for a in parser._actions if a.dest == "command").choices
    wrong = []
    for names, status, notes in _compatibility_rows("Commands of a flow file"):
        for name in (n for n in names if re.fullmatch(r"[a-z][a-z-]*", n)):
            if (name in commands) != (status in {"supported", "partly"}):
                wrong.append(f"{name}: {status}")
        if names == ["run"]:
            run_options = {o for a in commands["run"]._actions for o in a.option_strings}
            supported, _, missing = notes.partition("Not yet:")
            wrong += [f"run {o}: not yet" for o in re.findall(r"`(--[\w-]+)`", missing) if o in run_options]
            wrong += [
                f"run {o}: supported"
                for o in re.findall(r"`(--[\w-]+)`", supported)
                if o not in run_options and o not in {"--branch", "--production"}  # @project flows only
            ]
    assert not wrong, f"the page disagrees with the flow file's parser: {wrong}"
