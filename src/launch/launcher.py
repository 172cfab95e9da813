"""The launch itself: every check first (``plan_*``), then the experiment directory and the start (``execute``).

Nothing is written before all checks pass; a new experiment directory is staged and renamed into place, and
removed again if the Slurm submission fails, so a retry never trips over a half-made run.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

from src.launch import records
from src.launch.entry import ENTRY_MODULES, entry_script_path, load_entry_module, validate_flags
from src.launch.errors import LaunchError
from src.launch.local import local_program, run_local
from src.launch.preflight import check_job_inputs
from src.launch.script_file import (Flag, absolutize_paths, flatten, group_flags, merge_flags, missing_paths,
                                    read_script_file, without)
from src.launch.slurm import (SUBMITIT_FOLDER, SlurmTrainer, check_partition_fits, check_slurm_tools,
                              default_partition, job_setup_lines, sbatch_preview, slurm_parameters, submit,
                              timeout_minutes)
from src.launch.snapshot import SNAPSHOT_FOLDER, is_git_checkout, snapshot_code, untracked_sources

CODE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES_SOURCE = "the overrides after --"
LAUNCHER_SOURCE = "job_launcher.py"
# What the launcher itself sets (from --data_dir and the experiment directory): never from a recipe or override.
LAUNCHER_FLAGS = {"--data_path": "--data_dir", "--output_dir": "--experiment_dir/--name"}
# Launcher options a --resume may change: resources only, never what defines the experiment.
RESUME_ADJUSTABLE = {"resume", "dry_run", "hours", "partition", "account", "qos", "constraint", "cpus_per_task",
                     "mem_gb", "master_port"}
RECORDED_OPTIONS = ("name", "mode", "method", "num_gpus", "num_nodes", "tasks_per_node", "hours", "data_dir",
                    "base_experiment_dir", "partition", "account", "qos", "constraint", "cpus_per_task", "mem_gb",
                    "master_port")


@dataclass
class Plan:
    """Everything checked and resolved; ``execute`` only writes and starts."""

    options: dict[str, Any]
    experiment_dir: str
    entry_root: str
    entry_script: str
    flags: list[Flag]
    train_args: dict[str, Any]
    resume: bool
    dry_run: bool
    launcher_argv: list[str]
    script_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    slurm_params: dict[str, Any] | None = None
    code_snapshot: str | None = None  # Slurm: <experiment>/code, where jobs run from (None outside a git checkout)
    warnings: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return self.options["mode"]

    @property
    def method(self) -> str:
        return self.options["method"]

    @property
    def entry(self) -> str:
        return os.path.basename(self.entry_script)

    @property
    def local_argv(self) -> list[str]:
        program = local_program(self.entry_script, self.options["num_gpus"], self.options["master_port"])
        return program + flatten(self.flags)

    @property
    def submitit_folder(self) -> str:
        return os.path.join(self.experiment_dir, SUBMITIT_FOLDER)

    @property
    def job_entry_root(self) -> str:
        """The entry points a Slurm job imports: the snapshot's when they are the checkout's own."""
        snapshot = self.code_snapshot
        return snapshot if snapshot and self.entry_root == CODE_ROOT else self.entry_root


# ------------------------------------------------------------------------------------------------ checks
def _check_numbers(opts: dict[str, Any]) -> None:
    if opts["num_gpus"] < 0:
        raise LaunchError(f"--num_gpus must be 0 (one CPU process) or more, not {opts['num_gpus']}")
    if opts["num_nodes"] < 1:
        raise LaunchError(f"--num_nodes must be at least 1, not {opts['num_nodes']}")
    if opts["hours"] <= 0:
        raise LaunchError(f"--hours must be positive, not {opts['hours']}")
    if opts["cpus_per_task"] < 1:
        raise LaunchError(f"--cpus_per_task must be at least 1, not {opts['cpus_per_task']}")
    if opts["mem_gb"] is not None and opts["mem_gb"] <= 0:
        raise LaunchError(f"--mem_gb must be positive, not {opts['mem_gb']}")
    if opts["master_port"] is not None and not 1 <= opts["master_port"] <= 65535:
        raise LaunchError(f"--master_port must be a TCP port (1-65535), not {opts['master_port']}")
    if opts["mode"] == "local" and opts["num_nodes"] > 1:
        raise LaunchError(f"--num_nodes {opts['num_nodes']} needs --mode slurm: local mode runs on this machine only")
    if opts.get("tasks_per_node") is not None and (opts["mode"] != "slurm" or opts["num_gpus"] > 0
                                                   or opts["tasks_per_node"] < 1):
        raise LaunchError(f"--tasks_per_node {opts['tasks_per_node']}: only for CPU jobs (--mode slurm --num_gpus 0), "
                          "at least 1; with GPUs there is one task per GPU, locally use --num_gpus N -- --device cpu")


def tasks_per_node(opts: dict[str, Any]) -> int:
    """One task per GPU; CPU jobs: --tasks_per_node (1)."""
    return opts["num_gpus"] if opts["num_gpus"] > 0 else (opts.get("tasks_per_node") or 1)


def _check_data_dir(data_dir: str) -> None:
    if not os.path.isdir(data_dir):
        raise LaunchError(f"data directory not found: {data_dir} (give --data_dir, the folder holding train/ and val/)")


def _slurm_checks(opts: dict[str, Any], dry_run: bool, train_args: dict[str, Any]) -> None:
    """Tools first (submitting needs them), then the partition (given, or the cluster's default), then (unless a
    dry run) what a job would otherwise find out on a compute node: a node that fits, the job's inputs."""
    if opts["mode"] != "slurm":
        return
    if not dry_run:
        check_slurm_tools()
    if not opts["partition"]:
        opts["partition"] = default_partition()
        if not opts["partition"]:
            raise LaunchError("--mode slurm needs a partition: give --partition NAME (or --host NAME); "
                              "this cluster reports no default partition")
    if dry_run:
        return
    check_partition_fits(opts["partition"], nodes=opts["num_nodes"], tasks_per_node=tasks_per_node(opts),
                         cpus_per_task=opts["cpus_per_task"], mem_gb=_mem_gb(opts), gpus_per_node=opts["num_gpus"],
                         minutes=timeout_minutes(opts["hours"]))
    check_job_inputs(train_args)


