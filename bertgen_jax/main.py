"""Train BERTGEN: `python -m bertgen_jax.main --config configs/multitask.py[:variant] [--workdir DIR]
[--config.KEY=VALUE ...]`. Rerunning with the same workdir resumes from its latest checkpoint."""

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


def _several_processes() -> bool:
    """Is this one of several processes? Cloud TPU pods, SLURM jobs of several tasks, and the
    explicit flags all say so; jax.distributed then finds its peers."""
    if _COORDINATOR.value:
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes at INFO
    import jax  # after flags, so --jax_* flags and the environment apply first
    if _several_processes():
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from bertgen_jax import train  # noqa: PLC0415
    from bertgen_jax.errors import ConfigError, DataError, TrainingDiverged  # noqa: PLC0415
    config = _CONFIG.value
    path, _, variant = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    workdir = _WORKDIR.value or os.path.join("runs", name + (f"_{variant}" if variant else ""))
    logging.info("process %d of %d, %d devices, workdir %s", jax.process_index(), jax.process_count(),
                 jax.device_count(), workdir)
    try:
        summary = train.run(config, workdir)
    except (TrainingDiverged, FileNotFoundError, DataError, ConfigError) as err:
        logging.error("%s", err)
        sys.exit(1)
    if jax.process_index() == 0:
        print(train.results_table(summary))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
