"""Supervised backends (local processes, Docker containers): a detached supervisor process per
job on this machine, its state in a job directory, and a worker-runtime seam saying how one
worker runs.

- :mod:`.backend` — :class:`SupervisedBackend`, the base of the local and Docker backends;
- :mod:`.supervisor` — the supervisor process
  (``python -m juliarun.backends.supervised.supervisor``);
- :mod:`.jobdir` — the job directory both sides read and write;
- :mod:`.runtime` — the worker-runtime seam (local process groups, Docker containers).
"""
