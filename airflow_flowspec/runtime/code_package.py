"""The code a run started with, recorded once per distinct content: Metaflow's code package.

The start step stores the flow file's bytes as an artifact of their own (content-addressed, so an
unchanged flow costs one existence check and no upload), and the run's record names it with the
file name. The client gives it back as ``run.code``, a container can write it out and run exactly
that code. The tarball Metaflow users know is built only when asked for (``run.code.tarball``):
the start step stays as cheap as any other.
"""

from __future__ import annotations

import io
import os
from typing import Any


def record(datastore: Any, flow_file: str) -> dict[str, Any]:
    """Store the flow file's source (free when this source was stored before); what the run record keeps."""
    with open(flow_file, "rb") as handle:
        source = handle.read()
    ref = datastore.artifacts.save("flow source", source)
    return {"source": ref.to_json(), "path": os.path.basename(flow_file)}


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
