"""The artifact view's HTML: server-rendered, no JavaScript, every value escaped.

Airflow shows the pages in an iframe (a tab on the DAG run and task pages, and under Browse) and
the "Artifacts" button opens them full-page. With no script, the sandbox Airflow puts on plugin
iframes changes nothing, and a repr holding markup shows as text.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote, urlencode

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px;color:#1a202c;font-size:14px}
a{color:#2b6cb0;text-decoration:none}a:hover{text-decoration:underline}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 6px}
.crumbs{color:#718096;margin-bottom:12px}.muted{color:#718096}
table{border-collapse:collapse;margin:6px 0 12px;max-width:100%}td,th{border:1px solid #e2e8f0;
padding:3px 8px;text-align:left;vertical-align:top}th{background:#f7fafc}
td.size{white-space:nowrap;text-align:right}td.type{max-width:16em;overflow-wrap:anywhere}
td.value{overflow-wrap:anywhere}
.doc{margin:2px 0 6px}.carried{color:#718096;font-size:12.5px}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#f7fafc;border:1px solid #e2e8f0;padding:8px;white-space:pre-wrap;word-break:break-all}
.step{border-left:3px solid #90cdf4;padding-left:10px;margin:14px 0}.ok{color:#2f855a}.bad{color:#c53030}
.pager a,.pager span{margin-right:8px}
"""


def document(title: str, crumbs: list[tuple[str, str | None]], body: str) -> str:
    trail = " / ".join(
        f'<a href="{escape(href)}">{escape(text)}</a>' if href else escape(text) for text, href in crumbs
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f'<div class="crumbs">{trail}</div>{body}</body></html>'
    )


def size_text(size: int) -> str:
    from airflow_flowspec.datastore.gc import format_size

    return format_size(int(size))


def index_page(root: str, dags: list[dict[str, Any]]) -> str:
    rows = "".join(
        f'<tr><td><a href="{escape(root)}/dags/{quote(d["dag_id"], safe="")}">{escape(d["dag_id"])}</a></td>'
        f"<td>{escape(d.get('description') or '')}</td></tr>"
        for d in dags
    )
    body = "<h1>Flows</h1>" + (
        f"<table><tr><th>DAG</th><th>Description</th></tr>{rows}</table>"
        if rows
        else '<p class="muted">No flow DAGs you may read.</p>'
    )
    return document("Flows", [("Flows", None)], body)


def dag_page(root: str, dag_id: str, runs: list[dict[str, Any]]) -> str:
    rows = "".join(
        f'<tr><td><a href="{escape(run_href(root, dag_id, r["run_id"]))}">{escape(r["run_id"])}</a></td>'
        f"<td>{escape(str(r.get('state') or ''))}</td><td>{escape(str(r.get('logical_date') or ''))}</td>"
        f"<td>{escape(str(r.get('run_type') or ''))}</td></tr>"
        for r in runs
    )
    body = f"<h1>{escape(dag_id)}</h1><h2>Recent runs</h2>" + (
        f"<table><tr><th>Run</th><th>State</th><th>Logical date</th><th>Type</th></tr>{rows}</table>"
        if rows
        else '<p class="muted">No runs yet.</p>'
    )
    return document(dag_id, [("Flows", f"{root}/"), (dag_id, None)], body)


def run_href(root: str, dag_id: str, run_id: str) -> str:
    return f"{root}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def task_path(root: str, dag_id: str, run_id: str, step: str) -> str:
    """A step's task page, before its ``?map_index=`` (the "Artifacts" link builds on it too)."""
    return f"{run_href(root, dag_id, run_id)}/tasks/{quote(step, safe='')}"


def task_href(root: str, dag_id: str, run_id: str, step: str, task_id: str | int) -> str:
    return f"{task_path(root, dag_id, run_id, step)}?{urlencode({'map_index': task_id})}"


def _artifact_path(root: str, dag_id: str, run_id: str, step: str, name: str) -> str:
    return f"{task_path(root, dag_id, run_id, step)}/artifacts/{quote(name, safe='')}"


