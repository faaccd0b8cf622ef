"""The roles of the child processes: actor, learner, actor-learner, evaluator, and the one
child entry (`child.run_child`) they all run under; plus the learner's device handling.

A worker is built from typed settings and shared components the wiring hands it; it never
reads the config. May import: `asyncql_cli.evaluation`, `asyncql_cli.envs`, `asyncql_cli.algo`,
`asyncql_cli.replay`, `asyncql_cli.checkpoint`, `asyncql_cli.config` (section types), `asyncql_cli.shm`.
"""
