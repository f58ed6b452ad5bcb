"""Small files (configs, vocabularies, manifests, summaries) written whole or not at all.

A crash or a full disk in the middle of a plain `open(path, "w")` leaves a truncated file that
a later run, `generate` or the data loader then fails on; a file written here is either its
previous version or its new one.
"""

from __future__ import annotations

import contextlib
import os
import uuid


def write_atomic(path: str, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` by way of a temporary file beside it, then rename.

    The temporary file sits in the same directory so that os.replace is a rename within one
    filesystem (atomic on POSIX and Windows); it is removed again if anything fails.
    """
    path = os.path.abspath(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with mode 0o666 lets the umask decide the permissions, as open(path, "w") would
    # (tempfile.mkstemp would make every such file private to its owner).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
