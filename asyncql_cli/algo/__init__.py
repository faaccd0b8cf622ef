"""The learning algorithm, free of processes and shared-memory protocols: TD targets and losses,
Q-networks, the optimizer, gradient steps, n-step accumulation, exploration schedules, and the
Hogwild model (network, target and optimizer state in shared memory).

May import: `asyncql_cli.errors`, `asyncql_cli.compat`; torch and numpy.
"""
