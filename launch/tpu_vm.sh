#!/usr/bin/env bash
# Create, set up, train on, watch and delete a Cloud TPU VM (one host or a pod slice).
# Run with -h for the usage; launch/README.md has the walk-through.
set -euo pipefail

readonly PROG="launch/tpu_vm.sh"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# On every worker, relative to the ssh user's home (where `gcloud ... ssh --command` starts):
#   electra_jax/src/        the checkout (setup), where training runs
#   electra_jax/venv/       the Python environment with electra_jax[tpu]
#   electra_jax/train.log   this worker's training log (appended by each `train`)
#   electra_jax/train.pid   the training process, for status/stop
readonly REMOTE_TARBALL="electra_jax-src.tar.gz"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND --name=NAME --zone=ZONE [flags] [-- ARGS...]

Commands:
  create   create the TPU VM: on-demand (default), --spot, or --queued (a queued resource)
  setup    copy this checkout to every worker and pip install it with the [tpu] extra
           into a fresh venv (~/electra_jax/venv)
  train    start `python -m electra_jax.train --config=... --workdir=gs://...` on ALL
           workers (same config, workdir and data), under nohup; ARGS after -- are
           passed to it (e.g. --config.data.text='gs://b/corpus/*.txt'); each worker
           appends to its own log, ~/electra_jax/train.log
  status   the TPU's (or queued resource's) state, then whether training runs on each
           worker and the last lines of its log
  logs     tail a worker's training log (--worker, --lines, --follow)
  stop     stop training on every worker (rerunning `train` resumes from the last
           checkpoint in the workdir)
  ssh      open a shell on a worker, or run ARGS after -- as a command on --worker
  delete   delete the TPU VM (with --queued: the queued resource and its VM); gcloud
           asks for confirmation unless CLOUDSDK_CORE_DISABLE_PROMPTS=1

Flags (--flag=VALUE or --flag VALUE):
  --name=NAME              TPU VM name (also the queued resource's)      required
  --zone=ZONE              e.g. us-west4-a                               required
  --project=PROJECT        default: gcloud's configured project
  --accelerator_type=TYPE  e.g. v5litepod-8, v5litepod-64, v6e-8, v5p-8, v4-32  (create)
  --version=RUNTIME        TPU software version (create); default by generation:
                           v6e: v2-alpha-tpuv6e, v5p: v2-alpha-tpuv5,
                           v5litepod (v5e): v2-alpha-tpuv5-lite, v2-v4: tpu-ubuntu2204-base
  --spot                   spot capacity: cheaper, may be preempted (create)
  --queued                 create through a queued resource; pass it to status and
                           delete too
  --src=DIR                checkout to install (setup; train checks --config in it);
                           default: the repository holding this script
  --python=EXE             interpreter for the venv on the workers (setup), installed
                           with apt if missing; default python3.11
  --config=FILE            config file relative to the checkout, e.g. configs/base.py (train)
  --workdir=gs://B/PATH    the run's directory, on Cloud Storage so every worker sees
                           it and it outlives the VM (train)
  --worker=N|all           worker(s) for logs and ssh; default 0
  --lines=N                log lines to show (logs); default 100
  --follow                 keep following the log (logs)
  --dry_run                print the commands, one per line, and run nothing
  -h, --help               this text

Bad or missing flags print one `error:` line and exit with status 2.

Example (a v5e-8 on spot capacity):
  launch/tpu_vm.sh create --name=electra --zone=us-west4-a --accelerator_type=v5litepod-8 --spot
  launch/tpu_vm.sh setup  --name=electra --zone=us-west4-a
  launch/tpu_vm.sh train  --name=electra --zone=us-west4-a --config=configs/base.py \
      --workdir=gs://my-bucket/electra-base -- --config.data.dataset_dir=gs://my-bucket/owt128
  launch/tpu_vm.sh logs   --name=electra --zone=us-west4-a --follow
  launch/tpu_vm.sh delete --name=electra --zone=us-west4-a
EOF
}

