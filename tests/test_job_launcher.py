"""job_launcher.py: recipes, overrides, experiment records, local runs (one process, torchrun), Slurm through
submitit with fake ``sbatch``/``srun``/``scontrol`` first on PATH, requeue after preemption, and every error.

Most tests use a FAKE entry point (a ``main_suave.py`` written into a temporary folder: the real parser, no
training) so they are fast and test the launcher alone; the tests at the end run the project's own main_suave.py.
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import job_launcher
from launch.script_file import Flag, group_flags, merge_flags, read_script_file, validate_flags
from src import registry
from src.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# ------------------------------------------------------------------------------------------ the fake entry
FAKE_ENTRY = '''
"""Fake {module}: the real parser, then records each call, "trains" epochs of a sleep, resumes from checkpoint.json."""
import json, os, sys, time
sys.path.insert(0, {repo!r})
from {method}.args import get_args_parser


def main(args):
    os.makedirs(args.output_dir, exist_ok=True)
    ckpt = os.path.join(args.output_dir, "checkpoint.json")
    start = json.load(open(ckpt))["epoch"] if os.path.exists(ckpt) else 0
    names = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID"]
    with open(os.path.join(args.output_dir, "calls.jsonl"), "a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "start_epoch": start, "cwd": os.getcwd(), "args": vars(args),
                            "env": {{k: os.environ.get(k) for k in names}}}}) + "\\n")
    print("FAKE TRAINING OUTPUT", flush=True)
    stop_after = int(os.environ.get("FAKE_STOP_AFTER", "0"))
    for epoch in range(start, args.epochs):
        if os.environ.get("RANK", "0") == "0":
            with open(ckpt + ".tmp", "w") as f:
                json.dump({{"epoch": epoch + 1}}, f)
            os.replace(ckpt + ".tmp", ckpt)
        if stop_after and epoch + 1 >= stop_after:
            return 1
        if epoch + 1 == int(os.environ.get("FAKE_HANG_AFTER", "0")):
            time.sleep(60)  # a long epoch, until a signal arrives
    return int(os.environ.get("FAKE_EXIT_CODE", "0"))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
'''


def write_fake_entry(root: Path) -> str:
    """main_suave.py and main_daino.py that parse with the real parsers (as the launcher checks) and fake the rest."""
    root.mkdir(parents=True, exist_ok=True)
    for method in ("suave", "daino"):
        (root / f"main_{method}.py").write_text(FAKE_ENTRY.format(module=f"main_{method}", method=method, repo=REPO))
    return str(root)


# A recipe with the release's quirks: a duplicated flag (--epsilon twice in suave/scripts/train_*.sh), two spaces
# before a backslash, a value list, a <placeholder> that a shell would read as a redirection, no final newline.
QUIRKY_RECIPE = (
    "main_suave.py \\\n"
    "--epochs 3 \\\n"
    "--warmup_epochs 0 \\\n"
    "--crops_for_assign 0 1 \\\n"
    "--batch_size 32  \\\n"
    "\n"
    "# a comment line\n"
    "--batch_size 64 \\\n"
    "--swav_init_ckpt <ckpt.pth>"
)


def release_reference_tokens(text: str) -> list[str]:
    """The release's own reading of a recipe (job_launcher.py: join the lines, drop the backslashes, split on
    whitespace), after removing blank and comment lines that the release format did not have."""
    lines = [line for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return " ".join(line.strip() for line in lines).replace("\\", "").split()


@pytest.fixture
def entry_root(tmp_path: Path) -> str:
    return write_fake_entry(tmp_path / "entry")


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    for split in ("train", "val", "subsets"):
        (tmp_path / "data" / split).mkdir(parents=True)
    (tmp_path / "data" / "subsets" / "10percent.txt").write_text("n01_1.JPEG\n")  # found at submission, not fetched
    return str(tmp_path / "data")


@pytest.fixture
def recipe(tmp_path: Path) -> str:
    path = tmp_path / "recipes" / "train_tiny.sh"
    path.parent.mkdir()
    path.write_text("main_suave.py \\\n--epochs 2 \\\n--warmup_epochs 0 \\\n--nmb_crops 2 2 \\\n--size_crops 32 16 \\\n"
                    "--min_scale_crops 0.14 0.05 \\\n--max_scale_crops 1 0.14 \\\n--batch_size 8\n")
    return str(path)


@pytest.fixture
def base(tmp_path: Path) -> str:
    return str(tmp_path / "experiments")


def launch(argv: list[str], entry_root: str) -> int:
    return job_launcher.main(argv, entry_root=entry_root)


def only_experiment(base: str) -> str:
    found = [p for p in glob.glob(os.path.join(base, "*")) if os.path.isdir(p)]
    assert len(found) == 1, found
    return found[0]


def command_sh_argv(path: str) -> tuple[str, list[str]]:
    """(cwd, argv) of a command.sh: the ``cd`` line and the ``exec`` command, read as bash would."""
    text = open(path).read()
    cd = next(line for line in text.splitlines() if line.startswith("cd "))
    command = text[text.index("\nexec ") + len("\nexec "):].replace("\\\n", " ")
    return shlex.split(cd)[1], shlex.split(command)


def calls(experiment: str) -> list[dict]:
    with open(os.path.join(experiment, "calls.jsonl")) as handle:
        return [json.loads(line) for line in handle]


# ------------------------------------------------------------------------------------------ recipes
def test_recipe_with_release_quirks_reads_like_the_release(tmp_path):
    path = tmp_path / "quirky.sh"
    path.write_text(QUIRKY_RECIPE)
    script = read_script_file(str(path))
    assert script.entry == "main_suave.py"
    tokens = [t for flag in script.flags for t in flag.tokens]
    assert ["main_suave.py", *tokens] == release_reference_tokens(QUIRKY_RECIPE)
    assert [f.name for f in script.flags] == ["--epochs", "--warmup_epochs", "--crops_for_assign", "--batch_size",
                                             "--batch_size", "--swav_init_ckpt"]
    assert script.flags[2].values == ("0", "1") and script.flags[-1].values == ("<ckpt.pth>",)


RELEASED = sorted(glob.glob(os.path.join(REPO, "suave", "scripts", "*.sh"))
                  + glob.glob(os.path.join(REPO, "daino", "scripts", "*.sh")))


@pytest.mark.parametrize("path", RELEASED, ids=[os.path.relpath(p, REPO) for p in RELEASED])
def test_every_released_recipe_parses_like_the_release(path):
    script = read_script_file(path)
    method = os.path.basename(os.path.dirname(os.path.dirname(path)))
    assert script.entry == f"main_{method}.py"
    text = open(path).read()
    assert [script.entry, *[t for f in script.flags for t in f.tokens]] == release_reference_tokens(text)
    assert "--epochs" in [f.name for f in script.flags]


@pytest.mark.parametrize("path", RELEASED, ids=[os.path.relpath(p, REPO) for p in RELEASED])
def test_every_flag_of_the_released_recipes_exists(path):
    script = read_script_file(path)
    method = os.path.basename(os.path.dirname(os.path.dirname(path)))
    flags = list(script.flags) + [Flag(("--data_path", "/d"), "test"), Flag(("--output_dir", "/o"), "test")]
    if any(f.tokens == ("--require_init_ckpt", "true") for f in script.flags):  # the checkpoint is given at launch
        flags.append(Flag((f"--{registry.entry(method).init_flag}", "/c"), "test"))
    args = validate_flags(registry.entry(method).get_parser, flags, script.entry)  # the project's own parser accepts every flag
    assert args.epochs == int(next(f.values[0] for f in script.flags if f.name == "--epochs"))
    assert args.output_dir == "/o"


def test_unclosed_quote_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.sh"
    path.write_text("main_suave.py \\\n--epochs 1 \\\n--name 'oops\n")
    with pytest.raises(UserError, match=f"cannot read line 3 of {path}: No closing quotation"):  # one-line errors
        read_script_file(str(path))


def test_overrides_replace_in_place_drop_duplicates_and_append():
    base_flags = group_flags(["--epochs", "3", "--batch_size", "32", "--lr", "1", "--batch_size", "64"], "recipe")
    over = group_flags(["--batch_size", "16", "--new_flag", "a", "b", "--epochs=5"], "overrides")
    merged = merge_flags(base_flags, over)
    assert [f.tokens for f in merged] == [("--epochs=5",), ("--batch_size", "16"), ("--lr", "1"),
                                          ("--new_flag", "a", "b")]
    assert [f.source for f in merged] == ["overrides", "overrides", "recipe", "overrides"]


def test_negative_numbers_are_values_not_flags():
    flags = group_flags(["--world_size", "-1", "--shift", "-0.5", "-2", "--x"], "r")
    assert [f.tokens for f in flags] == [("--world_size", "-1"), ("--shift", "-0.5", "-2"), ("--x",)]


# ------------------------------------------------------------------------------------------ dry runs, local
@pytest.mark.parametrize("num_gpus", [0, 1, 2, 8])
def test_dry_run_writes_records_and_the_exact_command(num_gpus, entry_root, data_dir, base, tmp_path, capsys):
    quirky = tmp_path / "quirky.sh"
    quirky.write_text(QUIRKY_RECIPE)
    argv = ["--num_gpus", str(num_gpus), "--data_dir", data_dir, "--script_file", str(quirky),
            "--base_experiment_dir", base, "--name", "dry", "--dry_run", "--", "--batch_size", "16", "--epochs", "5"]
    assert launch(argv, entry_root) == 0
    exp = only_experiment(base)
    assert os.path.basename(exp).endswith("-dry") and len(os.path.basename(exp)) == len("2024_01_02_03_04_05-dry")
    entry = os.path.join(entry_root, "main_suave.py")
    if num_gpus > 1:
        program = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_gpus), entry]
    else:
        program = [PY, entry]
    flags = ["--epochs", "5", "--warmup_epochs", "0", "--crops_for_assign", "0", "1", "--batch_size", "16",
             "--swav_init_ckpt", "<ckpt.pth>"]
    flags += ["--device", "cpu"] if num_gpus == 0 else []
    flags += ["--data_path", data_dir, "--output_dir", exp]
    cwd, command = command_sh_argv(os.path.join(exp, "command.sh"))
    assert command == program + flags and cwd == entry_root
    assert os.stat(os.path.join(exp, "command.sh")).st_mode & stat.S_IXUSR
    record = json.load(open(os.path.join(exp, "args.json")))
    assert record["train_flags"] == flags and record["method"] == "suave"
    assert record["train_args"]["batch_size"] == 16 and record["train_args"]["output_dir"] == exp
    assert record["launcher"]["num_gpus"] == num_gpus and record["overrides"] == ["--batch_size", "16", "--epochs", "5"]
    assert open(os.path.join(exp, "quirky.sh")).read() == QUIRKY_RECIPE
    env = json.load(open(os.path.join(exp, "env.json")))
    import torch
    assert env["torch"] == torch.__version__ and env["python"] == sys.version and "commit" in env["git"]
    assert f"torch=={torch.__version__.split('+')[0]}" in {p.split("+")[0] for p in env["pip_freeze"]}
    launches = [json.loads(line) for line in open(os.path.join(exp, "launches.jsonl"))]
    assert launches[0]["dry_run"] is True
    assert not os.path.exists(os.path.join(exp, "calls.jsonl"))  # nothing started
    out = capsys.readouterr().out
    assert exp in out and "Dry run: nothing started" in out and open(os.path.join(exp, "command.sh")).read() in out


def test_explicit_master_port_uses_a_static_rendezvous(entry_root, data_dir, recipe, base):
    argv = ["--num_gpus", "4", "--master_port", "40001", "--data_dir", data_dir, "--script_file", recipe,
            "--base_experiment_dir", base, "--dry_run"]
    assert launch(argv, entry_root) == 0
    _, command = command_sh_argv(os.path.join(only_experiment(base), "command.sh"))
    assert command[:11] == [PY, "-m", "torch.distributed.run", "--nnodes", "1", "--master_addr", "127.0.0.1",
                            "--master_port", "40001", "--nproc_per_node", "4"]


def test_paths_are_made_absolute(entry_root, data_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "recipes").mkdir(parents=True)
    (work / "init.pth").write_text("weights")
    (work / "recipes" / "r.sh").write_text("main_suave.py \\\n--swav_init_ckpt ./init.pth \\\n--epochs 1 \\\n"
                                           "--warmup_epochs 0\n")
    monkeypatch.chdir(work)
    argv = ["--num_gpus", "0", "--data_dir", os.path.relpath(data_dir, work), "--script_file", "recipes/r.sh",
            "--base_experiment_dir", "exps", "--experiment_dir", "mine", "--dry_run"]
    assert launch(argv, entry_root) == 0
    record = json.load(open(work / "exps" / "mine" / "args.json"))
    assert record["script_file"] == str(work / "recipes" / "r.sh")
    assert record["train_args"]["swav_init_ckpt"] == str(work / "init.pth")
    assert record["train_args"]["data_path"] == data_dir
    assert record["train_args"]["output_dir"] == str(work / "exps" / "mine")


def test_command_sh_runs_by_hand(entry_root, data_dir, recipe, base):
    assert launch(["--num_gpus", "0", "--data_dir", data_dir, "--script_file", recipe, "--base_experiment_dir",
                   base, "--dry_run"], entry_root) == 0
    exp = only_experiment(base)
    done = subprocess.run(["bash", os.path.join(exp, "command.sh")], cwd="/", capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    [call] = calls(exp)
    assert call["args"]["device"] == "cpu" and call["args"]["data_path"] == data_dir
    assert call["args"]["output_dir"] == exp and call["args"]["size_crops"] == [32, 16]
    assert call["cwd"] == entry_root


def test_local_run_passes_output_and_exit_code_through(entry_root, data_dir, recipe, base, capfd, monkeypatch):
    monkeypatch.setenv("FAKE_EXIT_CODE", "3")
    code = launch(["--num_gpus", "1", "--data_dir", data_dir, "--script_file", recipe, "--base_experiment_dir",
                   base], entry_root)
    assert code == 3
    captured = capfd.readouterr()
    assert "FAKE TRAINING OUTPUT" in captured.out and "training exited with code 3" in captured.err
    exp = only_experiment(base)
    assert json.load(open(os.path.join(exp, "checkpoint.json")))["epoch"] == 2
    assert [json.loads(x)["mode"] for x in open(os.path.join(exp, "launches.jsonl"))] == ["local"]


@pytest.mark.slow
def test_local_two_processes_run_under_torchrun(entry_root, data_dir, recipe, base):
    assert launch(["--num_gpus", "2", "--data_dir", data_dir, "--script_file", recipe, "--base_experiment_dir",
                   base], entry_root) == 0
    records = sorted(calls(only_experiment(base)), key=lambda c: c["env"]["RANK"])
    assert [(c["env"]["RANK"], c["env"]["WORLD_SIZE"], c["env"]["LOCAL_RANK"]) for c in records] == \
        [("0", "2", "0"), ("1", "2", "1")]
    assert records[0]["env"]["MASTER_PORT"] == records[1]["env"]["MASTER_PORT"] is not None
    assert records[0]["pid"] != records[1]["pid"]


def test_resume_continues_the_recorded_run(entry_root, data_dir, recipe, base, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_STOP_AFTER", "1")  # the first run dies after its first epoch
    argv = ["--num_gpus", "0", "--data_dir", data_dir, "--script_file", recipe, "--base_experiment_dir", base,
            "--", "--epochs", "3"]
    assert launch(argv, entry_root) == 1
    exp = only_experiment(base)
    monkeypatch.delenv("FAKE_STOP_AFTER")
    capsys.readouterr()
    assert launch(["--resume", exp], entry_root) == 0
    assert "checkpoint.pth not there yet" in capsys.readouterr().out  # the fake keeps checkpoint.json
    first, second = calls(exp)
    assert (first["start_epoch"], second["start_epoch"]) == (0, 1) and second["args"] == first["args"]
    assert json.load(open(os.path.join(exp, "checkpoint.json")))["epoch"] == 3
    assert [json.loads(x)["resume"] for x in open(os.path.join(exp, "launches.jsonl"))] == [False, True]


@pytest.mark.parametrize("extra,message", [
    (["--num_gpus", "4"], "--num_gpus cannot change"),
    (["--", "--epochs", "9"], "flags after -- cannot change it"),
])
def test_resume_refuses_to_change_the_experiment(extra, message, entry_root, data_dir, recipe, base, capsys):
    assert launch(["--num_gpus", "0", "--data_dir", data_dir, "--script_file", recipe, "--base_experiment_dir",
                   base, "--dry_run"], entry_root) == 0
    exp = only_experiment(base)
    before = sorted(os.listdir(exp))
    capsys.readouterr()
    assert launch(["--resume", exp, *extra], entry_root) == 2
    assert message in capsys.readouterr().err
    assert sorted(os.listdir(exp)) == before


# ------------------------------------------------------------------------------------------ Slurm
FAKE_SBATCH = f'''#!{PY}
"""Fake sbatch: keep the submission file, answer like Slurm (or fail when FAKE_SBATCH_FAIL is set); --test-only
answers as a Slurm with a default partition "debug" (or refuses with FAKE_TEST_ONLY_ERROR)."""
import os, shutil, sys
if "--test-only" in sys.argv:
    partition = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--partition=")), "debug")
    error = os.environ.get("FAKE_TEST_ONLY_ERROR")
    sys.exit(error or print(f"sbatch: Job 4243 to start at 2024-01-01T00:00:00 using 1 processors on nodes n1 in "
                            f"partition {{partition}}", file=sys.stderr))
if os.environ.get("FAKE_SBATCH_FAIL"):
    sys.exit("sbatch: error: invalid partition specified: " + os.environ["FAKE_SBATCH_FAIL"])
shutil.copy(sys.argv[-1], os.path.join(os.path.dirname(os.path.abspath(__file__)), "captured_submission.sh"))
print("Submitted batch job 4242")
'''

FAKE_SRUN = f'''#!{PY}
"""Fake srun: run the command once per task of this node with Slurm's per-task variables and log files."""
import os, subprocess, sys
argv, logs = sys.argv[1:], {{}}
while argv and argv[0].startswith("--"):
    if argv[0] in ("--output", "--error"):
        logs[argv[0]] = argv[1]
        argv = argv[2:]
    else:
        argv = argv[1:]
