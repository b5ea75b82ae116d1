"""The code a run started with: recorded once per distinct content, and what every task runs.

Airflow builds each task from the dags folder as it is when the task starts, so a flow file (or a
module beside it) edited while a run is in progress would change the code of the run's remaining
tasks. Instead, the run's first task records the code (the flow file, the modules the flow imported
from its own folder, and the files ``[flowspec] code_include`` names) as one content-addressed
package in the datastore; its reference travels in every manifest, and every task of the run, on a
worker or in a Batch container, writes the package out once per host and imports the flow from it.

Only what the flow uses is recorded, not its whole folder as Metaflow does: in a shared dags folder
an edit to one flow must not make every other flow's package new. The package is a pickled dict of
file bytes, so unchanged code costs one existence check and no upload, and a container (which has
this package and cloudpickle) unpacks it without tar or Airflow.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import sys
from typing import Any

from airflow_flowspec import config
from airflow_flowspec.datastore import scratch
from airflow_flowspec.datastore.artifacts import ArtifactRef
from airflow_flowspec.errors import CodePackageError, FlowLoadError

#: More than this is not code: data belongs in artifacts or in S3, not in every task's start-up.
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
#: The package format this writes and reads.
PACKAGE_FORMAT = 1


def record(datastore: Any, flow_file: str) -> dict[str, Any]:
    """Store the code a run starts with (free when stored before); the package's reference, which
    travels in every task spec and manifest of the run."""
    return datastore.artifacts.save("code package", build_package(os.path.abspath(flow_file))).to_json()


def run_record_code(datastore: Any, package_ref: dict[str, Any], flow_file: str) -> dict[str, Any]:
    """The run record's ``code``: the package, and the flow file alone (``source``, read from
    ``flow_file``, the package's copy or the file it was recorded from), which the client gives
    back as ``run.code`` without unpacking the package."""
    with open(flow_file, "rb") as handle:
        source = datastore.artifacts.save("flow source", handle.read())
    return {"package": package_ref, "source": source.to_json(), "path": os.path.basename(flow_file)}


def build_package(flow_file: str) -> dict[str, Any]:
    """The flow file, the modules imported from its folder (found in ``sys.modules``), and the
    ``code_include`` files, by path relative to the flow's folder."""
    root = os.path.dirname(os.path.realpath(flow_file))
    cache = _cache_folder()
    prefixes = (root + os.sep, os.path.dirname(flow_file) + os.sep, cache + os.sep)
    flow_relpath = os.path.basename(flow_file)
    files = {flow_relpath: _read(flow_file, "the flow file")}
    modules: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        path = _module_file(module)
        # A prefix test first: a worker has thousands of modules, nearly all far from the flow.
        if path is None or not path.startswith(prefixes):
            continue
        relpath = _inside(root, path)
        if relpath is None and path.startswith(cache + os.sep):
            # Imported from an earlier run's recorded copy (a process that ran that run): this run
            # records the file of the same name as it is in the flow's folder now.
            recorded = os.path.relpath(path, cache).split(os.sep, 1)[-1]
            current = os.path.join(root, recorded)
            relpath = recorded.replace(os.sep, "/") if os.path.isfile(current) else None
            path = current
        if relpath is None or relpath == flow_relpath or name == "__main__":
            continue
        if name.startswith("unusual_prefix_") or name.startswith("flowspec_flows."):
            continue  # the flow file itself, as Airflow's DagBag or a task imported it
        files[relpath] = _read(path, f"module {name}")
        modules[name] = relpath
    for pattern in config.code_include():
        matches = [p for p in glob.glob(os.path.join(root, pattern), recursive=True) if os.path.isfile(p)]
        if not matches:
            raise CodePackageError(
                f"[flowspec] code_include pattern {pattern!r} matches no file in {root} (the flow "
                f"file's folder, which patterns are relative to). Fix the pattern or remove it."
            )
        for path in matches:
            relpath = _inside(root, path)
            if relpath is not None:
                files.setdefault(relpath, _read(path, f"code_include file {relpath}"))
    size = sum(len(data) for data in files.values())
    if size > MAX_PACKAGE_BYTES:
        largest = sorted(files, key=lambda p: -len(files[p]))[:3]
        raise CodePackageError(
            f"The code of flow file {flow_file} is {size // (1024 * 1024)} MB (largest: "
            f"{', '.join(largest)}), more than the {MAX_PACKAGE_BYTES // (1024 * 1024)} MB every task "
            f"of a run loads. Keep data out of the flow's folder and [flowspec] code_include: read it "
            f"in a step, or make it an artifact."
        )
    return {
        "format": PACKAGE_FORMAT,
        "flow": flow_relpath,
        "files": dict(sorted(files.items())),
        "modules": dict(sorted(modules.items())),
    }


