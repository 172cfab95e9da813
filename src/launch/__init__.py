"""Launching runs: the pieces behind ``job_launcher.py`` (script files, experiment records, local torchrun,
Slurm through submitit). Never imports the entry points at import time: they are loaded on demand."""
