"""Replay: shared storages (n-step transitions; single frames for Atari) and their samplers
(uniform; prioritized, whose sum tree belongs to the learner).

Storages are built on `shm.rings` (one segment per writer, lock-free commits); samplers read
only rows that are committed and cannot be overwritten while they are read.

May import: `asyncql_cli.shm`, `asyncql_cli.errors`, `asyncql_cli.compat`.
"""
