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
import importlib.util
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


def load_recorded_flow_class(folder: str, index: dict[str, Any], flow_name: str) -> Any:
    """Import the flow from a run's recorded code (see :mod:`airflow_flowspec.runtime.code_package`),
    written out in ``folder``: the flow file, and the modules it imported from its folder.

    The task's own DAG parse has already imported the *current* versions of those modules from the
    dags folder; they are evicted, and a finder serves their names from the recorded copies, so
    ``import helpers`` in the flow (or in a step) gets the code the run started with. The flow's
    ``__file__`` is the recorded copy, so the graph is read from the source that runs.
    """
    path = os.path.join(folder, index["flow"])
    cached = _loaded.get(flow_name)
    if cached and cached[0] == path:
        module = cached[2]
    else:
        modules = {name: os.path.join(folder, relpath) for name, relpath in index.get("modules", {}).items()}
        for name in modules:
            sys.modules.pop(name, None)
        _RECORDED_MODULES.update(modules)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
        module = _import(path, flow_name)
        _loaded[flow_name] = (path, 0.0, module)
    flow_class = getattr(module, flow_name, None)
    if not isinstance(flow_class, type):
        raise FlowLoadError(
            f"The recorded flow file {index['flow']} does not define a class named {flow_name}."
        )
    return flow_class


#: Module name -> the recorded file it is imported from (the runs loaded by this process).
_RECORDED_MODULES: dict[str, str] = {}


class _RecordedModuleFinder(importlib.abc.MetaPathFinder):
    """Serves the modules of a run's recorded code ahead of ``sys.path`` (whose dags folder holds
    the current, possibly edited, versions)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        location = _RECORDED_MODULES.get(fullname)
        if location is None:
            return None
        if os.path.basename(location) == "__init__.py":
            return importlib.util.spec_from_file_location(
                fullname, location, submodule_search_locations=[os.path.dirname(location)]
            )
        return importlib.util.spec_from_file_location(fullname, location)


_FINDER = _RecordedModuleFinder()


def is_missing_flow_module(error: BaseException) -> bool:
    """Whether unpickling failed only because a ``flowspec_flows.*`` module is not imported."""
    cause = error.__cause__ or error
    return isinstance(cause, ModuleNotFoundError) and (cause.name or "").startswith(PACKAGE)


def _import(path: str, flow_name: str) -> types.ModuleType:
    _ensure_package()
    name = stable_module_name(flow_name)
    spec = importlib.util.spec_from_file_location(name, path)
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
