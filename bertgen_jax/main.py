"""Train BERTGEN: `python -m bertgen_jax.main --config configs/multitask.py[:variant] [--workdir DIR]
[--config.KEY=VALUE ...]`. Rerunning with the same workdir resumes from its latest checkpoint.

A mistake ends in one `error: ...` line on stderr naming the flag, config key or file, with exit
code 2 for usage (flags, config values) and 1 for data (input files, checkpoints, a diverged
run); `--debug` (or BERTGEN_DEBUG=1) shows the traceback instead."""

import difflib
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, optionally :variant", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default: runs/<config name>)")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs "
                                   "outside a cluster JAX detects by itself (TPU pods, SLURM)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in a multi-process run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run")
flags.DEFINE_bool("debug", False, "show the traceback of an error (also: environment BERTGEN_DEBUG=1)")

USAGE_ERROR, DATA_ERROR = 2, 1  # exit codes


def _debugging(argv) -> bool:
    # Read from argv too: a flag-parsing failure happens before FLAGS.debug has a value.
    from bertgen_jax.errors import debug_requested  # noqa: PLC0415
    return debug_requested() or any(a in ("--debug", "-debug", "--debug=true", "--debug=True") for a in argv)


def _refuse(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _parse_flags(argv):
    """absl's parsing, with each failure (unknown flag, misspelt config key, a value of the
    wrong type, a config file that does not load) turned into one line and exit code 2."""
    try:
        rest = flags.FLAGS(argv)
        flags.FLAGS.config.keys()  # config_flags defers a missing file's error to first use
    except Exception as err:  # noqa: BLE001  every failure here is the command line's
        if _debugging(argv):
            raise
        _refuse(_unknown_key(argv) or _flag_message(err, argv), USAGE_ERROR)
    if len(rest) > 1:
        _refuse(f"unexpected arguments {rest[1:]}: flags only (--config, --workdir, "
                "--config.KEY=VALUE; --helpfull lists them)", USAGE_ERROR)
    return rest


def _unknown_key(argv) -> str | None:
    """The first --config.KEY=VALUE override whose KEY is not in the config, with the closest
    existing key. config_flags reports this as a KeyError without saying which flag."""
    # The override fails inside the --config flag's own parsing, which leaves its value unset:
    # load the file again to see which keys it has.
    path = _config_arg(argv)
    try:
        config = flags.FLAGS["config"].parser.parse(path) if path else None
        config.keys()  # a file that failed to load raises here (config_flags defers it)
    except Exception:  # noqa: BLE001  the config itself does not load: another message
        return None
    for arg in argv[1:]:
        if not arg.lstrip("-").startswith("config."):
            continue
        parts = arg.lstrip("-")[len("config."):].split("=", 1)[0].split(".")
        node = config
        for i, part in enumerate(parts):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                near = difflib.get_close_matches(part, keys, n=1)
                guess = ".".join(parts[:i] + [near[0]] + parts[i + 1:]) if near else None
                return (f"{arg}: {'.'.join(parts)!r} is not a config key"
                        + (f" (did you mean {guess!r}?)" if guess else "")
                        + "; configs/base.py lists every key")
            node = node[part]
    return None


def _config_arg(argv) -> str | None:
    """The value of --config as given on the command line (--config=X or --config X; the last
    one counts, as for absl)."""
    found = None
    for i, arg in enumerate(argv[1:], start=1):
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "config":
            found = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return found


def _flag_message(err: Exception, argv) -> str:
    """absl's and config_flags' messages, which may span lines or hold a traceback, as one line."""
    lines = [line.strip() for line in str(err.args[0] if isinstance(err, KeyError) and err.args else err)
             .splitlines() if line.strip()]
    if _config_arg(argv) is None and "--config=None" in str(err):
        return "--config FILE[:VARIANT] is required, e.g. --config configs/multitask.py:tiny"
    if isinstance(err, (KeyError, AttributeError)):  # an override _unknown_key could not place
        return f"a --config.KEY override names no config key ({' '.join(lines)}); configs/base.py lists every key"
    if not isinstance(err, flags.Error):  # the config file is missing, or fails to import or run
        return f"--config={_config_arg(argv)}: cannot load the config file ({lines[-1] if lines else type(err).__name__})"
    if any(line.startswith("Traceback") for line in lines):
        # config_flags wraps get_config()'s own error in its traceback: keep the first line
        # (which flag) and the last (what went wrong).
        return f"{lines[0]} {lines[-1]}"
    return " ".join(lines) or type(err).__name__


def _several_processes() -> bool:
    """Is this one of several processes? Cloud TPU pods, SLURM jobs of several tasks, and the
    explicit flags all say so; jax.distributed then finds its peers."""
    if _COORDINATOR.value:
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def main(argv):
    from bertgen_jax import config_checks  # noqa: PLC0415
    from bertgen_jax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged  # noqa: PLC0415
    debug = _debugging(argv) or flags.FLAGS.debug
    config = _CONFIG.value
    try:
        config_checks.check(config)  # before anything is logged, so a bad value is the only line
    except ConfigError as err:
        if debug:
            raise
        _refuse(str(err), USAGE_ERROR)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes at INFO
    import jax  # after flags, so --jax_* flags and the environment apply first
    if _several_processes():
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from bertgen_jax import train  # noqa: PLC0415
    path, _, variant = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    workdir = _WORKDIR.value or os.path.join("runs", name + (f"_{variant}" if variant else ""))
    logging.info("process %d of %d, %d devices, workdir %s", jax.process_index(), jax.process_count(),
                 jax.device_count(), workdir)
    try:
        summary = train.run(config, workdir)
    except (ConfigError, DataError, FileNotFoundError, TrainingDiverged, CheckpointError) as err:
        if debug:
            raise
        _refuse(str(err), USAGE_ERROR if isinstance(err, ConfigError) else DATA_ERROR)
    if jax.process_index() == 0:
        print(train.results_table(summary))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=_parse_flags)
