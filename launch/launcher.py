"""The launch: every check first (``plan_new``, ``plan_resume``: nothing is written before all pass), then the
experiment directory and the start (``execute``): one process, torchrun, or a Slurm job through submitit."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable

from daino.args import get_args_parser as daino_parser
from fixmatch.args import get_args_parser as fixmatch_parser
from launch import LaunchError, records, slurm
from launch.script_file import (Flag, absolutize_paths, flatten, group_flags, merge_flags, read_script_file,
                                validate_flags)
from src.atomic_io import write_json_atomic, write_text_atomic
from src.downstream.args import linear_args_parser, semisup_args_parser
from suave.args import get_args_parser as suave_parser

CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# --method: the entry module it runs (main_suave.py ...) and that entry point's parser.
ENTRIES: dict[str, tuple[str, Callable[[], argparse.ArgumentParser]]] = {
    "suave": ("main_suave", suave_parser), "daino": ("main_daino", daino_parser),
    "eval_semisup": ("eval_semisup", semisup_args_parser), "eval_linear": ("eval_linear", linear_args_parser),
    "fixmatch": ("main_fixmatch", fixmatch_parser)}
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
    """Everything checked and resolved; ``execute`` only writes and starts. ``record`` is args.json."""

    record: dict[str, Any]
    experiment_dir: str
    entry_root: str  # where main_suave.py ... run from: the checkout (tests point it elsewhere)
    flags: list[Flag]
    resume: bool
    dry_run: bool
    argv: list[str]  # this launch's (a resume's own)
    slurm_params: dict[str, Any] | None = None
    code_snapshot: str | None = None  # Slurm: <experiment>/code, where jobs run from (None outside a git checkout)

    @property
    def options(self) -> dict[str, Any]:
        return self.record["launcher"]

    @property
    def tasks_per_node(self) -> int:
        """One task per GPU; CPU jobs: --tasks_per_node (1)."""
        return self.options["num_gpus"] or self.options.get("tasks_per_node") or 1

    @property
    def program(self) -> list[str]:
        """The local command before the flags: python, or torchrun (a free port, or a static rendezvous at
        --master_port) for several GPUs."""
        gpus, port = self.options["num_gpus"], self.options["master_port"]
        rendezvous = ["--standalone"] if port is None else ["--nnodes", "1", "--master_addr", "127.0.0.1",
                                                            "--master_port", str(port)]
        torchrun = ["-m", "torch.distributed.run", *rendezvous, "--nproc_per_node", str(gpus)] if gpus > 1 else []
        return [sys.executable, *torchrun, self.record["entry_script"]]


def _check_options(opts: dict[str, Any]) -> None:
    for key, low, high in (("num_gpus", 0, None), ("num_nodes", 1, None), ("cpus_per_task", 1, None),
                           ("master_port", 1, 65535), ("hours", 1 / 60, None), ("mem_gb", 1 / 1024, None)):
        if opts[key] is not None and not low <= opts[key] <= (high or opts[key]):
            raise LaunchError(f"--{key} must be at least {low:g}{f' and at most {high}' if high else ''}, "
                              f"not {opts[key]}")
    if opts["mode"] == "local" and opts["num_nodes"] > 1:
        raise LaunchError(f"--num_nodes {opts['num_nodes']} needs --mode slurm: local mode runs on this machine only")
    if opts.get("tasks_per_node") is not None and (opts["mode"] != "slurm" or opts["num_gpus"] > 0
                                                   or opts["tasks_per_node"] < 1):
        raise LaunchError(f"--tasks_per_node {opts['tasks_per_node']}: only for CPU jobs (--mode slurm --num_gpus 0), "
                          "at least 1; with GPUs there is one task per GPU, locally use --num_gpus N -- --device cpu")
    if not os.path.isdir(opts["data_dir"]):
        raise LaunchError(f"data directory not found: {opts['data_dir']} (give --data_dir, the folder holding train/ "
                          "and val/)")


def _plan(record: dict[str, Any], flags: list[Flag], experiment_dir: str, entry_root: str, resume: bool,
          dry_run: bool, argv: list[str]) -> Plan:
    """Check the flags with the entry point's own parser and, for Slurm, the cluster and the job's inputs."""
    opts, module = record["launcher"], ENTRIES[record["launcher"]["method"]][0]
    namespace = validate_flags(ENTRIES[opts["method"]][1], flags, module + ".py")
    record.update(entry_script=os.path.join(entry_root, module + ".py"),
                  train_args=json.loads(json.dumps(vars(namespace), default=str)))
    plan = Plan(record, experiment_dir, entry_root, flags, resume, dry_run, argv)
    if opts["mode"] != "slurm":
        return plan
    for tool in ("sbatch", "srun") if not dry_run else ():
        if shutil.which(tool) is None:
            raise LaunchError(f"{tool} not found on PATH: --mode slurm must run on a Slurm login node "
                              "(or use --mode local)")
    opts["partition"] = opts["partition"] or next(  # the cluster's default, marked with *
        (line.rstrip("*") for line in slurm.sinfo("-o", "%P") if line.endswith("*")), None)
    if not opts["partition"]:
        raise LaunchError("--mode slurm needs a partition: give --partition NAME (or --host NAME); "
                          "this cluster reports no default partition")
    if records.git(CODE_ROOT, "rev-parse", "--show-toplevel") == CODE_ROOT:
        plan.code_snapshot = os.path.join(experiment_dir, "code")
    job_root = plan.code_snapshot if plan.code_snapshot and entry_root == CODE_ROOT else entry_root
    mem_gb = opts["mem_gb"] or 40 * max(1, opts["num_gpus"])  # DINO's 40 GB per GPU
    plan.slurm_params = slurm.slurm_parameters(opts, plan.tasks_per_node, mem_gb, job_root,
                                               [plan.code_snapshot or CODE_ROOT, job_root])
    if not dry_run:
        slurm.check_partition_fits(opts["partition"], opts["num_nodes"], plan.tasks_per_node, opts["cpus_per_task"],
                                   mem_gb, opts["num_gpus"], plan.slurm_params["time"])
        slurm.check_job_inputs(record["train_args"])
    return plan


def plan_new(opts: dict[str, Any], overrides: list[str], entry_root: str, launcher_argv: list[str]) -> Plan:
    """Check and resolve a new experiment; its flags: recipe < --device cpu (--num_gpus 0) < overrides, then
    --data_path and --output_dir."""
    opts = dict(opts, name=opts["name"] or opts["method"], data_dir=os.path.abspath(os.path.expanduser(
        opts["data_dir"])), base_experiment_dir=os.path.abspath(os.path.expanduser(opts["base_experiment_dir"])))
    method = opts["method"]
    _check_options(opts)
    if not opts["script_file"] and method.startswith("eval_"):
        raise LaunchError(f"--method {method} needs --script_file, e.g. scripts/{method}*.sh")
    script = read_script_file(opts["script_file"] or os.path.join(entry_root, method, "scripts", "train_10perc.sh"))
    if script.entry != ENTRIES[method][0] + ".py":
        raise LaunchError(f"{script.path} runs {script.entry} but --method is {method} (which runs "
                          f"{ENTRIES[method][0]}.py): pass the matching --method or a {method} script")
    name = opts["experiment_dir"] or f"{records.now().strftime('%Y_%m_%d_%H_%M_%S')}-{opts['name']}"
    experiment_dir = os.path.join(opts["base_experiment_dir"], os.path.expanduser(name))
    if os.path.exists(experiment_dir) and (not os.path.isdir(experiment_dir) or os.listdir(experiment_dir)):
        raise LaunchError(f"experiment directory {experiment_dir} already exists and is not empty: continue it "
                          f"with --resume {experiment_dir} or choose another --name/--experiment_dir")
    override_flags = group_flags(overrides, "the overrides after --")
    ours = next((flag.name for flag in override_flags if flag.name in LAUNCHER_FLAGS), None)
    if ours:
        raise LaunchError(f"{ours} is set by the launcher: use {LAUNCHER_FLAGS[ours]} instead of -- {ours}")
    flags = [flag for flag in script.flags if flag.name not in LAUNCHER_FLAGS]
    if opts["num_gpus"] == 0:
        flags = merge_flags(flags, [Flag(("--device", "cpu"), "job_launcher.py (--num_gpus 0)")])
    flags = absolutize_paths(merge_flags(flags, override_flags), os.getcwd())
    flags += [Flag(("--data_path", opts["data_dir"]), "job_launcher.py"),
              Flag(("--output_dir", experiment_dir), "job_launcher.py")]
    record = {"method": method, "experiment_dir": experiment_dir, "script_file": script.path,
              "launcher": {k: opts[k] for k in RECORDED_OPTIONS}, "overrides": list(overrides),
              "train_flags": flatten(flags), "launcher_argv": launcher_argv}
    return _plan(record, flags, experiment_dir, entry_root, False, opts["dry_run"], launcher_argv)


def plan_resume(opts: dict[str, Any], explicit: set[str], overrides: list[str], entry_root: str,
                launcher_argv: list[str]) -> Plan:
    """Check and resolve ``--resume DIR``: the recorded experiment, with new resources at most."""
    experiment_dir = os.path.abspath(os.path.expanduser(opts["resume"]))
    path = os.path.join(experiment_dir, records.ARGS_FILE)
    if not os.path.isfile(path):
        raise LaunchError(f"--resume {experiment_dir}: not an experiment directory of job_launcher.py "
                          f"(no {records.ARGS_FILE})")
    fixed = sorted(explicit - RESUME_ADJUSTABLE)
    if fixed or overrides:
        what = f"--{fixed[0]} cannot change with it (see {path})" if fixed else "flags after -- cannot change it"
        raise LaunchError(f"--resume continues the recorded experiment: {what}; start a new experiment instead")
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        record["launcher"] = {k: record["launcher"].get(k) if k == "tasks_per_node" else record["launcher"][k]
                              for k in RECORDED_OPTIONS} | {k: opts[k] for k in explicit & set(RECORDED_OPTIONS)}
        flags = group_flags(list(record["train_flags"]), path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LaunchError(f"cannot read {path}: {exc}") from exc
    _check_options(record["launcher"])
    return _plan(record, flags, experiment_dir, entry_root, True, opts["dry_run"], launcher_argv)


def command_text(plan: Plan) -> str:
    """command.sh: the exact local command, or (Slurm) the command that submits this experiment again."""
    opts = plan.options
    if opts["mode"] == "local":
        return records.render_command_sh(plan.program, [list(flag.tokens) for flag in plan.flags], plan.entry_root,
                                         [f"{opts['method']}, local, {opts['num_gpus']} GPU(s): running this file "
                                          "again resumes from checkpoint.pth in --output_dir"])
    comments = [f"{opts['method']}, Slurm, {opts['num_nodes']} node(s) x {opts['num_gpus']} GPU(s): running this file "
                "submits the experiment again (it resumes from checkpoint.pth); each task calls "
                f"{os.path.basename(plan.record['entry_script'])}'s main() with:",
                *("    " + " ".join(flag.tokens) for flag in plan.flags)]
    program = [sys.executable, os.path.join(CODE_ROOT, "job_launcher.py"), "--resume", plan.experiment_dir]
    return records.render_command_sh(program, [], CODE_ROOT, comments)


def _write_records(plan: Plan, folder: str) -> None:
    """args.json and command.sh; for a new experiment also the recipe's copy and env.json."""
    if not plan.resume:
        shutil.copy2(plan.record["script_file"], os.path.join(folder, os.path.basename(plan.record["script_file"])))
        write_json_atomic(os.path.join(folder, records.ENV_FILE), records.environment_record(CODE_ROOT), default=str)
    write_json_atomic(os.path.join(folder, records.ARGS_FILE), plan.record | {"updated": records.now().isoformat()},
                      default=str)
    write_text_atomic(os.path.join(folder, records.COMMAND_FILE), command_text(plan), mode=0o755)


