"""The launch: every check first (``plan``: nothing is written before all pass), then the experiment directory and
the start (``execute``): one process, torchrun, or a Slurm job through submitit."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable

from daino.args import get_args_parser as daino_parser
from fixmatch.args import get_args_parser as fixmatch_parser
from launch import records, slurm
from launch.script_file import (Flag, absolutize_paths, flatten, group_flags, merge_flags, read_script_file,
                                validate_flags)
from src.atomic_io import write_json_atomic, write_text_atomic
from src.downstream.args import linear_args_parser, semisup_args_parser
from src.errors import UserError
from suave.args import get_args_parser as suave_parser

CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# --method: the entry module it runs (main_suave.py ...) and that entry point's parser.
ENTRIES: dict[str, tuple[str, Callable[[], argparse.ArgumentParser]]] = {
    "suave": ("main_suave", suave_parser), "daino": ("main_daino", daino_parser),
    "eval_semisup": ("eval_semisup", semisup_args_parser), "eval_linear": ("eval_linear", linear_args_parser),
    "fixmatch": ("main_fixmatch", fixmatch_parser)}
# What the launcher itself sets (from --data_dir and the experiment directory): never from a recipe or override.
LAUNCHER_FLAGS = {"--data_path": "--data_dir", "--output_dir": "--experiment_dir/--name"}
# Launcher options a --resume may change (with --dry_run): resources only, never what defines the experiment.
RESUME_ADJUSTABLE = ("hours", "partition", "account", "qos", "constraint", "cpus_per_task", "mem_gb", "master_port")
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
    slurm_params: dict[str, Any] | None = None  # None: a local run
    code_snapshot: str | None = None  # Slurm: <experiment>/code, where jobs run from (None outside a git checkout)
    job_root: str = ""  # Slurm: where the tasks start (the snapshot; entry_root when tests point it elsewhere)

    @property
    def program(self) -> list[str]:
        """python (or torchrun for several GPUs: a free port, or a static rendezvous at --master_port), the entry."""
        gpus, port = self.record["launcher"]["num_gpus"], self.record["launcher"]["master_port"]
        rendezvous = ["--standalone"] if port is None else ["--nnodes", "1", "--master_addr", "127.0.0.1",
                                                            "--master_port", str(port)]
        torchrun = ["-m", "torch.distributed.run", *rendezvous, "--nproc_per_node", str(gpus)] if gpus > 1 else []
        return [sys.executable, *torchrun, self.record["entry_script"]]


def _check_options(opts: dict[str, Any]) -> None:
    for key, low, high in (("num_gpus", 0, None), ("num_nodes", 1, None), ("cpus_per_task", 1, None),
                           ("master_port", 1, 65535), ("hours", 1 / 60, None), ("mem_gb", 1 / 1024, None)):
        if opts[key] is not None and not low <= opts[key] <= (high or opts[key]):
            raise UserError(f"--{key} must be at least {low:g}{f' and at most {high}' if high else ''}, "
                            f"not {opts[key]}")
    if opts["mode"] == "local" and opts["num_nodes"] > 1:
        raise UserError(f"--num_nodes {opts['num_nodes']} needs --mode slurm: local mode runs on this machine only")
    tasks = opts.get("tasks_per_node")
    if tasks is not None and (opts["mode"] != "slurm" or opts["num_gpus"] > 0 or tasks < 1):
        raise UserError(f"--tasks_per_node {tasks}: only for CPU jobs (--mode slurm --num_gpus 0), at least 1; with "
                        "GPUs there is one task per GPU, locally use --num_gpus N -- --device cpu")
    if not os.path.isdir(opts["data_dir"]):
        raise UserError(f"data directory not found: {opts['data_dir']} (give --data_dir, the folder holding train/ "
                        "and val/)")


def plan(opts: dict[str, Any], explicit: set[str], overrides: list[str], entry_root: str, argv: list[str]) -> Plan:
    """Check and resolve a launch (``explicit``: the options given): a new experiment or ``--resume DIR``, its flags
    with the entry point's own parser and, for Slurm, the cluster and the job's inputs."""
    record, flags, experiment_dir = (_resumed(opts, explicit, overrides) if opts["resume"] else
                                     _new(opts, overrides, entry_root, argv))
    launch, dry_run = record["launcher"], opts["dry_run"]
    module, get_parser = ENTRIES[launch["method"]]
    namespace = validate_flags(get_parser, flags, module + ".py")
    record.update(entry_script=os.path.join(entry_root, module + ".py"),
                  train_args=json.loads(json.dumps(vars(namespace), default=str)))
    plan = Plan(record, experiment_dir, entry_root, flags, bool(opts["resume"]), dry_run, argv)
    if launch["mode"] == "slurm":
        if records.git(CODE_ROOT, "rev-parse", "--show-toplevel") == CODE_ROOT:
            plan.code_snapshot = os.path.join(experiment_dir, "code")
        plan.job_root = plan.code_snapshot if plan.code_snapshot and entry_root == CODE_ROOT else entry_root
        python_path = [plan.code_snapshot or CODE_ROOT, plan.job_root]
        plan.slurm_params = slurm.prepare_job(launch, plan.job_root, python_path, dry_run)
        if not dry_run:
            slurm.check_job_inputs(record["train_args"])
    return plan


def _new(opts: dict[str, Any], overrides: list[str], entry_root: str, argv: list[str]) -> tuple[dict, list[Flag], str]:
    """A new experiment's record, flags and directory; the flags: recipe < --device cpu (--num_gpus 0) < overrides,
    then --data_path and --output_dir."""
    opts = dict(opts, name=opts["name"] or opts["method"], data_dir=os.path.abspath(os.path.expanduser(
        opts["data_dir"])), base_experiment_dir=os.path.abspath(os.path.expanduser(opts["base_experiment_dir"])))
    method, module = opts["method"], ENTRIES[opts["method"]][0]
    _check_options(opts)
    if not opts["script_file"] and method.startswith("eval_"):
        raise UserError(f"--method {method} needs --script_file, e.g. scripts/{method}*.sh")
    script = read_script_file(opts["script_file"] or os.path.join(entry_root, method, "scripts", "train_10perc.sh"))
    if script.entry != module + ".py":
        raise UserError(f"{script.path} runs {script.entry} but --method is {method} (which runs {module}.py): pass "
                        f"the matching --method or a {method} script")
    name = opts["experiment_dir"] or f"{records.now().strftime('%Y_%m_%d_%H_%M_%S')}-{opts['name']}"
    experiment_dir = os.path.join(opts["base_experiment_dir"], os.path.expanduser(name))
    if os.path.exists(experiment_dir) and (not os.path.isdir(experiment_dir) or os.listdir(experiment_dir)):
        raise UserError(f"experiment directory {experiment_dir} already exists and is not empty: continue it with "
                        f"--resume {experiment_dir} or choose another --name/--experiment_dir")
    override_flags = group_flags(overrides, "the overrides after --")
    ours = next((flag.name for flag in override_flags if flag.name in LAUNCHER_FLAGS), None)
    if ours:
        raise UserError(f"{ours} is set by the launcher: use {LAUNCHER_FLAGS[ours]} instead of -- {ours}")
    flags = [flag for flag in script.flags if flag.name not in LAUNCHER_FLAGS]
    if opts["num_gpus"] == 0:
        flags = merge_flags(flags, [Flag(("--device", "cpu"), "job_launcher.py (--num_gpus 0)")])
    flags = absolutize_paths(merge_flags(flags, override_flags), os.getcwd())
    flags += [Flag(("--data_path", opts["data_dir"]), "job_launcher.py"),
              Flag(("--output_dir", experiment_dir), "job_launcher.py")]
    record = {"method": method, "experiment_dir": experiment_dir, "script_file": script.path,
              "launcher": {k: opts[k] for k in RECORDED_OPTIONS}, "overrides": list(overrides),
              "train_flags": flatten(flags), "launcher_argv": argv}
    return record, flags, experiment_dir


def _resumed(opts: dict[str, Any], explicit: set[str], overrides: list[str]) -> tuple[dict, list[Flag], str]:
    """``--resume DIR``: the recorded experiment's record (with new resources at most), flags and directory."""
    experiment_dir = os.path.abspath(os.path.expanduser(opts["resume"]))
    path = os.path.join(experiment_dir, records.ARGS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"--resume {experiment_dir}: not an experiment directory of job_launcher.py "
                        f"(no {records.ARGS_FILE})")
    fixed = sorted(explicit - {"resume", "dry_run", *RESUME_ADJUSTABLE})
    if fixed or overrides:
        what = f"--{fixed[0]} cannot change with it (see {path})" if fixed else "flags after -- cannot change it"
        raise UserError(f"--resume continues the recorded experiment: {what}; start a new experiment instead")
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        record["launcher"] = {k: record["launcher"].get(k) if k == "tasks_per_node" else record["launcher"][k]
                              for k in RECORDED_OPTIONS} | {k: opts[k] for k in explicit & set(RECORDED_OPTIONS)}
        flags = group_flags(list(record["train_flags"]), path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    _check_options(record["launcher"])
    return record, flags, experiment_dir


def command_text(plan: Plan) -> str:
    """command.sh: the exact local command, or (Slurm) the command that submits this experiment again; one flag a
    line, every word shell-quoted."""
    opts, flag_lines = plan.record["launcher"], [flag.tokens for flag in plan.flags]
    program, cwd = plan.program, plan.entry_root
    comments = [f"{opts['method']}, local, {opts['num_gpus']} GPU(s): running this file again resumes from "
                "checkpoint.pth in --output_dir"]
    if plan.slurm_params:
        comments = [f"{opts['method']}, Slurm, {opts['num_nodes']} node(s) x {opts['num_gpus']} GPU(s): running this "
                    "file submits the experiment again (it resumes from checkpoint.pth); each task calls "
                    f"{os.path.basename(plan.record['entry_script'])}'s main() with:",
                    *("    " + " ".join(tokens) for tokens in flag_lines)]
        program, cwd, flag_lines = [sys.executable, os.path.join(CODE_ROOT, "job_launcher.py"), "--resume",
                                    plan.experiment_dir], CODE_ROOT, []
    lines = [" ".join(map(shlex.quote, program))] + ["    " + " ".join(map(shlex.quote, f)) for f in flag_lines]
    header = ["#!/usr/bin/env bash", *(f"# {c}" for c in comments), "set -euo pipefail", f"cd {shlex.quote(cwd)}"]
    return "\n".join(header) + "\nexec " + " \\\n".join(lines) + "\n"


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
    line = {"time": records.now().isoformat(), "mode": plan.record["launcher"]["mode"], "resume": plan.resume,
            "argv": plan.argv, "git_commit": records.git(CODE_ROOT, "rev-parse", "HEAD"), **details}
    with open(os.path.join(plan.experiment_dir, records.LAUNCHES_FILE), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, default=str) + "\n")


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
                write_text_atomic(os.path.join(staging, "slurm", "dry_run_submission.sh"), preview, parents=True)
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
    if plan.slurm_params:
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
    opts, snapshot, params = plan.record["launcher"], plan.code_snapshot, plan.slurm_params
    try:
        if snapshot and not os.path.isdir(snapshot):
            records.snapshot_code(CODE_ROOT, snapshot)
        module, flags = ENTRIES[opts["method"]][0], flatten(plan.flags)
        job = slurm.submit(slurm.SlurmTrainer(plan.job_root, module, flags, opts["master_port"]), folder, params)
    except UserError:
        if not plan.resume:  # a retry must not trip over a half-made run
            shutil.rmtree(plan.experiment_dir, ignore_errors=True)
        raise
    _log_launch(plan, job_id=job.job_id, submission_file=str(job.paths.submission_file))
    print(f"Submitted job {job.job_id} ({opts['num_nodes']} node(s) x {params['ntasks_per_node']} task(s), "
          f"{opts['num_gpus']} GPU(s) per node, {params['time']} min, partition {opts['partition']})\n"
          f"Logs: {job.paths.stdout} (stdout) and {job.paths.stderr} (stderr), one pair per task\n"
          f"Submission script: {job.paths.submission_file}\n"
          f"Code: {snapshot or CODE_ROOT + ' (not a git checkout: no snapshot, the job runs the folder as it is then)'}"
          f"\nCheckpoints and training log: {plan.experiment_dir}")
    return 0