def artifact_href(
    root: str, dag_id: str, run_id: str, step: str, task_id: str | int, name: str, **query: Any
) -> str:
    base = _artifact_path(root, dag_id, run_id, step, name)
    return f"{base}?{urlencode({'map_index': task_id, **query})}"


def download_href(root: str, dag_id: str, run_id: str, step: str, task_id: str | int, name: str) -> str:
    base = _artifact_path(root, dag_id, run_id, step, name)
    return f"{base}/download?{urlencode({'map_index': task_id})}"


def _run_crumbs(root: str, dag_id: str, run_id: str, *rest: tuple[str, str | None]) -> list[Any]:
    """Flows / DAG / run, then ``rest``: the trail above every page of a run (the run links to
    its page unless it is the page)."""
    dag = (dag_id, f"{root}/dags/{quote(dag_id, safe='')}")
    return [("Flows", f"{root}/"), dag, (run_id, run_href(root, dag_id, run_id) if rest else None), *rest]


def _type_text(type_name: str) -> str:
    """A qualified type name that may break after each dot, so that a long one wraps within its
    own column (whose width the style caps) at a module boundary, never the size beside it."""
    return "<wbr>".join(escape(part) + "." for part in type_name.split(".")[:-1]) + escape(
        type_name.split(".")[-1]
    )


def _artifact_row(href: str, artifact: dict[str, Any], note: str = "") -> str:
    name = f'<a href="{escape(href)}"><code>{escape(artifact["name"])}</code></a>{note}'
    return (
        f'<tr><td class="name">{name}</td>'
        f'<td class="type"><code>{_type_text(artifact["type"])}</code></td>'
        f'<td class="size">{escape(size_text(artifact["size"]))}</td>'
        f'<td class="value"><code>{escape(artifact["repr"])}</code></td></tr>'
    )


_TABLE_HEAD = "<tr><th>Artifact</th><th>Type</th><th>Size</th><th>Value</th></tr>"


def _artifact_table(
    root: str,
    dag_id: str,
    run_id: str,
    step: str,
    task: dict[str, Any],
    shown_once: frozenset[str] = frozenset(),
) -> str:
    """A task's artifacts, but those in ``shown_once`` (its step's table of what every task
    carries unchanged lists them)."""
    if not task["artifacts"]:
        return '<p class="muted">No artifacts.</p>'
    artifacts = [a for a in task["artifacts"] if a["name"] not in shown_once]
    if not artifacts:
        return '<p class="muted">No other artifacts.</p>'
    rows = "".join(
        _artifact_row(
            artifact_href(root, dag_id, run_id, step, task["id"], a["name"]),
            a,
            f' <span class="carried">unchanged from {escape(a["unchanged_from"])}</span>'
            if a.get("unchanged_from")
            else "",
        )
        for a in artifacts
    )
    return f"<table>{_TABLE_HEAD}{rows}</table>"


