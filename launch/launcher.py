"""The launch: every check first (``plan``: nothing is written before all pass), then the experiment directory and
the start (``execute``): one process, torchrun, or a Slurm job through submitit as DINO's ``run_with_submitit.py``
(at USR2, ``--signal=USR2@120`` or ``scancel --signal=USR2 JOBID``, the job requeues and resumes from checkpoint)."""
from __future__ import annotations

import contextlib
import datetime
import importlib
import io
import json
import netrc
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlparse

import submitit

from launch import records
from launch.script_file import Flag, absolutize_paths, flatten, group_flags, merge_flags, read_script_file, \
    validate_flags
from src import registry
from src.atomic_io import write_json_atomic, write_text_atomic
from src.errors import UserError

CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the launcher itself sets (from --data_dir and the experiment directory): never from a recipe or override.
LAUNCHER_FLAGS = {"--data_path": "--data_dir", "--output_dir": "--experiment_dir/--name"}
# Launcher options a --resume may change (with --dry_run): resources only, never what defines the experiment.
RESUME_ADJUSTABLE = ("hours", "partition", "account", "qos", "constraint", "cpus_per_task", "mem_gb", "master_port")


@dataclass
class Plan:
    """Everything checked and resolved; ``execute`` only writes and starts. ``record`` is args.json."""

    record: dict[str, Any]
    flags: list[Flag]
    program: list[str]  # python, or torchrun for several GPUs, and the entry script
    entry_root: str  # where main_suave.py ... run from: the checkout (tests point it elsewhere)
    resume: bool
    dry_run: bool
    argv: list[str]  # this launch's (a resume's own)
    slurm_params: dict[str, Any] | None = None  # None: a local run
    code_snapshot: str | None = None  # Slurm: <experiment>/code, where jobs run from (None outside a git checkout)
    trainer: SlurmTrainer | None = None  # Slurm: what each task runs
    sbatch_preview: str = ""  # Slurm: the job's #SBATCH lines and set-up (submitit adds its log paths and srun line)


def plan(opts: dict[str, Any], explicit: set[str], overrides: list[str], entry_root: str, argv: list[str]) -> Plan:
    """Check and resolve a launch (new or ``--resume``; ``explicit``: the options given), for Slurm with its inputs."""
    record, flags = _resumed(opts, explicit, overrides) if opts["resume"] else _new(opts, overrides, entry_root, argv)
    launch, entry = record["launcher"], registry.entry(record["launcher"]["method"])
    namespace = validate_flags(entry.get_parser, flags, entry.script)
    record.update(entry_script=os.path.join(entry_root, entry.script),
                  train_args=json.loads(json.dumps(vars(namespace), default=str)))
    gpus, port = launch["num_gpus"], launch["master_port"]  # torchrun: a free port, or a static rendezvous at port
    rendezvous = ["--standalone"] if port is None else ["--nnodes", "1", "--master_addr", "127.0.0.1",
                                                        "--master_port", str(port)]
    torchrun = ["-m", "torch.distributed.run", *rendezvous, "--nproc_per_node", str(gpus)] if gpus > 1 else []
    plan = Plan(record, flags, [sys.executable, *torchrun, record["entry_script"]], entry_root,
                bool(opts["resume"]), opts["dry_run"], argv)
    if launch["mode"] == "slurm":
        if records.git(CODE_ROOT, "rev-parse", "--show-toplevel") == CODE_ROOT:
            plan.code_snapshot = os.path.join(record["experiment_dir"], "code")
        job_root = plan.code_snapshot if plan.code_snapshot and entry_root == CODE_ROOT else entry_root
        plan.slurm_params = job_parameters(launch, job_root, [plan.code_snapshot or CODE_ROOT, job_root])
        plan.trainer = SlurmTrainer(entry.module, flatten(flags), port)
        plan.sbatch_preview = "".join(f"#SBATCH {option}\n" for option in sbatch_options(plan.slurm_params)) + \
            "\n".join(plan.slurm_params["setup"]) + "\n"
        if not plan.dry_run:
            check_cluster(plan.slurm_params)
            check_job_inputs(record["train_args"])
    return plan


