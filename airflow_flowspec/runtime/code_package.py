"""The code a run started with, recorded once per distinct content: Metaflow's code package.

The start step stores the flow file as a small gzipped tarball (``<file name>`` inside), made
deterministic (no times, owners or modes from the machine) so that the same source always gives
the same bytes and so the same content hash: an unchanged flow costs nothing to record again. The
run's record names the package by its artifact reference; the client gives it back as
``run.code`` and a container can unpack it to run exactly that code.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from typing import Any


def build(flow_file: str) -> bytes:
    """The code package for ``flow_file``: a deterministic .tar.gz holding it under its file name."""
    with open(flow_file, "rb") as handle:
        source = handle.read()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        member = tarfile.TarInfo(os.path.basename(flow_file))
        member.size, member.mtime, member.mode = len(source), 0, 0o644
        tar.addfile(member, io.BytesIO(source))
    return gzip.compress(archive.getvalue(), mtime=0)


def record(datastore: Any, flow_file: str) -> dict[str, Any]:
    """Store the package (free when this source was stored before); what the run record keeps."""
    package = build(flow_file)
    ref = datastore.artifacts.save("code package", package)
    return {"package": ref.to_json(), "path": os.path.basename(flow_file)}


class RunCode:
    """``run.code``, as Metaflow's ``MetaflowCode``: ``.path``, ``.flowspec`` (the source),
    ``.tarball`` (a ``tarfile.TarFile``) and ``.extract(folder)``."""

    def __init__(self, flow_name: str, run_id: str, path: str, package: bytes):
        self.flow_name, self.run_id, self.path = flow_name, run_id, path
        self._package = package

    @property
    def tarball(self) -> tarfile.TarFile:
        return tarfile.open(fileobj=io.BytesIO(self._package), mode="r:gz")

    @property
    def flowspec(self) -> str:
        with self.tarball as tar:
            member = tar.extractfile(self.path)
            assert member is not None
            return member.read().decode("utf-8")

    def extract(self, folder: str) -> str:
        """Write the recorded flow file into ``folder``; return its path."""
        os.makedirs(folder, exist_ok=True)
        with self.tarball as tar:
            tar.extractall(folder, filter="data")
        return os.path.join(folder, self.path)

    def __repr__(self) -> str:
        return f"<code of {self.flow_name}/{self.run_id}: {self.path}>"
