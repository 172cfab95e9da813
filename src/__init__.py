"""Code shared by Suave and Daino: data, models, clustering, losses, engine, distributed, checkpoints,
optimisers and schedules, logging. Never imports from ``suave/`` or ``daino/``."""