def _new(opts: dict[str, Any], overrides: list[str], entry_root: str, argv: list[str]) -> tuple[dict, list[Flag]]:
    """A new experiment's record and flags: recipe < --device cpu (--num_gpus 0) < overrides < the launcher's."""
    opts = dict(opts, name=opts["name"] or opts["method"], data_dir=os.path.abspath(os.path.expanduser(
        opts["data_dir"])), base_experiment_dir=os.path.abspath(os.path.expanduser(opts["base_experiment_dir"])))
    method, script, tasks = opts["method"], registry.entry(opts["method"]).script, opts["tasks_per_node"]
    if opts["mode"] == "local" and opts["num_nodes"] > 1:
        raise UserError(f"--num_nodes {opts['num_nodes']} needs --mode slurm: local mode runs on this machine only")
    if tasks is not None and (opts["mode"] != "slurm" or opts["num_gpus"] > 0 or tasks < 1):
        raise UserError(f"--tasks_per_node {tasks}: only for CPU jobs (--mode slurm --num_gpus 0), at least 1; with "
                        "GPUs there is one task per GPU, locally use --num_gpus N -- --device cpu")
    if not os.path.isdir(opts["data_dir"]):
        raise UserError(f"data directory not found: {opts['data_dir']} (give --data_dir, the folder of train/, val/)")
    recipe = read_script_file(opts["script_file"] or os.path.join(entry_root, method, "scripts", "train_10perc.sh"))
    if recipe.entry != script:
        raise UserError(f"{recipe.path} runs {recipe.entry} but --method is {method} (which runs {script}): pass "
                        f"the matching --method or a {method} script")
    name = opts["experiment_dir"] or f"{datetime.datetime.now().strftime('%Y_%m_%d_%H_%M_%S')}-{opts['name']}"
    experiment_dir = os.path.join(opts["base_experiment_dir"], os.path.expanduser(name))
    if os.path.exists(experiment_dir) and (not os.path.isdir(experiment_dir) or os.listdir(experiment_dir)):
        raise UserError(f"experiment directory {experiment_dir} already exists and is not empty: continue it with "
                        f"--resume {experiment_dir} or choose another --name/--experiment_dir")
    override_flags = group_flags(overrides, "the overrides after --")
    if ours := next((flag.name for flag in override_flags if flag.name in LAUNCHER_FLAGS), None):
        raise UserError(f"{ours} is set by the launcher: use {LAUNCHER_FLAGS[ours]} instead of -- {ours}")
    flags = [flag for flag in recipe.flags if flag.name not in LAUNCHER_FLAGS]
    if opts["num_gpus"] == 0:
        flags = merge_flags(flags, [Flag(("--device", "cpu"), "job_launcher.py (--num_gpus 0)")])
    flags = absolutize_paths(merge_flags(flags, override_flags), os.getcwd()) + [
        Flag(("--data_path", opts["data_dir"]), "job_launcher.py"),
        Flag(("--output_dir", experiment_dir), "job_launcher.py")]
    return {"method": method, "experiment_dir": experiment_dir, "script_file": recipe.path,
            "launcher": {k: v for k, v in opts.items() if k not in ("script_file", "experiment_dir", "resume",
                                                                     "dry_run")}, "overrides": list(overrides),
            "train_flags": flatten(flags), "launcher_argv": argv}, flags