def _log_launch(plan: Plan, **details: Any) -> None:
    """A launches.jsonl line: how this launch was made, with what code, and what it started."""
    records.append_launch(plan.experiment_dir, {"mode": plan.options["mode"], "resume": plan.resume, "argv": plan.argv,
                                                "git_commit": records.git(CODE_ROOT, "rev-parse", "HEAD"), **details})


def execute(plan: Plan) -> int:
    """Write the records (unless a dry resume), then start the run (unless a dry run); returns the exit code."""
    print(f"{'Resuming' if plan.resume else 'Experiment directory:'} {plan.experiment_dir}")
    checkpoint = os.path.join(plan.experiment_dir, "checkpoint.pth")
    if plan.resume:
        print(f"  {checkpoint} " + ("found: training continues from it" if os.path.isfile(checkpoint) else
                                    "not there yet: training starts from the beginning"))
    folder = os.path.join(plan.experiment_dir, "slurm")  # submitit's: submission scripts, pickles, per-task logs
    preview = slurm.sbatch_preview(folder, plan.slurm_params) if plan.slurm_params else ""
    if not plan.resume:  # a new experiment's records appear complete, or not at all
        with records.staged_directory(plan.experiment_dir) as staging:
            _write_records(plan, staging)
            if plan.dry_run and preview:
                os.makedirs(os.path.join(staging, "slurm"))
                write_text_atomic(os.path.join(staging, "slurm", "dry_run_submission.sh"), preview)
    elif not plan.dry_run:
        _write_records(plan, plan.experiment_dir)
    if plan.dry_run:
        if not plan.resume:
            _log_launch(plan, dry_run=True)
        print(f"--- {records.COMMAND_FILE} ---\n{command_text(plan)}", end="")
        print(f"--- sbatch script (submitted by submitit from {folder}) ---\n{preview}" if preview else "", end="")
        start = f"{sys.executable} {os.path.join(CODE_ROOT, 'job_launcher.py')} --resume {plan.experiment_dir}"
        print("Dry run: nothing started." + ("" if plan.resume else f" Start it with: {start}"))
        return 0
    if plan.options["mode"] == "slurm":
        return _submit(plan, folder)
    _log_launch(plan, command=plan.program + flatten(plan.flags))
    print(f"Command: {os.path.join(plan.experiment_dir, records.COMMAND_FILE)}", flush=True)
    sys.stderr.flush()
    try:
        code = subprocess.call(plan.program + flatten(plan.flags), cwd=plan.entry_root)  # output, code pass through
    except KeyboardInterrupt:
        code = 130
    if code != 0:
        print(f"job_launcher.py: training exited with code {code}", file=sys.stderr)
    return code


