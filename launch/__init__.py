"""The launcher behind ``job_launcher.py``, above the methods (it imports their parsers; nothing in ``src/`` imports
it): recipes and flags (``script_file``), the experiment's records (``records``), the launch (``launcher``)."""