die() {
  echo "error: $*" >&2
  exit 2
}

# Prints $1 as one shell word: unchanged when safe, else single-quoted.
quote_word() {
  local s=$1 q="'"
  if [[ $s =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//$q/$q\\$q$q}"
  fi
}

# Prints the arguments as a command line that a shell reads back as the same words;
# a `--flag=value` word is written --flag=<quoted value>.
quote_cmd() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      out+=("${BASH_REMATCH[1]}$(quote_word "${BASH_REMATCH[2]}")")
    else
      out+=("$(quote_word "$a")")
    fi
  done
  local IFS=' '
  printf '%s\n' "${out[*]}"
}

# Runs the command, or prints it with --dry_run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
  else
    "$@"
  fi
}

default_version() {
  case $1 in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    *) die "no default --version for --accelerator_type=$1; pass --version=RUNTIME (gcloud compute tpus tpu-vm versions list --zone=ZONE)" ;;
  esac
}

# ------------------------------------------------------------------ arguments
COMMAND="" NAME="" ZONE="" PROJECT="" ACCELERATOR_TYPE="" VERSION="" SRC="$REPO_ROOT"
PYTHON="python3.11" CONFIG="" WORKDIR="" WORKER="0" LINES="100"
SPOT=0 QUEUED=0 FOLLOW=0 DRY_RUN=0
EXTRA=()

while (($#)); do
  arg=$1
  shift
  case $arg in
    -h | --help) usage; exit 0 ;;
    --) EXTRA=("$@"); break ;;
    --spot | --queued | --follow | --dry_run)
      case $arg in
        --spot) SPOT=1 ;;
        --queued) QUEUED=1 ;;
        --follow) FOLLOW=1 ;;
        --dry_run) DRY_RUN=1 ;;
      esac ;;
    --spot=* | --queued=* | --follow=* | --dry_run=*)
      die "${arg%%=*} takes no value (got $arg)" ;;
    --*)
      flag=${arg%%=*}
      case $flag in
        --name | --zone | --project | --accelerator_type | --version | --src | --python | \
          --config | --workdir | --worker | --lines) ;;
        *) die "unknown flag $flag (see $PROG -h)" ;;
      esac
      if [[ $arg == *=* ]]; then
        value=${arg#*=}
      elif (($#)) && [[ $1 != --* ]]; then
        value=$1
        shift
      else
        die "$flag needs a value: $flag=VALUE"
      fi
      [[ -n $value ]] || die "$flag needs a non-empty value"
      case $flag in
        --name) NAME=$value ;;
        --zone) ZONE=$value ;;
        --project) PROJECT=$value ;;
        --accelerator_type) ACCELERATOR_TYPE=$value ;;
        --version) VERSION=$value ;;
        --src) SRC=$value ;;
        --python) PYTHON=$value ;;
        --config) CONFIG=$value ;;
        --workdir) WORKDIR=$value ;;
        --worker) WORKER=$value ;;
        --lines) LINES=$value ;;
      esac ;;
    -*) die "unknown flag $arg (see $PROG -h)" ;;
    *)
      [[ -z $COMMAND ]] || die "unexpected argument '$arg': one command at a time (see $PROG -h)"
      COMMAND=$arg ;;
  esac
done

[[ -n $COMMAND ]] || die "missing COMMAND: one of create, setup, train, status, logs, stop, ssh, delete (see $PROG -h)"
case $COMMAND in
  create | setup | train | status | logs | stop | ssh | delete) ;;
  *) die "unknown command '$COMMAND': use create, setup, train, status, logs, stop, ssh or delete" ;;
