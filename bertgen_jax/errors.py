"""Every error the command line reports as one clear line (no traceback) before exiting 1."""


class ConfigError(ValueError):
    """A config value cannot work (with these devices, this data, these other values)."""


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient norm stopped being finite."""


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
