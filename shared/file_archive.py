"""Archive segments as files under a folder (``ARCHIVE_URL=file:///path``): local development and tests.

A segment is written to a temporary file in the same folder, flushed to disk and linked into place (a link
fails where the name exists, so a segment is never overwritten), so a reader (or a crash) never sees half a
segment.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable

from shared.archive import SegmentMissing, same_or_conflict
from shared.errors import ArchiveUnavailable


class FileStorage:
    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def create(self, name: str, blob: bytes) -> None:
        # link() fails when the name exists, where rename() would replace it: a create-only write.
        try:
            self._write(name, blob, os.link)
        except FileExistsError:
            same_or_conflict(name, blob, self.get(name))

    def put(self, name: str, blob: bytes) -> None:
        self._write(name, blob, os.replace)

    def _write(self, name: str, blob: bytes, into_place: Callable[[str, str], None]) -> None:
        path = self._path(name)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".upload-")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(blob)
                    out.flush()
                    os.fsync(out.fileno())
                into_place(temporary, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
        except FileExistsError:
            raise
        except OSError as exc:
            raise ArchiveUnavailable.unreachable() from exc

    def get(self, name: str) -> bytes:
        try:
            with open(self._path(name), "rb") as source:
                return source.read()
        except FileNotFoundError:
            raise SegmentMissing(name) from None
        except OSError as exc:
            raise ArchiveUnavailable.unreachable() from exc

    def names(self, folder: str) -> list[str]:
        try:
            return sorted(entry.name for entry in os.scandir(self._path(folder))
                          if entry.is_file() and not entry.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ArchiveUnavailable.unreachable() from exc

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ArchiveUnavailable.unreachable() from exc
