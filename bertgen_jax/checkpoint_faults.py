"""How a checkpoint directory goes wrong, and the pieces `checkpoint.Checkpoints` uses about it.

- A step directory orbax did not finish (an empty or hand-made `checkpoints/999/`, a partial
  copy without orbax's metadata file) is skipped with one warning (`FinishedSteps`): orbax
  would otherwise take it as the latest step, which neither restores nor lets a later save in.
- A checkpoint that does not restore (a truncated file) is moved aside (`move_aside`), never
  deleted, and only once an older one has restored.
- A failed save (a full disk) is one line naming the directory, the free space there and the
  last good step (`save_failed`); the failed save's temporary directory is removed.
- orbax logs a background failure with tracebacks from several threads (hundreds of lines for
  one full disk); `quiet_orbax_errors` sends those records to DEBUG, since the same failure is
  raised where training can stop, as one line, and `quiet_abandoned_work` the tracebacks of
  the failed save's (or restore's) other writes (reads) that Python prints as they fail later.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

# orbax writes this file into every step directory it saves, before the directory gets its
# final name (orbax/checkpoint/_src/metadata/checkpoint.py); a step directory without it was
# not written by a finished orbax save.
STEP_METADATA = "_CHECKPOINT_METADATA"
TMP_SUFFIX = ocp.path.step.TMP_DIR_SUFFIX  # "<step>.orbax-checkpoint-tmp...": a save in progress


def finished(step_dir) -> bool:
    return os.path.isfile(os.path.join(os.fspath(step_dir), STEP_METADATA))


class FinishedSteps:
    """orbax's standard step naming (an orbax NameFormat), listing finished step directories only.

    Every save, restore, listing and clean-up of the CheckpointManager goes through this, so a
    stray directory is never restored, never blocks a save, and never deleted.
    """

    def __init__(self):
        self._standard = ocp.path.step.standard_name_format()
        self._warned: set[str] = set()

    def build_name(self, step: int) -> str:
        return self._standard.build_name(step)

    def find_all(self, base_path):
        return [m for m in self._standard.find_all(base_path) if self._keep(m.path)]

    def find_step(self, base_path, step: int):
        metadata = self._standard.find_step(base_path, step)  # ValueError when absent, as orbax expects
        if not self._keep(metadata.path):
            raise ValueError(f"{metadata.path}: not a finished checkpoint (no {STEP_METADATA})")
        return metadata

    def _keep(self, path) -> bool:
        if finished(path):
            return True
        if str(path) not in self._warned:  # orbax lists the directory often: say it once
            self._warned.add(str(path))
            log.warning("checkpoint: ignoring %s: not a finished checkpoint (no %s in it: an empty, partly "
                        "copied or hand-made step directory); move it out of the way to silence this",
                        path, STEP_METADATA)
        return False


_ORBAX = f"{os.sep}orbax{os.sep}"


def _orbax_on_stack() -> bool:
    """Is orbax's code calling? (record.pathname cannot say: when the "absl" logger was created
    before absl was imported it is a plain Logger, whose records all point into absl itself.)"""
    frame = sys._getframe(1)
    while frame is not None:
        if _ORBAX in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _orbax_raised(err: BaseException | None) -> bool:
    """Did `err` (or an error it came from) pass through orbax's code?"""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        tb = err.__traceback__
        while tb is not None:
            if _ORBAX in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        err = err.__cause__ or err.__context__
    return False


def _tensorstore_read(err: BaseException | None) -> bool:
    """A TensorStore read of orbax's array files that failed (e.g. a truncated checkpoint being
    restored): raised by TensorStore's C++ futures, so no orbax frame is on its traceback, and
    asyncio reports it only when the abandoned future is collected, possibly much later."""
    return err is not None and "in OCDBT database at" in str(err)


class _OrbaxErrorsToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if (_ORBAX in record.pathname or _orbax_on_stack()
                or (record.exc_info and (_orbax_raised(record.exc_info[1]) or _tensorstore_read(record.exc_info[1])))):
            log.debug("orbax: %s", record.getMessage(), exc_info=record.exc_info)
            return False
        return True


_FILTER = _OrbaxErrorsToDebug()


def quiet_orbax_errors() -> None:
    """orbax's error records at DEBUG on this module's logger: those it logs through absl's
    logger, and asyncio's "exception was never retrieved" about orbax's abandoned reads and
    writes. Idempotent: logging adds one filter object once."""
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_FILTER)


def quiet_abandoned_work() -> None:
    """After a save or a restore failed, its other reads and writes fail too, later, in
    TensorStore callbacks on closed event loops and in orbax coroutines nobody awaits any more;
    Python reports each as an 'unraisable' exception (dozens of tracebacks after the one line).
    Those go to DEBUG from then on; any other unraisable exception is reported as before."""
    global _previous_hook
    if sys.unraisablehook is not _unraisable:
        _previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable


_previous_hook = sys.unraisablehook


def _unraisable(unraisable) -> None:
    code = getattr(unraisable.object, "cr_code", None)
    abandoned = ("Event loop is closed" in str(unraisable.exc_value)
                 or (code is not None and _ORBAX in code.co_filename) or _orbax_raised(unraisable.exc_value))
    if not abandoned:
        _previous_hook(unraisable)
        return
    try:  # the interpreter may be shutting down: logging must not raise here
        log.debug("after a failed checkpoint read or write: %s: %s", unraisable.exc_type.__name__,
                  unraisable.exc_value)
    except Exception:  # noqa: BLE001
        pass


def describe(err: BaseException) -> str:
    """One line for an orbax / TensorStore failure. The outermost error often only says "see full
    TensorStore details"; the innermost cause says what happened (which file, which byte range)."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return "no space left on device (ENOSPC)"
    text = next((str(e).strip() for e in reversed(chain) if str(e).strip()), type(chain[0]).__name__)
    line = text.splitlines()[0]
    return line if len(line) <= 400 else line[:400] + "..."


def size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def free_bytes(directory: str) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def remove_partial_save(directory: str, step: int) -> None:
    """Delete the temporary directory a failed save of `step` left (`<step>.orbax-checkpoint-tmp*`):
    never a checkpoint, and on a full disk the space it holds is what a rerun needs."""
    prefix = f"{step}{TMP_SUFFIX}"
    for name in os.listdir(directory):
        if name.startswith(prefix):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def save_failed(directory: str, step: int | None, problem: str, good: int | None) -> str:
    """The one line of a save that failed or was not started."""
    free = free_bytes(directory)
    last = (f"the last good checkpoint is step {good}, intact" if good is not None
            else "no checkpoint had been written yet")
    what = "a checkpoint" if step is None else f"step {step}"
    return (f"checkpoint: saving {what} to {directory} failed: {problem}; "
            f"{'unknown' if free is None else size(free)} free there. Training stopped and {last}: free "
            "space (or lower train.keep_checkpoints) and rerun the same command to resume")


def move_aside(directory: str, step: int) -> str:
    """Rename checkpoint `step` to `<directory>_bad/<step>` (`<step>-2`, ... when taken), out of
    orbax's sight but still on disk; returns where it went."""
    bad = directory.rstrip(os.sep) + "_bad"
    os.makedirs(bad, exist_ok=True)
    dest, n = os.path.join(bad, str(step)), 1
    while os.path.exists(dest):
        n += 1
        dest = os.path.join(bad, f"{step}-{n}")
    os.rename(os.path.join(directory, str(step)), dest)
    return dest
