"""The launcher behind ``job_launcher.py``: recipes and flags (``script_file``), experiment records (``records``),
Slurm through submitit (``slurm``) and the launch itself (``launcher``). It sits above the methods: it imports
their parsers (``suave.args``, ``daino.args``, ``src.downstream.args``); nothing in ``src/`` imports it. Its
refusals are ``src.errors.UserError``: one line that says what to fix."""
