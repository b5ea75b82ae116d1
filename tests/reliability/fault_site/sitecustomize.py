"""Start S3 fault injection in a child process, before it runs anything (see ``faults.py``).

Python imports ``sitecustomize`` at start-up from the first ``sys.path`` entry that has one;
``faults.fault_environment`` puts this folder first in PYTHONPATH. Another ``sitecustomize`` later
on the path (the virtualenv's, a distribution's) would be hidden by this one, so it is run first.
Does nothing unless ``FLOWSPEC_TEST_S3_FAULTS`` is set.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _run_hidden_sitecustomize() -> None:
    path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    globals()["chained"] = module  # for tests: the sitecustomize this one ran


def _activate_faults() -> None:
    if not os.environ.get("FLOWSPEC_TEST_S3_FAULTS"):
        return
    # Loaded by path under a private name: the tests folder is not on the child's sys.path.
    name = "flowspec_test_s3_faults"
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(_HERE), "faults.py"))
    assert spec is not None and spec.loader is not None
    faults = importlib.util.module_from_spec(spec)
    sys.modules[name] = faults  # dataclasses look their module up while the class is made
    spec.loader.exec_module(faults)
    faults.activate_from_environment()


_run_hidden_sitecustomize()
_activate_faults()
