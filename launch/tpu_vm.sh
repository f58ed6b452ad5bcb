#!/usr/bin/env bash
# Train bertgen_jax on a Cloud TPU VM or pod slice with `gcloud compute tpus tpu-vm`.
#
#   launch/tpu_vm.sh [options] SUBCOMMAND [-- --config.KEY=VALUE ...]
#
# Subcommands:
#   create   make the TPU VM / slice
#   install  on every worker: Python 3.11, clone REPO_URL at BRANCH, venv, requirements + jax[tpu]
#   run      on every worker, in the background: python -m bertgen_jax.main, one log per worker
#   logs     follow the workers' logs over ssh (Ctrl-C stops following, not training)
#   copy     upload the workdir (from worker 0) and every worker's log to BUCKET/RUN_NAME/
#   delete   delete the TPU VM / slice
#   all      create, install, run
#
# Options (each also read from the environment variable in capitals; a flag wins):
#   --name TPU_NAME            [bertgen]            --zone ZONE          [us-central2-b]
#   --accelerator ACCELERATOR  [v4-8] e.g. v4-32, v5litepod-8
#   --runtime RUNTIME          [tpu-ubuntu2204-base] TPU VM software version
#   --project PROJECT          [gcloud's default]   --spot (SPOT=1)      spot capacity
#   --repo REPO_URL            [this checkout's origin]  --branch BRANCH  [main]
#   --bucket BUCKET            gs://name or name, for copy
#   --data DATA_URL            gs:// folder that install mirrors to $HOME/bertgen_data on every
#                              worker (where the `paper` config reads its files; BERTGEN_DATA)
#   --config CONFIG            [configs/multitask.py] e.g. configs/multitask.py:paper
#   --run-name RUN_NAME        [bertgen]            names the workdir, the logs and the bucket folder
#   --workdir WORKDIR          [$HOME/bertgen_workdir/RUN_NAME on each worker]; on a multi-host
#                              slice give a path every host shares (a gcsfuse mount of the bucket
#                              or Filestore/NFS): the trainer refuses gs:// URLs
#   --set KEY=VALUE            one config override, repeatable (same as `-- --config.KEY=VALUE`)
#   --dry-run (DRY_RUN=1)      print each gcloud command instead of running it
#
# Every worker runs the same command: main.py's bare jax.distributed.initialize() finds the
# other hosts of the slice by itself, so no address or rank is passed here.
set -euo pipefail

TPU_NAME=${TPU_NAME:-bertgen}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-8}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-}
SPOT=${SPOT:-0}
REPO_URL=${REPO_URL:-}
BRANCH=${BRANCH:-main}
BUCKET=${BUCKET:-}
DATA_URL=${DATA_URL:-}
CONFIG=${CONFIG:-configs/multitask.py}
RUN_NAME=${RUN_NAME:-bertgen}
WORKDIR=${WORKDIR:-}
DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python3.11}  # the project needs 3.11; Ubuntu 22.04 images ship 3.10
JAX_TPU=${JAX_TPU:-"jax[tpu]==0.10.2"}  # matches the jax pin of requirements.txt
OVERRIDES=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

SUBCOMMAND=
while (($#)); do
  case $1 in
    --name|--zone|--accelerator|--runtime|--project|--repo|--branch|--bucket|--data|--config|--run-name|--workdir|--set)
      [[ $# -ge 2 ]] || die "$1 needs a value" ;;&
    --name) TPU_NAME=$2; shift ;;
    --zone) ZONE=$2; shift ;;
    --accelerator) ACCELERATOR=$2; shift ;;
    --runtime) RUNTIME=$2; shift ;;
    --project) PROJECT=$2; shift ;;
    --spot) SPOT=1 ;;
    --repo) REPO_URL=$2; shift ;;
    --branch) BRANCH=$2; shift ;;
    --bucket) BUCKET=$2; shift ;;
    --data) DATA_URL=$2; shift ;;
    --config) CONFIG=$2; shift ;;
    --run-name) RUN_NAME=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --set) OVERRIDES+=("--config.$2"); shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    create|install|run|logs|copy|delete|all) SUBCOMMAND=$1 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
  shift
done
[[ -n $SUBCOMMAND ]] || { usage; die "no subcommand given"; }

