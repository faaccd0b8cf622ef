"""The run: wiring (config -> settings and shared memory), the process group (start, restart,
heartbeat, kill, join), the forkserver, the serial runner, the run loop, resume, and what the
user sees (TensorBoard, progress, summary).

Reads the config only in `wiring`; the loop decides when to stop, the workers do the work.
May import: `asyncql_cli.workers` and every layer below.
"""