def _unchanged_table(root: str, dag_id: str, run_id: str, step: dict[str, Any]) -> str:
    """What every task of the step carries unchanged, once, grouped by the step that set it."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for artifact in step.get("unchanged") or []:
        groups.setdefault(artifact["from"], []).append(artifact)
    parts = []
    for origin, artifacts in groups.items():
        rows = "".join(
            _artifact_row(artifact_href(root, dag_id, run_id, origin, a["from_task"], a["name"]), a)
            for a in artifacts
        )
        every = "every task" if len(step["tasks"]) > 1 else "the task"
        parts.append(
            f"<div class='carried'>Unchanged from {escape(origin)} in {every}:</div>"
            f"<table>{_TABLE_HEAD}{rows}</table>"
        )
    return "".join(parts)


def _task_label(task: dict[str, Any]) -> str:
    path = task.get("foreach_path") or []
    return f"task {task['id']}" + (" " + "".join(f"[{i}]" for i in path) if path else "")


def run_page(root: str, dag_id: str, overview: dict[str, Any]) -> str:
    run_id = overview["run_id"]
    state = {
        "succeeded": '<span class="ok">succeeded</span>',
        "failed": '<span class="bad">failed</span>',
    }.get(overview["status"], "running")
    parts = [
        f"<h1>{escape(overview['flow'])} <span class='muted'>{escape(run_id)}</span></h1>",
        f"<p>Run {state}. DAG <code>{escape(dag_id)}</code>."
        + (
            f" Short id <code>{escape(str(overview['number']))}</code>: "
            f"<code>{escape(overview['flow'])}/{escape(str(overview['number']))}</code> in the client."
            if overview.get("number")
            else ""
        )
        + "</p>",
    ]
    if overview.get("parameters"):
        rows = "".join(
            f"<tr><td><code>{escape(str(k))}</code></td><td><code>{escape(str(v))}</code></td></tr>"
            for k, v in sorted(overview["parameters"].items())
        )
        parts.append(f"<h2>Parameters</h2><table>{rows}</table>")
    parts.append("<h2>Steps</h2>")
    for step in overview["steps"]:
        name = step["name"]
        goes = ", ".join(step.get("next") or [])
        kind = step.get("type") or ""
        head = f"<b>{escape(name)}</b> <span class='muted'>{escape(kind)}"
        if step.get("foreach"):
            head += f" over self.{escape(step['foreach'])}"
        head += f"{' → ' + escape(goes) if goes else ''}</span>"
        if step.get("doc"):
            head += f"<p class='doc'>{escape(step['doc'])}</p>"
        tasks = _task_list(root, dag_id, run_id, step)
        if step["pages"] > 1:
            href = step_href(root, dag_id, run_id, name, page=2)
            more = step["task_count"] - len(step["tasks"])
            tasks += f'<p><a href="{escape(href)}">{more} more tasks of {escape(name)}</a></p>'
        parts.append(f'<div class="step" id="step-{escape(name)}">{head}{tasks}</div>')
    return document(f"{overview['flow']} {run_id}", _run_crumbs(root, dag_id, run_id), "".join(parts))


def _task_list(root: str, dag_id: str, run_id: str, step: dict[str, Any]) -> str:
    if not step["tasks"]:
        return "<p class='muted'>Not run (yet).</p>"
    shown_once = frozenset(artifact["name"] for artifact in step.get("unchanged") or [])
    tasks = [_unchanged_table(root, dag_id, run_id, step)]
    for task in step["tasks"]:
        href = task_href(root, dag_id, run_id, step["name"], task["id"])
        status = "" if task["successful"] else ' <span class="bad">no results</span>'
        tasks.append(
            f'<div><a href="{escape(href)}">{escape(_task_label(task))}</a>{status}</div>'
            + _artifact_table(root, dag_id, run_id, step["name"], task, shown_once)
        )
    return "".join(tasks)


def step_href(root: str, dag_id: str, run_id: str, step: str, **query: Any) -> str:
    return f"{run_href(root, dag_id, run_id)}/steps/{quote(step, safe='')}?{urlencode(query)}"


def _pager(current: int, total: int, href: Any) -> str:
    """Links to pages 1..total (the first, last and those near ``current``), ``href(page)`` each."""
    shown = sorted({1, total, *range(max(1, current - 3), min(total, current + 3) + 1)})
    links, previous = [], 0
    for page in shown:
        if page > previous + 1:
            links.append("<span>…</span>")
        links.append(
            f"<span>{page}</span>" if page == current else f'<a href="{escape(href(page))}">{page}</a>'
        )
        previous = page
    return f'<div class="pager">Page: {"".join(links)}</div>'


def step_page(root: str, dag_id: str, step: dict[str, Any]) -> str:
    run_id, name = step["run_id"], step["name"]
    head = (
        f"<h1>{escape(name)} <span class='muted'>{step['task_count']} tasks, page {step['page']} of "
        f"{step['pages']}</span></h1>"
    ) + (f"<p class='doc'>{escape(step['doc'])}</p>" if step.get("doc") else "")
    pager = _pager(step["page"], step["pages"], lambda page: step_href(root, dag_id, run_id, name, page=page))
    crumbs = _run_crumbs(root, dag_id, run_id, (name, None))
    body = head + (pager if step["pages"] > 1 else "") + _task_list(root, dag_id, run_id, step)
    return document(f"{name} of {run_id}", crumbs, body)


def task_page(root: str, dag_id: str, task: dict[str, Any]) -> str:
    run_id, step = task["run_id"], task["step"]
    parts = [
        f"<h1>{escape(step)} <span class='muted'>{escape(_task_label(task))}</span></h1>",
        f"<p>Attempt {escape(str(task.get('attempt')))}"
        + (f", finished {escape(task['finished_at'])}" if task.get("finished_at") else "")
        + ("" if task["successful"] else ' <span class="bad">(no results stored)</span>')
        + "</p>",
    ]
    if task.get("caught"):
        parts.append(f"<p class='bad'>@catch took: <code>{escape(str(task['caught']))}</code></p>")
    parts.append("<h2>Artifacts</h2>" + _artifact_table(root, dag_id, run_id, step, task))
    for stream in ("stdout", "stderr"):
        if task.get(stream):
            parts.append(f"<h2>{stream}</h2><pre>{escape(task[stream])}</pre>")
    crumbs = _run_crumbs(root, dag_id, run_id, (f"{step} {_task_label(task)}", None))
    return document(f"{step} of {run_id}", crumbs, "".join(parts))


def artifact_page(root: str, dag_id: str, artifact: dict[str, Any]) -> str:
    run_id, step, task_id, name = artifact["run_id"], artifact["step"], artifact["task_id"], artifact["name"]
    parts = [
        f"<h1><code>{escape(name)}</code></h1>",
        f"<p><code>{escape(artifact['type'])}</code>, {escape(size_text(artifact['size']))} pickled. "
        f'<a href="{escape(download_href(root, dag_id, run_id, step, task_id, name))}" download>'
        f"Download pickle</a> <span class='muted'>(sha {escape(artifact['sha'][:12])})</span></p>",
    ]
    table = artifact.get("table")
    if table:
        head = "".join(f"<th>{escape(c)}</th>" for c in table["columns"])
        rows = "".join(
            f"<tr><th>{escape(i)}</th>{''.join(f'<td>{escape(cell)}</td>' for cell in row)}</tr>"
            for i, row in zip(table["index"], table["rows"], strict=False)
        )
        parts.append(
            f"<p class='muted'>{table['total_rows']} rows × {table['total_columns']} columns; the first "
            f"{table['kept_rows']} rows were recorded when the step saved it.</p>"
            f"<table><tr><th></th>{head}</tr>{rows}</table>"
        )
    else:
        parts.append(f"<pre>{escape(artifact['text'])}</pre>")
        if artifact.get("truncated") and artifact["page"] == artifact["pages"]:
            parts.append("<p class='muted'>The rest was not recorded; download the pickle for all of it.</p>")
    if artifact["pages"] > 1:
        parts.append(
            _pager(
                artifact["page"],
                artifact["pages"],
                lambda page: artifact_href(root, dag_id, run_id, step, task_id, name, page=page),
            )
        )
    crumbs = _run_crumbs(
        root,
        dag_id,
        run_id,
        (f"{step} task {task_id}", task_href(root, dag_id, run_id, step, task_id)),
        (name, None),
    )
    return document(f"{name} of {step}", crumbs, "".join(parts))


def message_page(root: str, title: str, message: str, link: tuple[str, str] | None = None) -> str:
    extra = f' <a href="{escape(link[1])}">{escape(link[0])}</a>' if link else ""
    return document(
        title, [("Flows", f"{root}/")], f"<h1>{escape(title)}</h1><p>{escape(message)}{extra}</p>"
    )