# Print a command the way a shell would read it back: plain words bare, others single-quoted.
show() {
  local out=() arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "+ ${out[*]}"
}

execute() {
  show "$@"
  if [[ $DRY_RUN != 1 ]]; then
    "$@"
  fi
}

# Values that go into a remote command line, quoted for the remote shell.
q() { printf '%q' "$1"; }

TPU=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE")
[[ -n $PROJECT ]] && WHERE+=("--project=$PROJECT")

# Remote paths: $HOME and $(hostname) must expand on the worker, hence the single quotes.
# shellcheck disable=SC2016
REMOTE_HOME='$HOME'
# shellcheck disable=SC2016
HOST='$(hostname)'
REPO_DIR="$REMOTE_HOME/bertgen"
LOG_DIR="$REMOTE_HOME/bertgen_logs"
LOG_FILE="$LOG_DIR/$(q "$RUN_NAME").$HOST.log"
if [[ -n $WORKDIR ]]; then
  REMOTE_WORKDIR=$(q "$WORKDIR")
else
  REMOTE_WORKDIR="$REMOTE_HOME/bertgen_workdir/$(q "$RUN_NAME")"
fi

on_workers() {  # on_workers WORKERS REMOTE_COMMAND
  execute "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" "--worker=$1" "--command=$2"
}

do_create() {
  local args=("${TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" "--accelerator-type=$ACCELERATOR"
              "--version=$RUNTIME")
  [[ $SPOT == 1 ]] && args+=(--spot)
  execute "${args[@]}"
}

do_install() {
  if [[ -z $REPO_URL ]]; then
    REPO_URL=$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null) ||
      die "set REPO_URL (or --repo): the workers clone the code from it"
  fi
  local py data=
  py=$(q "$PYTHON")
  if [[ -n $DATA_URL ]]; then
    data="; mkdir -p $REMOTE_HOME/bertgen_data && gcloud storage rsync --recursive $(q "$DATA_URL") $REMOTE_HOME/bertgen_data"
  fi
  # Idempotent: a second install updates the checkout, the packages and the data in place.
  on_workers all "set -e; sudo apt-get update -qq && sudo apt-get install -y -qq git $py $py-venv; \
if [ -d $REPO_DIR/.git ]; then git -C $REPO_DIR fetch -q origin $(q "$BRANCH") && \
git -C $REPO_DIR checkout -q FETCH_HEAD; else git clone -q --branch $(q "$BRANCH") $(q "$REPO_URL") $REPO_DIR; fi; \
cd $REPO_DIR && $py -m venv .venv && .venv/bin/pip install -q -r requirements.txt $(q "$JAX_TPU")$data"
}

do_run() {
  local cmd o
  cmd=".venv/bin/python -m bertgen_jax.main --config=$(q "$CONFIG") --workdir=$REMOTE_WORKDIR"
  for o in "${OVERRIDES[@]}"; do
    cmd+=" $(q "$o")"
  done
  # nohup + redirected stdin: the ssh session returns at once and training outlives it.
  on_workers all "cd $REPO_DIR && mkdir -p $LOG_DIR && nohup $cmd > $LOG_FILE 2>&1 < /dev/null &"
  echo "started on every worker of $TPU_NAME; follow with: $0 --name $TPU_NAME --zone $ZONE --run-name $RUN_NAME logs"
}

do_logs() {
  on_workers "${LOG_WORKERS:-all}" "tail -n 100 -F $LOG_FILE"
}

do_copy() {
  [[ -n $BUCKET ]] || die "set BUCKET (or --bucket) to copy the run to gs://BUCKET/$RUN_NAME/"
  local dest="gs://${BUCKET#gs://}"
  dest="${dest%/}/$RUN_NAME"
  # rsync rather than `cp -r`: repeatable, and never nests the folder one level deeper on a
  # second copy. A gs:// workdir is already in a bucket: only the logs then need copying.
  if [[ $WORKDIR != gs://* ]]; then
    on_workers 0 "gcloud storage rsync --recursive $REMOTE_WORKDIR $(q "$dest/workdir")"
  fi
  on_workers all "gcloud storage cp $LOG_FILE $(q "$dest/logs/")"
}

do_delete() {
  execute "${TPU[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
}

case $SUBCOMMAND in
  all) do_create; do_install; do_run ;;
  *) "do_$SUBCOMMAND" ;;
esac