def _resumed(opts: dict[str, Any], explicit: set[str], overrides: list[str]) -> tuple[dict, list[Flag]]:
    """``--resume DIR``: the recorded experiment's record (with new resources at most) and flags."""
    path = os.path.join(os.path.abspath(os.path.expanduser(opts["resume"])), "args.json")
    if not os.path.isfile(path):
        raise UserError(f"--resume {os.path.dirname(path)}: not an experiment directory of job_launcher.py "
                        "(no args.json)")
    fixed = sorted(explicit - {"resume", "dry_run", *RESUME_ADJUSTABLE})
    if fixed or overrides:
        what = f"--{fixed[0]} cannot change with it (see {path})" if fixed else "flags after -- cannot change it"
        raise UserError(f"--resume continues the recorded experiment: {what}; start a new experiment instead")
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        record["launcher"].update({k: opts[k] for k in explicit if k in RESUME_ADJUSTABLE})
        return record, group_flags(list(record["train_flags"]), path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def job_parameters(opts: dict[str, Any], job_root: str, python_path: list[str]) -> dict[str, Any]:
    """SlurmExecutor parameters: a task per GPU (or --tasks_per_node), 40 GB per GPU unless --mem_gb, as DINO;
    srun ends every task when one fails (``--kill-on-bad-exit``), so no rank is left waiting for a lost one."""
    gpus, mem_gb = opts["num_gpus"], opts["mem_gb"] or 40 * max(1, opts["num_gpus"])
    joined = ":".join(shlex.quote(p) for p in dict.fromkeys(python_path))
    params = {"job_name": opts["name"], "time": max(1, round(60 * opts["hours"])), "nodes": opts["num_nodes"],
              "ntasks_per_node": gpus or opts.get("tasks_per_node") or 1, "cpus_per_task": opts["cpus_per_task"],
              "mem": f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB",
              **({"gpus_per_node": gpus} if gpus > 0 else {}), "signal_delay_s": 120,
              "srun_args": ["--kill-on-bad-exit=1"],
              "setup": [f"cd {shlex.quote(job_root)}", f'export PYTHONPATH={joined}"${{PYTHONPATH:+:$PYTHONPATH}}"']}
    return params | {key: opts[key] for key in ("partition", "account", "qos", "constraint") if opts[key]}


def sbatch_options(params: dict[str, Any]) -> list[str]:
    """The parameters as sbatch options (submitit's ``signal_delay_s``: ``--signal=USR2@N``)."""
    named = {k: v for k, v in params.items() if k not in ("setup", "signal_delay_s", "srun_args")}
    return [f"--{k.replace('_', '-')}={v}" for k, v in named.items()] + [f"--signal=USR2@{params['signal_delay_s']}"]


def partition_phrase(params: dict[str, Any]) -> str:
    """Where the job goes, in words: ``partition NAME``, or Slurm's default when ``--partition`` is not given."""
    return f"partition {params['partition']}" if "partition" in params else "the cluster's default partition"


def check_cluster(params: dict[str, Any]) -> None:
    """Refuse what Slurm would refuse or keep pending forever: ``sbatch --test-only`` (no node fits, unknown
    partition...), then the partition's time limit, which test-only accepts (the job would pend forever)."""
    if shutil.which("sbatch") is None:
        raise UserError("sbatch not found on PATH: run --mode slurm on a Slurm login node, or use --mode local")
    test = records.run_tool("sbatch", "--test-only", *sbatch_options(params), "--wrap", "true")
    if test and test.returncode != 0:
        reason = re.sub(r"sbatch: error: |allocation failure: ", "", "; ".join(test.stderr.strip().splitlines()))
        asked = " ".join(sbatch_options(params)[1:-1])
        raise UserError(f"Slurm cannot run this job in {partition_phrase(params)}: {reason} ({asked}): "
                        "change --num_nodes/--tasks_per_node/--cpus_per_task/--mem_gb/--num_gpus/--constraint or "
                        "--partition")
    partition = re.search(r"in partition (\S+)", test.stderr if test else "")
    limit = records.run_tool("sinfo", "-h", "-p", partition[1], "-o", "%l") if partition else None
    clock = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", limit.stdout.strip()) if limit else None  # [D-][H:]M:S
    if clock and params["time"] > (most := sum(int(n or 0) * k for n, k in zip(clock.groups(), (1440, 60, 1, 1 / 60)))):
        raise UserError(f"partition {partition[1]} allows jobs of {most:g} minutes at most, this one asks for "
                        f"{params['time']} (--hours): lower --hours (requeues continue a longer run) or use another "
                        "--partition")


def check_job_inputs(args: dict[str, Any]) -> None:
    """The job's inputs: data folders, init checkpoints (they must load), labelled list (fetched), wandb login."""
    from src.checkpoint import read_checkpoint
    from src.data.subsets import resolve_subset_file

    for split in ("train", "val") if "data_path" in args else ():
        if not os.path.isdir(os.path.join(args["data_path"], split)):
            raise UserError(f"{args['data_path']} has no {split}/ folder: --data_dir must hold train/<class>/ and "
                            f"val/<class>/ (the job would fail at start)")
    try:  # missing, a directory, truncated, unsafe pickle; a labelled list missing or not fetched: says which
        for flag in [entry.init_flag for entry in registry.methods() if entry.init_flag and args.get(entry.init_flag)]:
            read_checkpoint(args[flag], f"--{flag}")
        if ("labels_perc" in args or "subset_file" in args) and args.get("train_subset") != "all":  # eval_knn's all
            resolve_subset_file(args["data_path"], args.get("labels_perc"), args.get("subset_file"))
    except Exception as exc:
        raise UserError(f"{' '.join(str(exc).split())} (checked at submission)") from None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:  # wandb logs in without asking with WANDB_API_KEY or a netrc entry for its host (wandb login)
        login = bool(os.environ.get("WANDB_API_KEY")) or netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        login = False
    if args.get("wandb") is True and args.get("wandb_mode", "online") == "online" and not login:
        raise UserError("--wandb true in online mode, but no wandb credentials here (no WANDB_API_KEY, no netrc "
                        "entry): run `wandb login` first, or add -- --wandb_mode offline (then `wandb sync`)")


@dataclass
class SlurmTrainer:
    """The callable every Slurm task runs (pickled by submitit); requeues itself on timeout or preemption."""

    entry_module: str  # imported from the job's working directory (PYTHONPATH)
    train_flags: list[str]
    master_port: int | None = None

    def __call__(self) -> Any:
        env = submitit.helpers.TorchDistributedEnvironment()  # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...
        job_id = str(submitit.JobEnvironment().job_id).split("_")[0]  # the release's rule: 10000 + its last 4 digits
        env.master_port = self.master_port or 10000 + int("".join(filter(str.isdigit, job_id))[-4:] or 0)
        env.export(set_cuda_visible_devices=False, overwrite=True)  # the engine picks the GPU by LOCAL_RANK
        from src.distributed import node_name  # in the job: torch is imported there anyway
        print(f"[job_launcher] task rank {env.rank}/{env.world_size} (local {env.local_rank}) on node "
              f"{node_name()}, master {env.master_addr}:{env.master_port}", flush=True)
        module = importlib.import_module(self.entry_module)
        return module.main(module.get_args_parser().parse_args(self.train_flags))

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 at USR2: requeue a fresh copy; training resumes from checkpoint.pth."""
        print(f"[job_launcher] requeuing {self.entry_module} with the same flags", flush=True)
        return submitit.helpers.DelayedSubmission(replace(self, train_flags=list(self.train_flags)))


def command_text(plan: Plan) -> str:
    """command.sh: the exact local command (one flag a line), or for Slurm the one that submits the job again."""
    opts, lines, cwd = plan.record["launcher"], [plan.program, *(flag.tokens for flag in plan.flags)], plan.entry_root
    if plan.slurm_params:
        lines, cwd = [[sys.executable, os.path.join(CODE_ROOT, "job_launcher.py"), "--resume",
                       plan.record["experiment_dir"]]], CODE_ROOT
    return (f"#!/usr/bin/env bash\n# {opts['method']}, {opts['mode']}, {opts['num_nodes']} node(s) x "
            f"{opts['num_gpus']} GPU(s): running this file {'submits' if plan.slurm_params else 'starts'} the "
            f"experiment again (it resumes from checkpoint.pth in --output_dir)\nset -euo pipefail\ncd "
            f"{shlex.quote(cwd)}\nexec " + " \\\n    ".join(" ".join(map(shlex.quote, line)) for line in lines) + "\n")


def _write_records(plan: Plan, folder: str) -> None:
    """args.json, command.sh; a new experiment's recipe copy and env.json; a dry Slurm run's #SBATCH preview."""
    if not plan.resume:
        shutil.copy2(plan.record["script_file"], os.path.join(folder, os.path.basename(plan.record["script_file"])))
        write_json_atomic(os.path.join(folder, "env.json"), records.environment_record(CODE_ROOT), default=str)
    if plan.dry_run and plan.slurm_params:
        write_text_atomic(os.path.join(folder, "slurm", "dry_run_submission.sh"), plan.sbatch_preview, parents=True)
    updated = datetime.datetime.now().astimezone().isoformat()
    write_json_atomic(os.path.join(folder, "args.json"), plan.record | {"updated": updated}, default=str)
    write_text_atomic(os.path.join(folder, "command.sh"), command_text(plan), mode=0o755)


def _log_launch(plan: Plan, **details: Any) -> None:
    """A launches.jsonl line: how this launch was made, with what code, and what it started."""
    line = {"time": datetime.datetime.now().astimezone().isoformat(), "mode": plan.record["launcher"]["mode"],
            "resume": plan.resume, "argv": plan.argv, "git_commit": records.git(CODE_ROOT, "rev-parse", "HEAD")}
    with open(os.path.join(plan.record["experiment_dir"], "launches.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line | details, default=str) + "\n")


def execute(plan: Plan) -> int:
    """Write the records (a new experiment's all or nothing, a dry resume's none), then start unless a dry run."""
    exp, opts, params = plan.record["experiment_dir"], plan.record["launcher"], plan.slurm_params
    found = os.path.isfile(os.path.join(exp, "checkpoint.pth"))
    print(f"Experiment directory: {exp}" if not plan.resume else f"Resuming {exp}: checkpoint.pth " + (
        "found, training continues from it" if found else "not there yet, training starts from the beginning"))
    if not plan.resume:
        with records.staged_directory(exp) as staging:
            _write_records(plan, staging)
    elif not plan.dry_run:
        _write_records(plan, exp)
    if plan.dry_run:
        if not plan.resume:
            _log_launch(plan, dry_run=True)
        print(f"--- command.sh ---\n{command_text(plan)}", end="")
        if params:
            print(f"--- sbatch parameters (submitit adds its log paths, srun line) ---\n{plan.sbatch_preview}", end="")
        start = f"{sys.executable} {os.path.join(CODE_ROOT, 'job_launcher.py')} --resume {exp}"
        print("Dry run: nothing started." + ("" if plan.resume else f" Start it with: {start}"))
        return 0
    if not params:
        _log_launch(plan, command=plan.program + flatten(plan.flags))
        print(f"Command: {os.path.join(exp, 'command.sh')}", flush=True)
        try:
            code = subprocess.call(plan.program + flatten(plan.flags), cwd=plan.entry_root)  # output, code pass on
        except KeyboardInterrupt:
            code = 130
        if code != 0:
            print(f"job_launcher.py: training exited with code {code}", file=sys.stderr)
        return code
    try:  # the code snapshot at the first submission (a resume keeps the experiment's), then sbatch via submitit
        if plan.code_snapshot and not os.path.isdir(plan.code_snapshot):
            records.snapshot_code(CODE_ROOT, plan.code_snapshot)
        executor = submitit.SlurmExecutor(folder=os.path.join(exp, "slurm"), max_num_timeout=30)  # DINO's
        executor.update_parameters(**params)
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; it is in the error
            job = executor.submit(plan.trainer)
    except Exception as exc:  # the snapshot's or sbatch's refusal (bad account...), with its reason
        if not plan.resume:  # a retry must not trip over a half-made run
            shutil.rmtree(exp, ignore_errors=True)
        raise exc if isinstance(exc, UserError) else UserError(f"sbatch failed: {' '.join(str(exc).split())[:500]}")
    _log_launch(plan, job_id=job.job_id, submission_file=str(job.paths.submission_file))
    print(f"Submitted job {job.job_id} ({opts['num_nodes']} node(s) x {params['ntasks_per_node']} task(s), "
          f"{opts['num_gpus']} GPU(s) per node, {params['time']} min, {partition_phrase(params)})\n"
          f"Logs: {job.paths.stdout} (stdout) and {job.paths.stderr} (stderr), one pair per task\n"
          f"Code: {plan.code_snapshot or CODE_ROOT + ' (not a git checkout: the job runs the folder as it is then)'}")
    return 0
