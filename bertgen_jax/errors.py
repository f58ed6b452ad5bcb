"""Every error the command lines report as one clear `error:` line (no traceback): exit code 2
for a usage mistake (a flag, a config value: ConfigError), 1 for anything else (DataError, a
missing file, a checkpoint, a diverged run). BERTGEN_DEBUG=1 (or main's --debug) re-raises
instead, with the traceback."""

import os


def debug_requested() -> bool:
    """Did the user ask for tracebacks (environment BERTGEN_DEBUG set, and not to 0)?"""
    return os.environ.get("BERTGEN_DEBUG", "") not in ("", "0")


class ConfigError(ValueError):
    """A config value cannot work (with these devices, this data, these other values)."""


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient norm stopped being finite."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (a full disk, ...) or read back. The message names the
    checkpoint directory, and for a failed save the free space there and the last good step."""


class DataError(ValueError):
    """Input data is malformed. The message names the file, the record and the field."""

    def __init__(self, file, record: str | None, field: str | None, problem: str, fix: str = ""):
        self.file, self.record, self.field = str(file), record, field
        self.problem, self.fix = problem, fix
        where = ", ".join(
            [self.file] + ([record] if record else []) + ([f"field {field!r}"] if field else []))
        super().__init__(f"{where}: {problem}" + (f" ({fix})" if fix else ""))

    def __reduce__(self):
        # Custom __init__ arguments: without this the error cannot cross a process
        # boundary (grain workers pickle exceptions back to the parent).
        return (type(self), (self.file, self.record, self.field, self.problem, self.fix))
