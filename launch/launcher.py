"""The launch: every check first (``plan_new``, ``plan_resume``: nothing is written before all pass), then the
experiment directory and the start (``execute``): one process, torchrun, or a Slurm job through submitit."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from daino.args import get_args_parser as daino_parser
from launch import LaunchError, records, slurm
from launch.script_file import Flag, absolutize_paths, flatten, group_flags, merge_flags, read_script_file, validate_flags
from src.downstream.args import linear_args_parser, semisup_args_parser
from suave.args import get_args_parser as suave_parser

CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# --method: the entry module it runs (main_suave.py ...) and that entry point's parser.
ENTRIES: dict[str, tuple[str, Callable[[], argparse.ArgumentParser]]] = {
    "suave": ("main_suave", suave_parser), "daino": ("main_daino", daino_parser),
    "eval_semisup": ("eval_semisup", semisup_args_parser), "eval_linear": ("eval_linear", linear_args_parser)}
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
    entry_root: str  # where main_suave.py ... run from: the checkout (tests point it elsewhere)
    flags: list[Flag]
    train_args: dict[str, Any]
    resume: bool
    dry_run: bool
    launcher_argv: list[str]
    script_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    slurm_params: dict[str, Any] | None = None
    code_snapshot: str | None = None  # Slurm: <experiment>/code, where jobs run from (None outside a git checkout)

    @property
    def entry_script(self) -> str:
        return os.path.join(self.entry_root, ENTRIES[self.options["method"]][0] + ".py")

    @property
    def program(self) -> list[str]:
        """The local command before the flags: python, or torchrun (a free port, or a static rendezvous at
        --master_port) for several GPUs."""
        gpus, port = self.options["num_gpus"], self.options["master_port"]
        rendezvous = ["--standalone"] if port is None else ["--nnodes", "1", "--master_addr", "127.0.0.1",
                                                            "--master_port", str(port)]
        torchrun = ["-m", "torch.distributed.run", *rendezvous, "--nproc_per_node", str(gpus)] if gpus > 1 else []
        return [sys.executable, *torchrun, self.entry_script]


def tasks_per_node(opts: dict[str, Any]) -> int:
    """One task per GPU; CPU jobs: --tasks_per_node (1)."""
    return opts["num_gpus"] if opts["num_gpus"] > 0 else (opts.get("tasks_per_node") or 1)


def _check_options(opts: dict[str, Any]) -> None:
    for key, low, high in (("num_gpus", 0, None), ("num_nodes", 1, None), ("cpus_per_task", 1, None),
                           ("master_port", 1, 65535)):
        if opts[key] is not None and not low <= opts[key] <= (high or opts[key]):
            raise LaunchError(f"--{key} must be at least {low}{f' and at most {high}' if high else ''}, not {opts[key]}")
    for key in ("hours", "mem_gb"):
        if opts[key] is not None and opts[key] <= 0:
            raise LaunchError(f"--{key} must be positive, not {opts[key]}")
    if opts["mode"] == "local" and opts["num_nodes"] > 1:
        raise LaunchError(f"--num_nodes {opts['num_nodes']} needs --mode slurm: local mode runs on this machine only")
    if opts.get("tasks_per_node") is not None and (opts["mode"] != "slurm" or opts["num_gpus"] > 0
                                                   or opts["tasks_per_node"] < 1):
        raise LaunchError(f"--tasks_per_node {opts['tasks_per_node']}: only for CPU jobs (--mode slurm --num_gpus 0), "
                          "at least 1; with GPUs there is one task per GPU, locally use --num_gpus N -- --device cpu")
    if not os.path.isdir(opts["data_dir"]):
        raise LaunchError(f"data directory not found: {opts['data_dir']} (give --data_dir, the folder holding train/ "
                          "and val/)")


def _plan(opts: dict[str, Any], experiment_dir: str, entry_root: str, flags: list[Flag], **fields: Any) -> Plan:
    """Check the flags with the entry point's own parser and, for Slurm, the cluster and the job's inputs."""
    module, get_parser = ENTRIES[opts["method"]]
    namespace = validate_flags(get_parser, flags, module + ".py")
    plan = Plan(opts, experiment_dir, entry_root, flags, json.loads(json.dumps(vars(namespace), default=str)),
                **fields)
    if opts["mode"] != "slurm":
        return plan
    for tool in ("sbatch", "srun") if not plan.dry_run else ():
        if shutil.which(tool) is None:
            raise LaunchError(f"{tool} not found on PATH: --mode slurm must run on a Slurm login node "
                              "(or use --mode local)")
    opts["partition"] = opts["partition"] or slurm.default_partition()
    if not opts["partition"]:
        raise LaunchError("--mode slurm needs a partition: give --partition NAME (or --host NAME); "
                          "this cluster reports no default partition")
    if records.git(CODE_ROOT, "rev-parse", "--show-toplevel") == CODE_ROOT:
        plan.code_snapshot = os.path.join(experiment_dir, "code")
    job_root = plan.code_snapshot if plan.code_snapshot and entry_root == CODE_ROOT else entry_root
    mem_gb = opts["mem_gb"] or 40 * max(1, opts["num_gpus"])  # DINO's 40 GB per GPU
    plan.slurm_params = slurm.slurm_parameters(opts, tasks_per_node(opts), mem_gb, job_root,
                                               [plan.code_snapshot or CODE_ROOT, job_root])
    if not plan.dry_run:
        slurm.check_partition_fits(opts["partition"], opts["num_nodes"], tasks_per_node(opts), opts["cpus_per_task"],
                                   mem_gb, opts["num_gpus"], plan.slurm_params["time"])
        slurm.check_job_inputs(plan.train_args)
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
    for flag in (flag for flag in override_flags if flag.name in LAUNCHER_FLAGS):
        raise LaunchError(f"{flag.name} is set by the launcher: use {LAUNCHER_FLAGS[flag.name]} instead of "
                          f"-- {flag.name}")
    flags = [flag for flag in script.flags if flag.name not in LAUNCHER_FLAGS]
    if opts["num_gpus"] == 0:
        flags = merge_flags(flags, [Flag(("--device", "cpu"), "job_launcher.py (--num_gpus 0)")])
    flags = absolutize_paths(merge_flags(flags, override_flags), os.getcwd())
    flags += [Flag(("--data_path", opts["data_dir"]), "job_launcher.py"),
              Flag(("--output_dir", experiment_dir), "job_launcher.py")]
    return _plan({k: opts[k] for k in RECORDED_OPTIONS}, experiment_dir, entry_root, flags, resume=False,
                 dry_run=opts["dry_run"], launcher_argv=launcher_argv, script_file=script.path,
                 overrides=list(overrides))


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
        recorded = {k: record["launcher"].get(k) if k == "tasks_per_node" else record["launcher"][k]
                    for k in RECORDED_OPTIONS}
        flags = group_flags(list(record["train_flags"]), path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LaunchError(f"cannot read {path}: {exc}") from exc
    recorded.update({k: opts[k] for k in explicit & set(RECORDED_OPTIONS)})
    _check_options(recorded)
    return _plan(recorded, experiment_dir, entry_root, flags, resume=True, dry_run=opts["dry_run"],
                 launcher_argv=launcher_argv, script_file=record.get("script_file"), overrides=record.get("overrides"))


def command_text(plan: Plan) -> str:
    """command.sh: the exact local command, or (Slurm) the command that submits this experiment again."""
    opts = plan.options
    if opts["mode"] == "local":
        return records.render_command_sh(plan.program, [list(flag.tokens) for flag in plan.flags], plan.entry_root,
                                         [f"{opts['method']}, local, {opts['num_gpus']} GPU(s): running this file "
                                          "again resumes from checkpoint.pth in --output_dir"])
    comments = [f"{opts['method']}, Slurm, {opts['num_nodes']} node(s) x {opts['num_gpus']} GPU(s): running this file "
                "submits the experiment again (it resumes from checkpoint.pth); each task calls "
                f"{os.path.basename(plan.entry_script)}'s main() with:", *("    " + " ".join(f.tokens) for f in plan.flags)]
    program = [sys.executable, os.path.join(CODE_ROOT, "job_launcher.py"), "--resume", plan.experiment_dir]
    return records.render_command_sh(program, [], CODE_ROOT, comments)


def _write_records(plan: Plan, folder: str) -> None:
    """args.json and command.sh; for a new experiment also the recipe's copy and env.json."""
    args_path = os.path.join(folder, records.ARGS_FILE)
    if plan.resume:  # new resources at most
        with open(args_path, encoding="utf-8") as handle:
            record = dict(json.load(handle), launcher=plan.options)
    else:
        if plan.script_file:
            shutil.copy2(plan.script_file, os.path.join(folder, os.path.basename(plan.script_file)))
        records.write_json(os.path.join(folder, records.ENV_FILE), records.environment_record(CODE_ROOT))
        record = {"method": plan.options["method"], "experiment_dir": plan.experiment_dir,
                  "entry_script": plan.entry_script, "script_file": plan.script_file, "launcher": plan.options,
                  "overrides": plan.overrides, "train_flags": flatten(plan.flags), "train_args": plan.train_args,
                  "launcher_argv": plan.launcher_argv}
    records.write_json(args_path, dict(record, updated=records.now().isoformat(timespec="seconds")))
    records.write_text(os.path.join(folder, records.COMMAND_FILE), command_text(plan), executable=True)