def _mem_gb(opts: dict[str, Any]) -> float:
    return opts["mem_gb"] if opts["mem_gb"] is not None else 40 * max(1, opts["num_gpus"])  # DINO's 40 GB per GPU


def _launcher_flags(opts: dict[str, Any], experiment_dir: str) -> list[Flag]:
    return [Flag(("--data_path", opts["data_dir"]), LAUNCHER_SOURCE),
            Flag(("--output_dir", experiment_dir), LAUNCHER_SOURCE)]


def _validated(flags: list[Flag], entry_root: str, method: str) -> dict[str, Any]:
    module = load_entry_module(entry_root, method)
    namespace = validate_flags(module, flags, ENTRY_MODULES[method] + ".py")
    return json.loads(json.dumps(vars(namespace), default=str))


def _prepare_slurm(plan: Plan) -> None:
    """The snapshot folder and the sbatch parameters of a Slurm plan."""
    if plan.mode != "slurm":
        return
    if is_git_checkout(CODE_ROOT):
        plan.code_snapshot = os.path.join(plan.experiment_dir, SNAPSHOT_FOLDER)
    opts = plan.options
    plan.slurm_params = slurm_parameters(
        name=opts["name"], nodes=opts["num_nodes"], gpus_per_node=opts["num_gpus"], tasks_per_node=tasks_per_node(opts),
        hours=opts["hours"], cpus_per_task=opts["cpus_per_task"], mem_gb=_mem_gb(opts), partition=opts["partition"],
        account=opts["account"], qos=opts["qos"], constraint=opts["constraint"],
        setup=job_setup_lines(plan.code_snapshot or CODE_ROOT, plan.job_entry_root))


