"""Errors the command line reports as one clear line (no traceback) before exiting 1."""


class ConfigError(ValueError):
    """A config value cannot work (with these devices, this data, these other values)."""
