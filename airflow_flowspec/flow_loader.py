"""Load a flow file under a stable module name, once per process.

cloudpickle pickles classes and functions defined in the flow file *by reference* to their module.
Airflow's DagBag imports a dags file as ``unusual_prefix_<sha>_<file>``, a name no other process
knows, so an instance of a class from the flow file would fail to unpickle in the next step. Every
step therefore loads the flow file as ``flowspec_flows.<FlowName>``: the same name in every task
process, on every worker and in every Batch container, whatever the file's path. Loading under
that name does not build a DAG (the Airflow registration only acts during a DagBag import).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import os
import sys
import types
from typing import Any

from airflow_flowspec.errors import FlowLoadError

PACKAGE = "flowspec_flows"

_loaded: dict[str, tuple[str, float, types.ModuleType]] = {}


def stable_module_name(flow_name: str) -> str:
    return f"{PACKAGE}.{flow_name}"


def _ensure_package() -> None:
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = []  # a namespace for flow modules; nothing to import from disk
        sys.modules[PACKAGE] = package


def load_flow_class(flow_file: str, flow_name: str) -> Any:
    """Import ``flow_file`` as ``flowspec_flows.<flow_name>`` (reloading if the file changed)."""
    path = os.path.abspath(flow_file)
    try:
        mtime = os.stat(path).st_mtime
    except OSError as err:
        raise FlowLoadError(
            f"Flow file {path} for flow {flow_name} cannot be read: {err.strerror}."
        ) from None
    cached = _loaded.get(flow_name)
    if cached and cached[0] == path and cached[1] == mtime:
        module = cached[2]
    else:
        module = _import(path, flow_name)
        _loaded[flow_name] = (path, mtime, module)
    flow_class = getattr(module, flow_name, None)
    if not isinstance(flow_class, type):
        raise FlowLoadError(f"Flow file {path} does not define a class named {flow_name}.")
    return flow_class


def load_recorded_flow_class(
    folder: str, index: dict[str, Any], flow_name: str, flow_file: str | None = None
) -> Any:
    """Import the flow from a run's recorded code (see :mod:`airflow_flowspec.datastore.code_package`),
    written out in ``folder``: the flow file, and the modules it imported from its folder.

    The task's own DAG parse has already imported the *current* versions of those modules from the
    dags folder; they are evicted, and a finder serves their names from the recorded copies, so
    ``import helpers`` in the flow (or in a step) gets the code the run started with. The flow's
    ``__file__`` is the recorded copy, so the graph is read from the source that runs.

    ``flow_file`` is where the run's flow file was when the run started: the code's frames name it
    (and the modules beside it) instead of the recorded copies, so a traceback points at the file
    the user edits, showing the lines that ran.
    """
    path = os.path.join(folder, index["flow"])
    cached = _loaded.get(flow_name)
    if cached and cached[0] == path:
        module = cached[2]
    else:
        origin = _origin_folder(flow_file, index["flow"])
        modules = {name: os.path.join(folder, relpath) for name, relpath in index.get("modules", {}).items()}
        for name in modules:
            sys.modules.pop(name, None)
        _RECORDED_MODULES.update(modules)
        if origin is not None:
            for name, relpath in index.get("modules", {}).items():
                _SHOWN_AS[modules[name]] = os.path.join(origin, relpath)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
        module = _import(path, flow_name, shown_as=os.path.join(origin, index["flow"]) if origin else None)
        _loaded[flow_name] = (path, 0.0, module)
    flow_class = getattr(module, flow_name, None)
    if not isinstance(flow_class, type):
        raise FlowLoadError(
            f"The recorded flow file {index['flow']} does not define a class named {flow_name}."
        )
    return flow_class


#: Module name -> the recorded file it is imported from (the runs loaded by this process).
_RECORDED_MODULES: dict[str, str] = {}
#: Recorded file -> the file it was recorded from, as its code's frames name it.
_SHOWN_AS: dict[str, str] = {}


def _origin_folder(flow_file: str | None, recorded_flow: str) -> str | None:
    """The folder the recorded paths were relative to, from where the flow file was."""
    if not flow_file:
        return None
    flow_file = os.path.abspath(flow_file)
    suffix = os.sep + os.path.normpath(recorded_flow)
    return flow_file[: -len(suffix)] if flow_file.endswith(suffix) else None


class _ShownAsLoader(importlib.machinery.SourceFileLoader):
    """Loads a recorded copy with its code naming the file it was recorded from.

    The source is compiled from the copy and put in ``linecache`` under the original name (an
    entry without a modification time, which ``linecache.checkcache`` keeps), so a traceback
    names the user's file and shows the lines that ran, even where that file has changed since or
    does not exist (a Batch container). Nothing is written to ``__pycache__``.
    """

    def __init__(self, fullname: str, path: str, shown_as: str):
        super().__init__(fullname, path)
        self.shown_as = shown_as

    def get_code(self, fullname: str) -> types.CodeType:
        source = self.get_data(self.path)
        text = importlib.util.decode_source(source)
        linecache.cache[self.shown_as] = (len(text), None, text.splitlines(True), self.shown_as)
        return compile(source, self.shown_as, "exec", dont_inherit=True)


def _spec(fullname: str, location: str, shown_as: str | None, **kwargs: Any) -> Any:
    loader = _ShownAsLoader(fullname, location, shown_as) if shown_as else None
    return importlib.util.spec_from_file_location(fullname, location, loader=loader, **kwargs)


class _RecordedModuleFinder(importlib.abc.MetaPathFinder):
    """Serves the modules of a run's recorded code ahead of ``sys.path`` (whose dags folder holds
    the current, possibly edited, versions)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        location = _RECORDED_MODULES.get(fullname)
        if location is None:
            return None
        shown_as = _SHOWN_AS.get(location)
        if os.path.basename(location) == "__init__.py":
            return _spec(fullname, location, shown_as, submodule_search_locations=[os.path.dirname(location)])
        return _spec(fullname, location, shown_as)


_FINDER = _RecordedModuleFinder()


def is_missing_flow_module(error: BaseException) -> bool:
    """Whether unpickling failed only because a ``flowspec_flows.*`` module is not imported."""
    cause = error.__cause__ or error
    return isinstance(cause, ModuleNotFoundError) and (cause.name or "").startswith(PACKAGE)


def _import(path: str, flow_name: str, shown_as: str | None = None) -> types.ModuleType:
    _ensure_package()
    name = stable_module_name(flow_name)
    spec = _spec(name, path, shown_as)
    if spec is None or spec.loader is None:
        raise FlowLoadError(f"Flow file {path} is not a Python file.")
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # the flow's own helper modules, as `python flow.py` would see them
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (SyntaxError, ImportError) as error:
        # The same file fails the same way on every attempt: a mistake, not a step failure.
        sys.modules.pop(name, None)
        raise FlowLoadError(
            f"Flow file {path} for flow {flow_name} cannot be imported: {type(error).__name__}: {error}. "
            f"Fix the file, or install what it imports where the step runs."
        ) from error
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