def _training_flags(recipe: list[Flag], overrides: list[str], opts: dict[str, Any], experiment_dir: str,
                    cwd: str) -> list[Flag]:
    """recipe < the launcher's --device cpu (--num_gpus 0) < overrides; then --data_path and --output_dir."""
    override_flags = group_flags(overrides, OVERRIDES_SOURCE)
    for flag in override_flags:
        if flag.name in LAUNCHER_FLAGS:
            raise LaunchError(f"{flag.name} is set by the launcher: use {LAUNCHER_FLAGS[flag.name]} instead of "
                              f"-- {flag.name}")
    flags = without(recipe, set(LAUNCHER_FLAGS))
    if opts["num_gpus"] == 0:
        flags = merge_flags(flags, [Flag(("--device", "cpu"), f"{LAUNCHER_SOURCE} (--num_gpus 0)")])
    return absolutize_paths(merge_flags(flags, override_flags), cwd) + _launcher_flags(opts, experiment_dir)


def plan_new(opts: dict[str, Any], overrides: list[str], entry_root: str, launcher_argv: list[str]) -> Plan:
    """Check and resolve a new experiment (nothing is written)."""
    cwd = os.getcwd()
    opts = dict(opts)
    method = opts["method"]
    opts["name"] = opts["name"] or method
    _check_numbers(opts)
    if not opts["script_file"] and method.startswith("eval_"):
        raise LaunchError(f"--method {method} needs --script_file, e.g. scripts/{method}*.sh")
    script_file = opts["script_file"] or os.path.join(entry_root, method, "scripts", "train_10perc.sh")
    script = read_script_file(script_file)
    expected = ENTRY_MODULES[method] + ".py"
    if script.entry != expected:
        raise LaunchError(f"{script.path} runs {script.entry} but --method is {method} (which runs {expected}): "
                          f"pass the matching --method or a {method} script")
    opts["data_dir"] = os.path.abspath(os.path.expanduser(opts["data_dir"]))
    _check_data_dir(opts["data_dir"])
    opts["base_experiment_dir"] = os.path.abspath(os.path.expanduser(opts["base_experiment_dir"]))
    name = opts["experiment_dir"] or f"{records.timestamp()}-{opts['name']}"
    experiment_dir = os.path.join(opts["base_experiment_dir"], os.path.expanduser(name))
    records.check_new_experiment_dir(experiment_dir)
    flags = _training_flags(list(script.flags), overrides, opts, experiment_dir, cwd)
    train_args = _validated(flags, entry_root, method)
    _slurm_checks(opts, opts["dry_run"], train_args)
    plan = Plan(options={k: opts[k] for k in RECORDED_OPTIONS}, experiment_dir=experiment_dir,
                entry_root=entry_root, entry_script=entry_script_path(entry_root, method), flags=flags,
                train_args=train_args, resume=False, dry_run=opts["dry_run"], launcher_argv=launcher_argv,
                script_file=script.path, overrides=list(overrides))
    _prepare_slurm(plan)
    plan.warnings = [f"{item}: no such file or directory here (the run fails unless it exists where it runs)"
                     for item in missing_paths(flags[:-2])]
    return plan


