"""Evaluation: greedy episodes (one generator, used by evaluation and video), evaluation
results, videos, and best-policy selection (evaluate, confirm on fresh episodes, keep best.pt).

A library: the evaluator process (`workers.evaluator`), `parallelism=serial` and `asyncql eval`
run it. May import: `asyncql_cli.envs`, `asyncql_cli.algo`, `asyncql_cli.checkpoint`,
`asyncql_cli.config`, `asyncql_cli.errors`.
"""
