"""Shared-memory primitives: segmented rings, the parameter store, counters, memory ordering.

Allocated by the main process before any child starts; every mutable word has exactly one
writer. Every cross-process publish (a release) and observe (an acquire) goes through
`shm.sync`, the one module that decides memory ordering.

May import: `asyncql_cli.compat`, `asyncql_cli.errors`; torch and numpy.
"""