def _submit(plan: Plan, folder: str) -> int:
    """Snapshot the code (first submission; a resume keeps the experiment's), then sbatch through submitit."""
    opts, snapshot = plan.options, plan.code_snapshot
    job_root = snapshot if snapshot and plan.entry_root == CODE_ROOT else plan.entry_root
    try:
        if snapshot and not os.path.isdir(snapshot):
            records.snapshot_code(CODE_ROOT, snapshot)
        trainer = slurm.SlurmTrainer(job_root, ENTRIES[opts["method"]][0], flatten(plan.flags), opts["master_port"])
        job = slurm.submit(trainer, folder, plan.slurm_params)
    except LaunchError:
        if not plan.resume:  # a retry must not trip over a half-made run
            shutil.rmtree(plan.experiment_dir, ignore_errors=True)
        raise
    _log_launch(plan, job_id=job.job_id, submission_file=str(job.paths.submission_file))
    print(f"Submitted job {job.job_id} ({opts['num_nodes']} node(s) x {plan.tasks_per_node} task(s), "
          f"{opts['num_gpus']} GPU(s) per node, {plan.slurm_params['time']} min, partition {opts['partition']})\n"
          f"Logs: {job.paths.stdout} (stdout) and {job.paths.stderr} (stderr), one pair per task\n"
          f"Submission script: {job.paths.submission_file}\n"
          f"Code: {snapshot or CODE_ROOT + ' (not a git checkout: no snapshot, the job runs the folder as it is then)'}"
          f"\nCheckpoints and training log: {plan.experiment_dir}")
    return 0
