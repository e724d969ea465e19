"""Notice when the running pyfile changes on disk.

The weights are mapped from the file, so what happens to the file matters:
* replaced by rename (a re-download to a temp name, ``mv``): safe, this process keeps the
  old inode and its mapping — we say so once;
* extended in place (``pyfile args --set``, ``pyfile add``): safe, the weights did not move;
* overwritten or truncated in place (``cp new old``): the mapped weights change under us.
  We detect it before the next generation (size, mtime and the model's first 4 KiB) and
  refuse with an error; a truncation that lands in the middle of a computation can still
  end the process with SIGBUS — that is what mmap does, and why in-place copies are unsafe.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from ..errors import ArchiveError

PROBE_BYTES = 4096


class FileGuard:
    def __init__(self, path: str, offset: int) -> None:
        self.path, self.offset = path, offset
        st = os.stat(path)
        self.ident = (st.st_dev, st.st_ino)
        self.size, self.mtime = st.st_size, st.st_mtime_ns
        self.head = self._head()
        self.noted = False

    def _head(self) -> Optional[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                return f.read(PROBE_BYTES)
        except OSError:
            return None

    def _note(self, what: str) -> None:
        if not self.noted:
            self.noted = True
            sys.stderr.write(f"pyfile: note: {self.path} {what}; this run keeps using the "
                             f"copy it started with (restart to use the new one)\n")

    def check(self) -> None:
        """Raise :class:`ArchiveError` if the weights we map were changed in place."""
        try:
            st = os.stat(self.path)
        except OSError:
            return self._note("was removed")
        if (st.st_dev, st.st_ino) != self.ident:
            return self._note("was replaced on disk")
        if (st.st_size, st.st_mtime_ns) == (self.size, self.mtime):
            return None
        if st.st_size > self.size and self._head() == self.head:
            self.size, self.mtime = st.st_size, st.st_mtime_ns
            return self._note("was extended (new members)")
        raise ArchiveError(f"{self.path} was overwritten in place while running, so the "
                           f"weights it maps changed; restart it (replace files by renaming "
                           f"a new copy over them, not by copying onto them)")