job, ntasks = os.environ["SLURM_JOB_ID"], int(os.environ["SLURM_NTASKS"])
procs = []
for task in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(task), SLURM_LOCALID=str(task), SLURM_NODEID="0")
    out, err = (open(logs[k].replace("%j", job).replace("%t", str(task)), "a") for k in ("--output", "--error"))
    procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=err))
sys.exit(max(abs(p.wait()) for p in procs))
'''

FAKE_SCONTROL = f'''#!{PY}
import os, sys
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "scontrol.log"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
'''


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """sbatch, srun and scontrol stand-ins first on PATH; returns their folder."""
    folder = tmp_path / "fakebin"
    folder.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def run_job(experiment: str, ntasks: int, background: bool = False, **extra_env: str):
    """Run the captured sbatch script as Slurm would on one node (srun is the fake above)."""
    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_NTASKS=str(ntasks), SLURM_JOB_NUM_NODES="1",
               SLURM_JOB_NODELIST="localhost", **extra_env)
    env.pop("RANK", None)
    script = os.path.join(experiment, "slurm", "4242_submission.sh")
    if background:
        return subprocess.Popen(["bash", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=120)


def slurm_argv(data_dir: str, recipe: str, base: str, *extra: str) -> list[str]:
    return ["--mode", "slurm", "--data_dir", data_dir, "--script_file", recipe, "--base_experiment_dir", base,
            "--name", "sl", *extra]


def test_slurm_submission_asks_for_the_right_resources(fake_slurm, entry_root, data_dir, recipe, base, capsys):
    argv = slurm_argv(data_dir, recipe, base, "--partition", "gpu", "--num_nodes", "2", "--num_gpus", "8",
                      "--hours", "3", "--account", "proj", "--qos", "high", "--constraint", "volta32gb",
                      "--cpus_per_task", "6", "--mem_gb", "200")
    assert launch(argv, entry_root) == 0
    exp = only_experiment(base)
    script = (fake_slurm / "captured_submission.sh").read_text()
    assert script == open(os.path.join(exp, "slurm", "4242_submission.sh")).read()
    sbatch = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in script.splitlines()
              if line.startswith("#SBATCH") and "=" in line}
    logs = os.path.join(exp, "slurm")
    assert sbatch["#SBATCH --nodes"] == "2" and sbatch["#SBATCH --ntasks-per-node"] == "8"
    assert sbatch["#SBATCH --gpus-per-node"] == "8" and sbatch["#SBATCH --time"] == "180"  # minutes
    assert sbatch["#SBATCH --partition"] == "gpu" and sbatch["#SBATCH --account"] == "proj"
    assert sbatch["#SBATCH --qos"] == "high" and sbatch["#SBATCH --constraint"] == "volta32gb"
    assert sbatch["#SBATCH --cpus-per-task"] == "6" and sbatch["#SBATCH --mem"] == "200GB"
    assert sbatch["#SBATCH --job-name"] == "sl" and sbatch["#SBATCH --signal"] == "USR2@120"
    assert sbatch["#SBATCH --output"] == f"{logs}/%j_0_log.out" and sbatch["#SBATCH --error"] == f"{logs}/%j_0_log.err"
    last = script.strip().splitlines()[-1]
    assert last.startswith("srun ") and last.endswith(f"{PY} -u -m submitit.core._submit {logs}")
    assert " --kill-on-bad-exit=1 " in last  # one failed task ends the job's other tasks
    assert "conda" not in script
    out = capsys.readouterr().out
    assert "Submitted job 4242" in out and f"{logs}/4242_0_log.out" in out and f"{logs}/4242_0_log.err" in out
    assert json.loads(open(os.path.join(exp, "launches.jsonl")).read())["job_id"] == "4242"
    record = json.load(open(os.path.join(exp, "args.json")))
    assert record["launcher"]["partition"] == "gpu" and record["train_args"]["output_dir"] == exp
    cwd, command = command_sh_argv(os.path.join(exp, "command.sh"))
    assert command == [PY, os.path.join(REPO, "job_launcher.py"), "--resume", exp] and cwd == REPO


@pytest.mark.slow
def test_slurm_job_sets_the_distributed_environment_for_every_task(fake_slurm, entry_root, data_dir, recipe, base):
    assert launch(slurm_argv(data_dir, recipe, base, "--partition", "gpu", "--num_gpus", "2"), entry_root) == 0
    exp = only_experiment(base)
    done = run_job(exp, ntasks=2)
    assert done.returncode == 0, done.stdout + done.stderr
    records = sorted(calls(exp), key=lambda c: c["env"]["RANK"])
    assert [(c["env"]["RANK"], c["env"]["WORLD_SIZE"], c["env"]["LOCAL_RANK"], c["env"]["SLURM_PROCID"])
            for c in records] == [("0", "2", "0", "0"), ("1", "2", "1", "1")]
    assert {(c["env"]["MASTER_ADDR"], c["env"]["MASTER_PORT"]) for c in records} == {("localhost", "14242")}
    assert all(c["args"]["output_dir"] == exp and c["args"]["data_path"] == data_dir for c in records)
    assert json.load(open(os.path.join(exp, "checkpoint.json")))["epoch"] == 2
    assert "FAKE TRAINING OUTPUT" in open(os.path.join(exp, "slurm", "4242_1_log.out")).read()


def test_checkpoint_hook_requeues_the_same_experiment(fake_slurm, entry_root, data_dir, recipe, base):
    from submitit.helpers import DelayedSubmission

    assert launch(slurm_argv(data_dir, recipe, base, "--partition", "gpu", "--master_port", "29999"),
                  entry_root) == 0
    exp = only_experiment(base)
    submitted = DelayedSubmission.load(os.path.join(exp, "slurm", "4242_submitted.pkl"))
    requeued = submitted.function.checkpoint()
    assert isinstance(requeued, DelayedSubmission) and requeued.function is not submitted.function
    assert requeued.function == submitted.function  # same entry, same flags, same port
    assert requeued.function.train_flags[-2:] == ["--output_dir", exp]


@pytest.mark.slow
def test_preempted_job_requeues_and_the_requeued_job_resumes(fake_slurm, entry_root, data_dir, recipe, base):
    argv = slurm_argv(data_dir, recipe, base, "--partition", "gpu", "--num_gpus", "1", "--", "--epochs", "6")
    assert launch(argv, entry_root) == 0
    exp = only_experiment(base)
    job = run_job(exp, ntasks=1, background=True, FAKE_HANG_AFTER="2")  # epoch 3 lasts until the signal
    ckpt = os.path.join(exp, "checkpoint.json")
    deadline = time.time() + 60
    while not (os.path.exists(ckpt) and json.load(open(ckpt))["epoch"] == 2) and time.time() < deadline:
        assert job.poll() is None, job.communicate()[0]
        time.sleep(0.02)
    os.kill(calls(exp)[0]["pid"], signal.SIGUSR2)  # what Slurm sends before a preemption or the time limit
    output = job.communicate(timeout=60)[0].decode()
    assert json.load(open(ckpt))["epoch"] == 2, output
    assert (fake_slurm / "scontrol.log").read_text().split() == ["requeue", "4242"]
    done = run_job(exp, ntasks=1)  # Slurm starts the requeued job with the same id
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = calls(exp)
    assert first["start_epoch"] == 0 and second["start_epoch"] == 2
    assert json.load(open(ckpt))["epoch"] == 6
    log = open(os.path.join(exp, "slurm", "4242_0_log.out")).read()
    assert "requeuing main_suave with the same flags" in log


@pytest.mark.slow
def test_cpu_job_runs_gloo_tasks_from_a_snapshot_of_the_code(fake_slurm, entry_root, data_dir, recipe, base):
    argv = slurm_argv(data_dir, recipe, base, "--partition", "cpu", "--num_gpus", "0", "--tasks_per_node", "2",
                      "--cpus_per_task", "1", "--mem_gb", "2")
    assert launch(argv, entry_root) == 0
    exp = only_experiment(base)
    script = (fake_slurm / "captured_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --mem=2GB" in script and "gpus" not in script
    code = os.path.join(exp, "code")  # the tracked files of the checkout, as they were at submission
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert sorted(p for p in tracked if os.path.exists(os.path.join(REPO, p))) == \
        sorted(os.path.relpath(os.path.join(d, f), code) for d, _, fs in os.walk(code) for f in fs)
    for path in ("job_launcher.py", "launch/launcher.py"):
        assert open(os.path.join(code, path)).read() == open(os.path.join(REPO, path)).read()
    assert f'export PYTHONPATH={code}:{entry_root}"' in script
    git = json.load(open(os.path.join(exp, "env.json")))["git"]
    assert set(git) == {"commit", "dirty", "branch", "diff"} and bool(git["diff"]) == git["dirty"]
    done = run_job(exp, ntasks=2)
    assert done.returncode == 0, done.stdout + done.stderr
    records = sorted(calls(exp), key=lambda c: c["env"]["RANK"])
    assert [(c["env"]["RANK"], c["env"]["WORLD_SIZE"]) for c in records] == [("0", "2"), ("1", "2")]
    assert all(c["args"]["device"] == "cpu" for c in records)


@pytest.mark.parametrize("extra,message", [
    (["--tasks_per_node", "2", "--num_gpus", "4", "--mode", "slurm"], "only for CPU jobs (--mode slurm --num_gpus 0)"),
    (["--tasks_per_node", "2", "--num_gpus", "0"], "only for CPU jobs (--mode slurm --num_gpus 0)"),
    (["--tasks_per_node", "0", "--num_gpus", "0", "--mode", "slurm"], "at least 1"),
])
def test_tasks_per_node_is_for_cpu_slurm_jobs(extra, message, entry_root, data_dir, recipe, base, capsys):
    line = error_of(["--data_dir", data_dir, "--script_file", recipe, "--base_experiment_dir", base,
                     "--partition", "p", "--dry_run", *extra], entry_root, capsys)
    assert message in line
    assert_nothing_written(base)


def test_slurm_submission_checks_the_job_inputs_first(fake_slurm, entry_root, data_dir, recipe, base, tmp_path,
                                                      capsys):
    argv = slurm_argv(data_dir, recipe, base, "--partition", "gpu", "--", "--swav_init_ckpt", str(tmp_path / "no.pth"))
    line = error_of(argv, entry_root, capsys)
    assert f"checkpoint file not found: {tmp_path / 'no.pth'} (given by --swav_init_ckpt)" in line
    bad = tmp_path / "init.pth"
    bad.write_bytes(b"not a checkpoint")
    line = error_of(argv[:-1] + [str(bad)], entry_root, capsys)
    assert f"checkpoint {bad} (given by --swav_init_ckpt)" in line and line.endswith("(checked at submission)")
    os.rmdir(os.path.join(data_dir, "val"))
    line = error_of(slurm_argv(data_dir, recipe, base, "--partition", "gpu"), entry_root, capsys)
    assert f"{data_dir} has no val/ folder" in line
    assert_nothing_written(base)
    assert not (fake_slurm / "captured_submission.sh").exists()


def test_slurm_resume_resubmits_with_new_resources(fake_slurm, entry_root, data_dir, recipe, base, capsys):
    assert launch(slurm_argv(data_dir, recipe, base, "--partition", "gpu", "--hours", "1"), entry_root) == 0
    exp = only_experiment(base)
    env_before = open(os.path.join(exp, "env.json")).read()
    flags_before = json.load(open(os.path.join(exp, "args.json")))["train_flags"]
    assert launch(["--resume", exp, "--hours", "2", "--partition", "long", "--dry_run"], entry_root) == 0
    preview = capsys.readouterr().out.split("--- sbatch parameters")[1]
    assert "#SBATCH --time=120" in preview  # previewed, nothing written
    assert json.load(open(os.path.join(exp, "args.json")))["launcher"]["hours"] == 1
    assert launch(["--resume", exp, "--hours", "2", "--partition", "long"], entry_root) == 0
    script = (fake_slurm / "captured_submission.sh").read_text()
    assert "#SBATCH --time=120" in script and "#SBATCH --partition=long" in script
    # Every #SBATCH parameter and set-up line the dry run previews is in what submitit submits.
    lines = [line for line in preview.splitlines() if line.startswith(("#SBATCH", "cd ", "export PYTHONPATH"))]
    assert len(lines) == 11 and set(lines) <= set(script.splitlines())  # 9 parameters, cd and PYTHONPATH
    record = json.load(open(os.path.join(exp, "args.json")))
    assert (record["launcher"]["hours"], record["launcher"]["partition"]) == (2, "long")
    assert record["train_flags"] == flags_before
    assert open(os.path.join(exp, "env.json")).read() == env_before
    launches = [json.loads(line) for line in open(os.path.join(exp, "launches.jsonl"))]
    assert [(x["resume"], x["job_id"]) for x in launches] == [(False, "4242"), (True, "4242")]


def test_without_a_partition_slurm_chooses_its_default(fake_slurm, entry_root, data_dir, recipe, base, capsys):
    assert launch(slurm_argv(data_dir, recipe, base), entry_root) == 0
    assert "--partition" not in (fake_slurm / "captured_submission.sh").read_text()
    assert "min, the cluster's default partition)" in capsys.readouterr().out


def test_slurm_dry_run_previews_the_sbatch_script_without_sbatch(entry_root, data_dir, recipe, base, capsys):
    argv = slurm_argv(data_dir, recipe, base, "--host", "gpu", "--num_gpus", "4", "--hours", "0.5", "--dry_run")
    assert launch(argv, entry_root) == 0
    preview = open(os.path.join(only_experiment(base), "slurm", "dry_run_submission.sh")).read()
    assert "#SBATCH --time=30" in preview and "#SBATCH --partition=gpu" in preview
    assert "#SBATCH --ntasks-per-node=4" in preview and preview in capsys.readouterr().out


def test_help_runs_from_anywhere(tmp_path):
    done = subprocess.run([PY, os.path.join(REPO, "job_launcher.py"), "--help"], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))
    assert done.returncode == 0 and "--partition PARTITION, --host PARTITION" in done.stdout
    assert "[-- recipe flags to replace or add]" in done.stdout


# The release README's two commands (with a partition for Slurm, as the issue allows).
README_COMMANDS = {
    "local": "python job_launcher.py --mode local --num_gpus 8 --method suave --script_file "
             "suave/scripts/train_10perc.sh --data_dir /path/to/imagenet --name repro_suave_imagenet_10perc",
    "slurm": "python job_launcher.py --mode slurm --num_nodes 2 --num_gpus 8 --method daino --script_file "
             "daino/scripts/train_10perc.sh --data_dir /path/to/imagenet --name repro_daino_imagenet_10perc",
}


@pytest.mark.parametrize("mode", sorted(README_COMMANDS))
def test_the_readme_commands_run_as_written(mode, data_dir, base, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = [data_dir if word == "/path/to/imagenet" else word for word in shlex.split(README_COMMANDS[mode])[2:]]
    argv += ["--base_experiment_dir", base, "--dry_run"] + (["--partition", "gpu"] if mode == "slurm" else [])
    assert job_launcher.main(argv) == 0
    exp = only_experiment(base)
    method = "suave" if mode == "local" else "daino"
    record = json.load(open(os.path.join(exp, "args.json")))
    assert record["train_flags"][-4:] == ["--data_path", data_dir, "--output_dir", exp]
    assert record["train_args"]["epochs"] == (100 if method == "suave" else 60)
    if mode == "local":
        _, command = command_sh_argv(os.path.join(exp, "command.sh"))
        assert command[:7] == [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "8",
                               os.path.join(REPO, "main_suave.py")]
    else:
        preview = open(os.path.join(exp, "slurm", "dry_run_submission.sh")).read()
        for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--time=4800", "--partition=gpu"):
            assert f"#SBATCH {line}" in preview


# ------------------------------------------------------------------------------------------ errors
def error_of(argv: list[str], entry_root: str, capsys) -> str:
    capsys.readouterr()
    assert launch(argv, entry_root) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("job_launcher.py: error: "), captured.err
    return lines[0]


def assert_nothing_written(base: str) -> None:
    assert not os.path.exists(base) or os.listdir(base) == []


def test_unknown_method(entry_root, data_dir, recipe, base, capsys):
    line = error_of(["--method", "swav", "--data_dir", data_dir, "--script_file", recipe,
                     "--base_experiment_dir", base], entry_root, capsys)
    assert "invalid choice: 'swav'" in line
    assert_nothing_written(base)


def test_missing_script_file(entry_root, data_dir, base, tmp_path, capsys):
    missing = str(tmp_path / "nope.sh")
    line = error_of(["--data_dir", data_dir, "--script_file", missing, "--base_experiment_dir", base],
                    entry_root, capsys)
    assert f"script file not found: {missing}" in line
    assert_nothing_written(base)


def test_recipe_of_the_other_method(entry_root, data_dir, base, tmp_path, capsys):
    daino = tmp_path / "daino.sh"
    daino.write_text("main_daino.py \\\n--epochs 1\n")
    line = error_of(["--method", "suave", "--data_dir", data_dir, "--script_file", str(daino),
                     "--base_experiment_dir", base], entry_root, capsys)
    assert "runs main_daino.py but --method is suave" in line
    assert_nothing_written(base)


def test_recipe_naming_no_entry_point(entry_root, data_dir, base, tmp_path, capsys):
    bad = tmp_path / "bad.sh"
    bad.write_text("--epochs 1\n")
    line = error_of(["--data_dir", data_dir, "--script_file", str(bad), "--base_experiment_dir", base],
                    entry_root, capsys)
    assert "must be one of main_suave.py, main_daino.py, main_fixmatch.py, eval_semisup.py, eval_linear.py, eval_knn.py (found '--epochs')" in line


def test_missing_data_dir(entry_root, recipe, base, tmp_path, capsys):
    missing = str(tmp_path / "no_data")
    line = error_of(["--data_dir", missing, "--script_file", recipe, "--base_experiment_dir", base],
                    entry_root, capsys)
    assert f"data directory not found: {missing}" in line
    assert_nothing_written(base)


def test_several_nodes_need_slurm(entry_root, data_dir, recipe, base, capsys):
    line = error_of(["--num_nodes", "2", "--data_dir", data_dir, "--script_file", recipe,
                     "--base_experiment_dir", base], entry_root, capsys)
    assert "--num_nodes 2 needs --mode slurm" in line
    assert_nothing_written(base)


def test_unknown_flag_in_the_recipe_names_flag_and_file(entry_root, data_dir, base, tmp_path, capsys):
    bad = tmp_path / "typo.sh"
    bad.write_text("main_suave.py \\\n--epochs 1 \\\n--batchsize 8\n")
    line = error_of(["--data_dir", data_dir, "--script_file", str(bad), "--base_experiment_dir", base],
                    entry_root, capsys)
    assert f"unknown flag --batchsize in {bad}" in line
    assert_nothing_written(base)


def test_unknown_or_invalid_override(entry_root, data_dir, recipe, base, capsys):
    common = ["--data_dir", data_dir, "--script_file", recipe, "--base_experiment_dir", base]
    line = error_of(common + ["--", "--epoch", "3"], entry_root, capsys)  # abbreviations are not accepted
    assert "unknown flag --epoch in the overrides after --" in line
    line = error_of(common + ["--", "--epochs", "many"], entry_root, capsys)
    assert "invalid int value: 'many'" in line and "--epochs" in line
    line = error_of(common + ["--", "--data_path", "/x"], entry_root, capsys)
    assert "use --data_dir instead of -- --data_path" in line
    assert_nothing_written(base)


def test_existing_experiment_is_not_overwritten(entry_root, data_dir, recipe, base, capsys):
    common = ["--data_dir", data_dir, "--script_file", recipe, "--base_experiment_dir", base,
              "--experiment_dir", "exp1", "--dry_run"]
    assert launch(common, entry_root) == 0
    line = error_of(common, entry_root, capsys)
    assert f"continue it with --resume {os.path.join(base, 'exp1')}" in line


def test_resume_of_a_folder_that_is_no_experiment(entry_root, tmp_path, capsys):
    line = error_of(["--resume", str(tmp_path)], entry_root, capsys)
    assert "not an experiment directory of job_launcher.py (no args.json)" in line


def test_slurm_without_a_partition_on_a_cluster_without_a_default(fake_slurm, entry_root, data_dir, recipe, base,
                                                                  monkeypatch, capsys):
    # What sbatch --test-only answers there (a real Slurm 22.05 cluster without Default=YES)
    monkeypatch.setenv("FAKE_TEST_ONLY_ERROR", "allocation failure: No partition specified or system default partition")
    line = error_of(slurm_argv(data_dir, recipe, base), entry_root, capsys)
    assert line == ("job_launcher.py: error: Slurm cannot run this job in the cluster's default partition: No partition "
                    "specified or system default partition (--time=4800 --nodes=1 --ntasks-per-node=2 --cpus-per-task=10 "
                    "--mem=80GB --gpus-per-node=2): change --num_nodes/--tasks_per_node/--cpus_per_task/--mem_gb/"
                    "--num_gpus/--constraint or --partition")
    assert_nothing_written(base)


def test_slurm_without_sbatch(entry_root, data_dir, recipe, base, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    line = error_of(slurm_argv(data_dir, recipe, base, "--partition", "gpu"), entry_root, capsys)
    assert "sbatch not found on PATH" in line
    assert_nothing_written(base)


def test_sbatch_refusal_leaves_nothing_behind(fake_slurm, entry_root, data_dir, recipe, base, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_SBATCH_FAIL", "gpu")
    argv = slurm_argv(data_dir, recipe, base, "--partition", "gpu", "--experiment_dir", "retry_me")
    line = error_of(argv, entry_root, capsys)
    assert "sbatch failed" in line and "invalid partition specified: gpu" in line
    assert_nothing_written(base)
    monkeypatch.delenv("FAKE_SBATCH_FAIL")
    assert launch(argv, entry_root) == 0  # the retry is not tripped up


def test_errors_do_not_print_a_traceback_from_the_command_line(entry_root, tmp_path):
    done = subprocess.run([PY, os.path.join(REPO, "job_launcher.py"), "--num_nodes", "2", "--data_dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "job_launcher.py: error: --num_nodes 2 needs --mode slurm: local mode runs on this machine only"]


# ------------------------------------------------------------------------------------------ the real entry
TINY_SUAVE_RECIPE = """main_suave.py \\
--arch resnet18 \\
--small_stem false \\
--hidden_mlp 32 \\
--feat_dim 16 \\
--nmb_crops 2 2 \\
--size_crops 32 16 \\
--min_scale_crops 0.3 0.1 \\
--max_scale_crops 1 0.3 \\
--batch_size 8 \\
--lab_batch_size 4 \\
--base_lr 0.3 \\
--final_lr 0.003 \\
--warmup_epochs 0 \\
--warmup_proj_nepochs 0 \\
--workers 0 \\
--use_fp16 false \\
--lab_crop_size 32 \\
--val_resize 32 \\
--val_crop 32 \\
--max_iters_per_epoch 2 \\
--wandb false
"""


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch) -> tuple[str, str, str]:
    """(data dir, labelled list, recipe) of a tiny generated ImageFolder; one thread per training process
    (several processes on two shared cores are many times slower with more)."""
    from src.data.synthetic import make_synthetic_imagefolder

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    paths = make_synthetic_imagefolder(tmp_path / "tiny", num_classes=4, train_per_class=16, val_per_class=4,
                                       size=32, seed=0, subset_per_class=4)
    recipe_path = tmp_path / "tiny_suave.sh"
    recipe_path.write_text(TINY_SUAVE_RECIPE)
    return str(paths.root), str(paths.subset_file), str(recipe_path)


def real_argv(tiny, base: str, num_gpus: int, *extra: str, overrides: tuple[str, ...] = ("--epochs", "1")) -> list[str]:
    data, subset, recipe_path = tiny
    return ["--num_gpus", str(num_gpus), "--data_dir", data, "--script_file", recipe_path,
            "--base_experiment_dir", base, *extra, "--", "--subset_file", subset, *overrides]


@pytest.mark.slow
def test_real_cpu_run_trains_and_leaves_the_checkpoint(tiny, base):
    from src.checkpoint import read_checkpoint

    assert job_launcher.main(real_argv(tiny, base, 0)) == 0
    exp = only_experiment(base)
    ckpt = read_checkpoint(os.path.join(exp, "checkpoint.pth"))
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 2 and ckpt["world_size"] == 1
    assert "backend none (single process)" in open(os.path.join(exp, "train.log")).read()


@pytest.mark.slow
def test_real_two_gloo_processes_on_cpu(tiny, base):
    from src.checkpoint import read_checkpoint

    assert job_launcher.main(real_argv(tiny, base, 2, overrides=("--epochs", "1", "--device", "cpu"))) == 0
    exp = only_experiment(base)
    assert read_checkpoint(os.path.join(exp, "checkpoint.pth"))["world_size"] == 2
    assert "2 process(es), backend gloo" in open(os.path.join(exp, "train.log")).read()


@pytest.mark.slow
def test_real_requeued_slurm_job_resumes_from_the_checkpoint(fake_slurm, tiny, base):
    from submitit.helpers import DelayedSubmission

    from src.checkpoint import read_checkpoint

    argv = real_argv(tiny, base, 1, "--mode", "slurm", "--partition", "gpu",
                     overrides=("--epochs", "2", "--device", "cpu"))
    assert job_launcher.main(argv) == 0
    exp = only_experiment(base)
    pickle_path = os.path.join(exp, "slurm", "4242_submitted.pkl")
    submitted = DelayedSubmission.load(pickle_path)
    # First allocation: killed right after its first checkpoint (simulated with --stop_after_epochs 1).
    cut = DelayedSubmission(type(submitted.function)(**{**vars(submitted.function), "train_flags":
                                                       submitted.function.train_flags + ["--stop_after_epochs", "1"]}))
    cut.set_timeout(submitted._timeout_min, submitted._timeout_countdown)
    cut.dump(pickle_path)
    first = run_job(exp, ntasks=1)
    assert first.returncode == 0, first.stdout + first.stderr
    assert read_checkpoint(os.path.join(exp, "checkpoint.pth"))["epoch"] == 1
    # Requeue: what submitit stores when Slurm signals the job (checkpoint() of the submitted callable).
    requeued = submitted.function.checkpoint()
    requeued.set_timeout(submitted._timeout_min, submitted._timeout_countdown)
    requeued.dump(pickle_path)
    second = run_job(exp, ntasks=1)
    assert second.returncode == 0, second.stdout + second.stderr
    assert read_checkpoint(os.path.join(exp, "checkpoint.pth"))["epoch"] == 2
    log = open(os.path.join(exp, "train.log")).read()
    assert f"resumed from {os.path.join(exp, 'checkpoint.pth')}: epoch 1" in log