esac
[[ -n $NAME ]] || die "$COMMAND needs --name=NAME (the TPU VM's name)"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name=$NAME is not a valid TPU name: lowercase letters, digits and '-', starting with a letter"
[[ -n $ZONE ]] || die "$COMMAND needs --zone=ZONE (e.g. --zone=us-west4-a)"
if ((${#EXTRA[@]})) && [[ $COMMAND != train && $COMMAND != ssh ]]; then
  die "$COMMAND takes no arguments after --; only train (training flags) and ssh (a command) do"
fi
[[ $WORKER =~ ^(all|[0-9]+([-,][0-9]+)*)$ ]] || die "--worker=$WORKER must be a worker index, a list like 0,2, a range like 1-3, or all"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines=$LINES must be a number of lines"

ZONE_FLAGS=("--zone=$ZONE")
[[ -z $PROJECT ]] || ZONE_FLAGS+=("--project=$PROJECT")
TPU_VM=(gcloud compute tpus tpu-vm)
QUEUED_RESOURCES=(gcloud compute tpus queued-resources)

# Remote shell snippets (single quotes on purpose: they expand on the worker).
# shellcheck disable=SC2016
readonly REMOTE_RUNNING='pid=$(cat electra_jax/train.pid 2>/dev/null) && grep -qa electra_jax.train "/proc/$pid/cmdline" 2>/dev/null'
# shellcheck disable=SC2016
readonly REMOTE_REFUSE_IF_RUNNING="if $REMOTE_RUNNING; then echo \"\$(hostname): training is running (pid \$pid); stop it first: $PROG stop\" >&2; exit 1; fi"

# -------------------------------------------------------------------- commands
case $COMMAND in
  create)
    [[ -n $ACCELERATOR_TYPE ]] || die "create needs --accelerator_type=TYPE (e.g. v5litepod-8)"
    [[ -n $VERSION ]] || VERSION=$(default_version "$ACCELERATOR_TYPE")
    spot=()
    if ((SPOT)); then spot=(--spot); fi
    if ((QUEUED)); then
      run "${QUEUED_RESOURCES[@]}" create "$NAME" --node-id="$NAME" "${ZONE_FLAGS[@]}" \
        --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$VERSION" ${spot[@]+"${spot[@]}"}
    else
      run "${TPU_VM[@]}" create "$NAME" "${ZONE_FLAGS[@]}" \
        --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION" ${spot[@]+"${spot[@]}"}
    fi
    ;;

  setup)
    [[ -f $SRC/setup.cfg && -d $SRC/electra_jax ]] || die "--src=$SRC is not an electra_jax checkout (no setup.cfg and electra_jax/)"
    [[ $PYTHON =~ ^python3(\.[0-9]+)?$ ]] || die "--python=$PYTHON must name an interpreter like python3.11 or python3.12"
    tarball="${TMPDIR:-/tmp}/electra_jax-src-$NAME.tar.gz"
    # The checkout without version control, caches, builds and local runs.
    run tar -czf "$tarball" --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' \
      --exclude=.pytest_cache --exclude=.venv --exclude=build --exclude=dist --exclude=runs \
      --exclude=workdirs -C "$SRC" .
    run "${TPU_VM[@]}" scp "$tarball" "$NAME:$REMOTE_TARBALL" "${ZONE_FLAGS[@]}" --worker=all
    run rm -f "$tarball"
    remote="set -e; $REMOTE_REFUSE_IF_RUNNING; "
    remote+="if ! $PYTHON -c 'import ensurepip, venv' 2>/dev/null; then sudo apt-get update -q && "
    remote+="sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PYTHON $PYTHON-venv; fi; "
    remote+="mkdir -p electra_jax; rm -rf electra_jax/src electra_jax/venv; mkdir electra_jax/src; "
    remote+="tar -xzf $REMOTE_TARBALL -C electra_jax/src; rm $REMOTE_TARBALL; "
    remote+="$PYTHON -m venv electra_jax/venv; "
    remote+="electra_jax/venv/bin/python -m pip install -q --upgrade pip; "
    remote+="cd electra_jax/src; ../venv/bin/python -m pip install -q -e '.[tpu]'; "
    remote+="echo \"\$(hostname): electra_jax installed\""
    run "${TPU_VM[@]}" ssh "$NAME" "${ZONE_FLAGS[@]}" --worker=all --command="$remote"
    ;;

  train)
    [[ -n $CONFIG ]] || die "train needs --config=FILE (relative to the checkout, e.g. configs/base.py)"
    [[ -n $WORKDIR ]] || die "train needs --workdir=gs://BUCKET/PATH"
    [[ $WORKDIR == gs://?* ]] ||
      die "--workdir=$WORKDIR must be on Cloud Storage (gs://BUCKET/PATH): every worker writes to it and a local disk goes with the VM"
    [[ $CONFIG != /* ]] || die "--config=$CONFIG must be relative to the checkout (e.g. configs/base.py): it is read on the workers"
    [[ -f $SRC/$CONFIG ]] || die "--config=$CONFIG is not a file in $SRC (the checkout that setup installs)"
    train_cmd=$(quote_cmd ../venv/bin/python -m electra_jax.train --config="$CONFIG" \
      --workdir="$WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"})
    remote="set -e; $REMOTE_REFUSE_IF_RUNNING; "
    remote+="cd electra_jax/src 2>/dev/null || { echo \"\$(hostname): no ~/electra_jax/src; run $PROG setup first\" >&2; exit 1; }; "
    remote+="echo \"=== \$(date -u +%FT%TZ) train started on \$(hostname)\" >> ../train.log; "
    remote+="nohup $train_cmd >> ../train.log 2>&1 < /dev/null & "
    remote+="echo \$! > ../train.pid; "
    remote+="echo \"\$(hostname): training started (pid \$!), log ~/electra_jax/train.log\""
    run "${TPU_VM[@]}" ssh "$NAME" "${ZONE_FLAGS[@]}" --worker=all --command="$remote"
    ;;

  status)
    if ((QUEUED)); then
      run "${QUEUED_RESOURCES[@]}" describe "$NAME" "${ZONE_FLAGS[@]}"
    fi
    run "${TPU_VM[@]}" describe "$NAME" "${ZONE_FLAGS[@]}"
    remote="if $REMOTE_RUNNING; then echo \"\$(hostname): training running (pid \$pid)\"; "
    remote+="else echo \"\$(hostname): training not running\"; fi; "
    remote+="tail -n 3 electra_jax/train.log 2>/dev/null || true"
    run "${TPU_VM[@]}" ssh "$NAME" "${ZONE_FLAGS[@]}" --worker=all --command="$remote"
    ;;

  logs)
    follow=""
    if ((FOLLOW)); then follow=" -F"; fi
    run "${TPU_VM[@]}" ssh "$NAME" "${ZONE_FLAGS[@]}" --worker="$WORKER" \
      --command="tail -n $LINES$follow electra_jax/train.log"
    ;;

  stop)
    remote="if $REMOTE_RUNNING; then kill \"\$pid\"; echo \"\$(hostname): stopped training (pid \$pid)\"; "
    remote+="else echo \"\$(hostname): training not running\"; fi"
    run "${TPU_VM[@]}" ssh "$NAME" "${ZONE_FLAGS[@]}" --worker=all --command="$remote"
    ;;

  ssh)
    if ((${#EXTRA[@]})); then
      run "${TPU_VM[@]}" ssh "$NAME" "${ZONE_FLAGS[@]}" --worker="$WORKER" --command="${EXTRA[*]}"
    else
      [[ $WORKER =~ ^[0-9]+$ ]] || die "an interactive ssh needs one worker (--worker=N); to run a command on several, put it after --"
      run "${TPU_VM[@]}" ssh "$NAME" "${ZONE_FLAGS[@]}" --worker="$WORKER"
    fi
    ;;

  delete)
    if ((QUEUED)); then
      run "${QUEUED_RESOURCES[@]}" delete "$NAME" "${ZONE_FLAGS[@]}" --force
    else
      run "${TPU_VM[@]}" delete "$NAME" "${ZONE_FLAGS[@]}"
    fi
    ;;
esac