def plan_resume(opts: dict[str, Any], explicit: set[str], overrides: list[str], entry_root: str,
                launcher_argv: list[str]) -> Plan:
    """Check and resolve ``--resume DIR``: the recorded experiment, with new resources at most."""
    experiment_dir = os.path.abspath(os.path.expanduser(opts["resume"]))
    record_path = os.path.join(experiment_dir, records.ARGS_FILE)
    if not os.path.isfile(record_path):
        raise LaunchError(f"--resume {experiment_dir}: not an experiment directory of job_launcher.py "
                          f"(no {records.ARGS_FILE})")
    fixed = sorted(explicit - RESUME_ADJUSTABLE)
    if fixed:
        raise LaunchError(f"--resume continues the recorded experiment: --{fixed[0]} cannot change with it "
                          f"(see {record_path}); start a new experiment instead")
    if overrides:
        raise LaunchError("--resume continues the recorded experiment: flags after -- cannot change it; "
                          "start a new experiment instead")
    try:
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
        recorded = {k: record["launcher"].get(k) if k == "tasks_per_node" else record["launcher"][k]
                    for k in RECORDED_OPTIONS}
        tokens = list(record["train_flags"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LaunchError(f"cannot read {record_path}: {exc}") from exc
    recorded.update({k: opts[k] for k in explicit & set(RECORDED_OPTIONS)})
    _check_numbers(recorded)
    _check_data_dir(recorded["data_dir"])
    flags = group_flags(tokens, record_path)
    train_args = _validated(flags, entry_root, recorded["method"])
    _slurm_checks(recorded, opts["dry_run"], train_args)
    plan = Plan(options=recorded, experiment_dir=experiment_dir, entry_root=entry_root,
                entry_script=entry_script_path(entry_root, recorded["method"]), flags=flags,
                train_args=train_args, resume=True, dry_run=opts["dry_run"], launcher_argv=launcher_argv,
                script_file=record.get("script_file"), overrides=list(record.get("overrides", [])))
    _prepare_slurm(plan)
    return plan


# ------------------------------------------------------------------------------------------------ writing
def _args_record(plan: Plan) -> dict[str, Any]:
    return {
        "method": plan.method,
        "experiment_dir": plan.experiment_dir,
        "entry_script": plan.entry_script,
        "script_file": plan.script_file,
        "script_copy": os.path.basename(plan.script_file) if plan.script_file else None,
        "launcher": plan.options,
        "overrides": plan.overrides,
        "train_flags": flatten(plan.flags),
        "train_args": plan.train_args,
        "launcher_argv": plan.launcher_argv,
        "updated": records.now_iso(),
    }


def command_text(plan: Plan) -> str:
    """command.sh: the exact local command, or (Slurm) the command that submits this experiment again."""
    flag_lines = [list(flag.tokens) for flag in plan.flags]
    if plan.mode == "local":
        comments = [f"suave-daino experiment {plan.experiment_dir}",
                    f"{plan.method}, local, {plan.options['num_gpus']} GPU(s). Written by job_launcher.py; "
                    "running it again resumes from checkpoint.pth in --output_dir."]
        argv = plan.local_argv
        program = argv[: len(argv) - len(flatten(plan.flags))]
        return records.render_command_sh(program, flag_lines, plan.entry_root, comments)
    tasks = plan.options["num_nodes"] * tasks_per_node(plan.options)
    comments = [f"suave-daino experiment {plan.experiment_dir}",
                f"{plan.method}, Slurm, {plan.options['num_nodes']} node(s) x {plan.options['num_gpus']} GPU(s). "
                "Running this file submits the experiment again (same directory, resumes from checkpoint.pth).",
                f"Each of the {tasks} task(s) calls {plan.entry}'s main() in-process with these flags:",
                *("    " + " ".join(words) for words in flag_lines)]
    program = [sys.executable, os.path.join(CODE_ROOT, "job_launcher.py"), "--resume", plan.experiment_dir]
    return records.render_command_sh(program, [], CODE_ROOT, comments)


def _write_records(plan: Plan, folder: str) -> None:
    """A new experiment's records: recipe copy, args.json, env.json, command.sh."""
    if plan.script_file:
        shutil.copy2(plan.script_file, os.path.join(folder, os.path.basename(plan.script_file)))
    records.write_json(os.path.join(folder, records.ARGS_FILE), _args_record(plan))
    records.write_json(os.path.join(folder, records.ENV_FILE), records.environment_record(CODE_ROOT))
    records.write_text(os.path.join(folder, records.COMMAND_FILE), command_text(plan), executable=True)


def _update_records(plan: Plan) -> None:
    """On --resume: the (possibly new) resources into args.json and command.sh; env.json keeps the first launch."""
    path = os.path.join(plan.experiment_dir, records.ARGS_FILE)
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    record["launcher"] = plan.options
    record["updated"] = records.now_iso()
    records.write_json(path, record)
    records.write_text(os.path.join(plan.experiment_dir, records.COMMAND_FILE), command_text(plan), executable=True)


def _launch_entry(plan: Plan, **details: Any) -> dict[str, Any]:
    """A launches.jsonl line: how this launch was made, and the code and torch it ran with."""
    software = records.torch_record()
    return {"mode": plan.mode, "resume": plan.resume, "argv": plan.launcher_argv,
            "git_commit": records.git_record(CODE_ROOT)["commit"], "torch": software.get("torch"), **details}


# ------------------------------------------------------------------------------------------------ running
def _print_header(plan: Plan) -> None:
    for warning in plan.warnings:
        print(f"job_launcher.py: warning: {warning}", file=sys.stderr)
    verb = "Resuming" if plan.resume else "Experiment directory:"
    print(f"{verb} {plan.experiment_dir}")
    if plan.resume:
        checkpoint = os.path.join(plan.experiment_dir, "checkpoint.pth")
        state = "found: training continues from it" if os.path.isfile(checkpoint) else \
            "not there yet: training starts from the beginning"
        print(f"  {checkpoint} {state}")


def execute(plan: Plan) -> int:
    """Write the records (unless a dry resume), then start the run (unless a dry run); returns the exit code."""
    _print_header(plan)
    if plan.dry_run:
        return _dry_run(plan)
    if plan.resume:
        _update_records(plan)
    else:
        with records.staged_directory(plan.experiment_dir) as staging:
            _write_records(plan, staging)
    command_sh = os.path.join(plan.experiment_dir, records.COMMAND_FILE)
    if plan.mode == "local":
        records.append_launch(plan.experiment_dir, _launch_entry(plan, command=plan.local_argv))
        print(f"Command: {command_sh}", flush=True)
        code = run_local(plan.local_argv, plan.entry_root)
        if code != 0:
            print(f"job_launcher.py: training exited with code {code}", file=sys.stderr)
        return code
    return _submit(plan)


def _dry_run(plan: Plan) -> int:
    text = command_text(plan)
    preview = sbatch_preview(plan.submitit_folder, plan.slurm_params) if plan.slurm_params is not None else None
    if not plan.resume:
        with records.staged_directory(plan.experiment_dir) as staging:
            _write_records(plan, staging)
            if preview is not None:
                os.makedirs(os.path.join(staging, SUBMITIT_FOLDER))
                records.write_text(os.path.join(staging, SUBMITIT_FOLDER, "dry_run_submission.sh"), preview)
            records.append_launch(staging, _launch_entry(plan, dry_run=True))
    print(f"--- {records.COMMAND_FILE} ---\n{text}", end="")
    if preview is not None:
        print(f"--- sbatch script (submitted by submitit from {plan.submitit_folder}) ---\n{preview}")
    start = f"{sys.executable} {os.path.join(CODE_ROOT, 'job_launcher.py')} --resume {plan.experiment_dir}"
    print("Dry run: nothing started." + ("" if plan.resume else f" Start it with: {start}"))
    return 0


def _submit(plan: Plan) -> int:
    """Snapshot the code (first submission; a resume keeps the experiment's), then sbatch through submitit."""
    assert plan.slurm_params is not None
    trainer = SlurmTrainer(plan.job_entry_root, ENTRY_MODULES[plan.method], flatten(plan.flags),
                           plan.options["master_port"])
    try:
        if plan.code_snapshot is None:
            print(f"job_launcher.py: warning: {CODE_ROOT} is not a git checkout: the job runs this folder's code "
                  "as it is when the job starts (no snapshot)", file=sys.stderr)
        elif not os.path.isdir(plan.code_snapshot):
            left_out = untracked_sources(CODE_ROOT)
            if left_out:
                print(f"job_launcher.py: warning: untracked files are not in the job's code snapshot (git add them "
                      f"to include them): {', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}",
                      file=sys.stderr)
            snapshot_code(CODE_ROOT, plan.code_snapshot)
        job = submit(trainer, plan.submitit_folder, plan.slurm_params)
    except LaunchError:
        if not plan.resume:
            shutil.rmtree(plan.experiment_dir, ignore_errors=True)
        raise
    records.append_launch(plan.experiment_dir, _launch_entry(plan, job_id=job.job_id,
                                                             submission_file=job.submission_file))
    print(f"Submitted job {job.job_id} ({plan.options['num_nodes']} node(s) x {tasks_per_node(plan.options)} "
          f"task(s), {plan.options['num_gpus']} GPU(s) per node, {plan.slurm_params['time']} min, "
          f"partition {plan.options['partition']})")
    print(f"Logs: {job.stdout} (stdout) and {job.stderr} (stderr), one pair per task")
    print(f"Submission script: {job.submission_file}")
    if plan.code_snapshot:
        print(f"Code: {plan.code_snapshot} (the checkout's tracked files at the first submission; the job and its "
              f"requeues run from there)")
    print(f"Checkpoints and training log: {plan.experiment_dir}")
    return 0