def _log_launch(plan: Plan, folder: str, **details: Any) -> None:
    records.append_launch(folder, {"mode": plan.options["mode"], "resume": plan.resume, "argv": plan.launcher_argv,
                                   "git_commit": records.git(CODE_ROOT, "rev-parse", "HEAD"), **details})


def execute(plan: Plan) -> int:
    """Write the records (unless a dry resume), then start the run (unless a dry run); returns the exit code."""
    print(f"{'Resuming' if plan.resume else 'Experiment directory:'} {plan.experiment_dir}")
    checkpoint = os.path.join(plan.experiment_dir, "checkpoint.pth")
    if plan.resume:
        print(f"  {checkpoint} " + ("found: training continues from it" if os.path.isfile(checkpoint) else
                                    "not there yet: training starts from the beginning"))
    folder = os.path.join(plan.experiment_dir, "slurm")  # submitit's: submission scripts, pickles, per-task logs
    preview = slurm.sbatch_preview(folder, plan.slurm_params) if plan.slurm_params else None
    if plan.resume and not plan.dry_run:
        _write_records(plan, plan.experiment_dir)
    elif not plan.resume:
        with records.staged_directory(plan.experiment_dir) as staging:
            _write_records(plan, staging)
            if plan.dry_run and preview:
                os.makedirs(os.path.join(staging, "slurm"))
                records.write_text(os.path.join(staging, "slurm", "dry_run_submission.sh"), preview)
            if plan.dry_run:
                _log_launch(plan, staging, dry_run=True)
    if plan.dry_run:
        print(f"--- {records.COMMAND_FILE} ---\n{command_text(plan)}", end="")
        print(f"--- sbatch script (submitted by submitit from {folder}) ---\n{preview}" if preview else "", end="")
        start = f"{sys.executable} {os.path.join(CODE_ROOT, 'job_launcher.py')} --resume {plan.experiment_dir}"
        print("Dry run: nothing started." + ("" if plan.resume else f" Start it with: {start}"))
        return 0
    if plan.options["mode"] == "slurm":
        return _submit(plan, folder)
    _log_launch(plan, plan.experiment_dir, command=plan.program + flatten(plan.flags))
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
        if not plan.resume:
            shutil.rmtree(plan.experiment_dir, ignore_errors=True)
        raise
    _log_launch(plan, plan.experiment_dir, job_id=job.job_id, submission_file=str(job.paths.submission_file))
    print(f"Submitted job {job.job_id} ({opts['num_nodes']} node(s) x {tasks_per_node(opts)} task(s), "
          f"{opts['num_gpus']} GPU(s) per node, {plan.slurm_params['time']} min, partition {opts['partition']})\n"
          f"Logs: {job.paths.stdout} (stdout) and {job.paths.stderr} (stderr), one pair per task\n"
          f"Code: {snapshot or CODE_ROOT + ' (not a git checkout: no snapshot, the job runs the folder as it is then)'}"
          f"\nCheckpoints and training log: {plan.experiment_dir}")
    return 0
