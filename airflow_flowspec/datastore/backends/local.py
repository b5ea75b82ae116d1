"""A datastore in a local folder: for tests, laptops and workers sharing a network file system.

Readers may run while writers write (a join step reading while a retry rewrites a manifest), so
every write goes to a scratch file in ``<root>/.tmp/`` and is renamed into place: ``os.replace`` is
atomic on POSIX within one file system. All in-flight files are in that one folder, so what a
killed writer leaves is found (and swept) there, never half-written under a real key. Hidden
names (leading ``.``) can never be produced by
:func:`~airflow_flowspec.datastore.keys.safe_key_part`, so ``.tmp`` cannot collide with a key and
is left out of listings.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from airflow_flowspec.datastore.backends.base import StorageBackend, StoredObject
from airflow_flowspec.datastore.scratch import scratch_path, unlink_quietly
from airflow_flowspec.errors import ArtifactNotFoundError, DatastoreError, UnsafeKeyError

_SCRATCH_FOLDER = ".tmp"


class LocalBackend(StorageBackend):
    is_local = True

    def __init__(self, root_path: str):
        super().__init__()
        self.root = root_path
        # realpath once, so the containment check below compares like with like even when the
        # root itself is reached through a symlink (/tmp on macOS, a mounted share...).
        self._root_real = os.path.realpath(os.path.abspath(os.path.expanduser(root_path)))

    def describe(self, key: str) -> str:
        return os.path.join(self._root_real, *[part for part in key.split("/") if part])

    def _path(self, key: str) -> str:
        """The file path for ``key``, refusing anything that would land outside the root.

        Keys come from keys.py and are already safe; this is defence in depth against a key built
        some other way and against symlinks planted inside the root. The datastore never makes a
        symlink, so a key that goes through one (a file or a folder) is refused: following it would
        make a read, a write or a delete of this key act on another file, in or out of the root.
        """
        parts = key.split("/")
        if key.startswith("/") or "\\" in key or "\x00" in key or any(part in (".", "..") for part in parts):
            raise UnsafeKeyError(
                f"The datastore key {key!r} would escape the datastore root {self._root_real}; "
                f"build keys with airflow_flowspec.datastore.keys."
            )
        path = os.path.join(self._root_real, *[part for part in parts if part])
        resolved = os.path.realpath(path)
        if resolved != path:
            where = "outside" if not resolved.startswith(self._root_real + os.sep) else "inside"
            raise UnsafeKeyError(
                f"The datastore key {key!r} goes through a symlink: {path} resolves to {resolved}, "
                f"{where} the datastore root {self._root_real}. The datastore never makes links; "
                f"remove it (or pick another root)."
            )
        return path

    def scratch_dir(self) -> str:
        return os.path.join(self._root_real, _SCRATCH_FOLDER)

    # -- writing ---------------------------------------------------------------------------------

    def _scratch_file(self) -> tuple[str, BinaryIO]:
        temporary = scratch_path(self.scratch_dir())
        # os.open with 0o666 (not mkstemp's 0o600) so the final file honours the umask, and other
        # users (an Airflow worker, a notebook) can read what a Batch job wrote.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        return temporary, os.fdopen(descriptor, "wb")

    def _write_atomically(self, key: str, fill: Callable[[BinaryIO], None]) -> str:
        """Write through a scratch file renamed into place: readers never see half a file."""
        path = self._path(key)
        try:
            temporary, stream = self._scratch_file()
            try:
                with stream:
                    fill(stream)
                _replace_into_folder(temporary, path)
            except BaseException:
                unlink_quietly(temporary)
                raise
        except OSError as error:
            raise self._write_error(key, error) from error
        return path

    def put_bytes(self, key: str, data: bytes, *, content_hash: str | None = None) -> None:
        self._write_atomically(key, lambda stream: stream.write(data))
        self.counters.add(written=len(data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        # Written whole to a scratch file, then hard-linked into place: link() fails when the name
        # exists (as O_EXCL would), and a reader never sees the object half-written (as it would
        # one opened with O_EXCL and then filled).
        path = self._path(key)
        try:
            temporary, stream = self._scratch_file()
            try:
                with stream:
                    stream.write(data)
                for attempt in (1, 2):  # gc may remove the folder between makedirs and link
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    try:
                        os.link(temporary, path)
                        break
                    except FileExistsError:
                        return False
                    except FileNotFoundError:
                        if attempt == 2:
                            raise
                    except OSError as error:
                        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                            raise
                        return self._create_exclusively(path, data)  # a file system without links
            finally:
                unlink_quietly(temporary)
        except OSError as error:
            raise self._write_error(key, error) from error
        self.counters.add(written=len(data))
        return True

    def _create_exclusively(self, path: str, data: bytes) -> bool:
        """O_EXCL on the key's own path, for file systems that refuse hard links: a reader may
        find the object empty while it is written, which the callers read as not there yet."""
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        self.counters.add(written=len(data))
        return True

    def put_file(self, key: str, local_path: str, *, content_hash: str | None = None) -> None:
        def copy(stream: BinaryIO) -> None:
            with open(local_path, "rb") as source:
                shutil.copyfileobj(source, stream, 16 * 1024 * 1024)

        path = self._write_atomically(key, copy)
        self.counters.add(written=os.path.getsize(path))

    def adopt_file(self, key: str, local_path: str, *, content_hash: str | None = None) -> None:
        path = self._path(key)
        try:
            size = os.path.getsize(local_path)
            try:
                _replace_into_folder(local_path, path)
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
                # Scratch file on another file system: copy (atomically), then drop it.
                super().adopt_file(key, local_path, content_hash=content_hash)
                return
        except OSError as error:
            unlink_quietly(local_path)
            raise self._write_error(key, error) from error
        self.counters.add(written=size)

    def _write_error(self, key: str, error: OSError) -> DatastoreError:
        return DatastoreError(
            f"Could not write {self.describe(key)} in the local datastore {self.root}: {error}. "
            f"Check that the folder is writable and the disk is not full."
        )

    # -- reading ---------------------------------------------------------------------------------

    def _not_found(self, key: str) -> ArtifactNotFoundError:
        return ArtifactNotFoundError(f"Nothing is stored under key '{key}' (looked at {self.describe(key)}).")

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as stream:
                data = stream.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise self._not_found(key) from error
        except OSError as error:
            raise DatastoreError(
                f"Could not read {path} from the local datastore {self.root}: {error}."
            ) from error
        self.counters.add(read=len(data))
        return data

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            stream = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise self._not_found(key) from error
        except OSError as error:
            raise DatastoreError(
                f"Could not read {path} from the local datastore {self.root}: {error}."
            ) from error
        self.counters.add(read=os.fstat(stream.fileno()).st_size)
        return stream

    def download_file(self, key: str, local_path: str) -> None:
        path = self._path(key)
        try:
            shutil.copyfile(path, local_path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            if not os.path.isfile(path):
                raise self._not_found(key) from error
            raise DatastoreError(f"Could not copy {path} to {local_path}: {error}.") from error
        self.counters.add(read=os.path.getsize(local_path))

    def stored_size(self, key: str) -> int | None:
        self.counters.add()
        try:
            status = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return status.st_size if stat.S_ISREG(status.st_mode) else None

    def blob_is_stored(
        self,
        key: str,
        size: int,
        content_hash: str,
        *,
        freshen_after: float | None = None,
        known_intact: bool = False,
    ) -> bool:
        """Size first (one stat); a blob of the right size is then hashed, unless this process has
        just verified it (``known_intact``): on a disk, damage that keeps the size (a flipped bit)
        is visible only in the bytes, and a save must rewrite it. Freshening (see the base class)
        is ``os.utime``, from the stat already made."""
        import time

        from airflow_flowspec.datastore import encoding

        self.counters.add()
        path = self._path(key)
        try:
            status = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISREG(status.st_mode) or status.st_size != size:
            return False
        if not known_intact:
            try:
                with encoding.verified_source(self, key, size=size, expected_hash=content_hash):
                    pass
            except (encoding.ContentMismatch, ArtifactNotFoundError):  # damaged, or deleted since the stat
                return False
        if freshen_after is not None and time.time() - status.st_mtime > freshen_after:
            try:
                os.utime(path)
            except OSError:
                return False  # gone meanwhile, or another user's file: the caller writes it anew
            self.counters.add()
        return True

    def move(self, key: str, new_key: str) -> None:
        source, target = self._path(key), self._path(new_key)
        try:
            _replace_into_folder(source, target)
        except FileNotFoundError as error:
            raise self._not_found(key) from error
        except OSError as error:
            raise self._write_error(new_key, error) from error
        self.counters.add()

    def list_dir(self, prefix: str) -> tuple[list[str], list[str]]:
        folder = self._path(prefix.rstrip("/"))
        self.counters.add()
        folders: list[str] = []
        files: list[str] = []
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        for entry in entries:
            if entry.name.startswith("."):
                continue  # temporary files of writes in flight, and the scratch folder
            (folders if entry.is_dir() else files).append(entry.name)
        return sorted(folders), sorted(files)

    def iter_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[StoredObject]:
        base = prefix.rstrip("/")
        yield from self._walk(self._path(base) if base else self._root_real, base)

    def _walk(self, folder: str, key: str) -> Iterator[StoredObject]:
        self.counters.add()
        try:
            with os.scandir(folder) as scan:
                entries = sorted((entry for entry in scan if not entry.name.startswith(".")), key=_name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            entry_key = f"{key}/{entry.name}" if key else entry.name
            if entry.is_symlink():
                continue  # the datastore never makes links: whatever one points at is not ours
            if entry.is_dir():
                yield from self._walk(entry.path, entry_key)
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue  # deleted while we walked
            yield StoredObject(entry_key, info.st_size, info.st_mtime)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.counters.add()
            unlink_quietly(self._path(key))


def _name(entry: os.DirEntry) -> str:
    return entry.name


def _replace_into_folder(source: str, path: str) -> None:
    """``os.replace`` into the key's folder, made if needed: ``airflow-flowspec gc`` removes folders
    it emptied, and may do so between the ``makedirs`` and the rename, so the folder is made again,
    once."""
    for attempt in (1, 2):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.replace(source, path)
            return
        except FileNotFoundError:
            if attempt == 2 or not os.path.exists(source):
                raise