def _module_file(module: Any) -> str | None:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return None  # built-in, namespace package, or compiled: not the flow's own source
    return path


def _inside(root: str, path: str) -> str | None:
    """``path`` relative to ``root``, if it is the flow's own code: under the folder, not in a
    hidden folder (a ``.venv``), not an installed distribution."""
    real = os.path.realpath(path)
    if not real.startswith(root + os.sep):
        return None
    relpath = os.path.relpath(real, root)
    parts = relpath.split(os.sep)
    if any(part.startswith(".") or part in ("site-packages", "__pycache__") for part in parts[:-1]):
        return None
    return relpath.replace(os.sep, "/")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise CodePackageError(
            f"Cannot record {what} ({path}) as part of the run's code: {error.strerror}."
        ) from None


def materialize(datastore: Any, package_ref: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Write the package out under the scratch folder (once per host and content); its folder and
    the package's index (``flow`` path and ``modules``)."""
    ref = ArtifactRef.from_json(package_ref)
    base = _cache_folder()
    folder = os.path.join(base, ref.hash)
    index_path = os.path.join(folder, ".flowspec-package")
    if os.path.isfile(index_path):
        return folder, _read_index(index_path)
    package = datastore.artifacts.load(ref, what="the run's code package")
    if not isinstance(package, dict) or package.get("format") != PACKAGE_FORMAT:
        raise FlowLoadError(
            f"The run's code package {ref.hash[:12]} was written by another airflow-flowspec version "
            f"(format {package.get('format') if isinstance(package, dict) else '?'}); install the same "
            f"version on every worker and in every Batch image."
        )
    # Named as scratch files are, so that what a task killed while writing left is swept.
    scratch.sweep(base, other_hosts_after_seconds=config.sweep_after_seconds())
    staging = scratch.scratch_path(base, ".staging")
    try:
        for relpath, data in package["files"].items():
            target = os.path.normpath(os.path.join(staging, relpath))
            if os.path.isabs(relpath) or not target.startswith(staging + os.sep):
                raise FlowLoadError(
                    f"The run's code package {ref.hash[:12]} names a file outside its folder "
                    f"({relpath!r}): refusing to write it."
                )
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(data)
        index = {"flow": package["flow"], "modules": package["modules"]}
        with open(os.path.join(staging, ".flowspec-package"), "w", encoding="utf-8") as handle:
            json.dump(index, handle)
        try:
            os.rename(staging, folder)
        except OSError:
            if not os.path.isfile(index_path):  # not another process that won the race: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, index


def _cache_folder() -> str:
    """Where recorded packages are written out, one folder per content hash."""
    return os.path.join(config.scratch_dir(), "code")


def _read_index(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class RunCode:
    """``run.code``, as Metaflow's ``MetaflowCode``: ``.path``, ``.flowspec`` (the source),
    ``.tarball`` (a ``tarfile.TarFile`` holding the file) and ``.extract(folder)``."""

    def __init__(self, flow_name: str, run_id: str, path: str, source: bytes):
        self.flow_name, self.run_id, self.path = flow_name, run_id, path
        self.source = source

    @property
    def flowspec(self) -> str:
        return self.source.decode("utf-8")

    @property
    def tarball(self) -> Any:
        import tarfile

        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            member = tarfile.TarInfo(self.path)
            member.size, member.mode = len(self.source), 0o644
            tar.addfile(member, io.BytesIO(self.source))
        archive.seek(0)
        return tarfile.open(fileobj=archive, mode="r")

    def extract(self, folder: str) -> str:
        """Write the recorded flow file into ``folder``; return its path."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, os.path.basename(self.path))
        with open(path, "wb") as handle:
            handle.write(self.source)
        return path

    def __repr__(self) -> str:
        return f"<code of {self.flow_name}/{self.run_id}: {self.path}>"
