"""`parallelism=ray`: the same training across the nodes of a Ray cluster.

The driver (`asyncql train`, the main process) keeps Hydra, TensorBoard, the evaluator process and
the run directory. One node agent per node (a Ray actor pinned to it) runs that node's local
machinery with the same parts as `parallelism=local`: a process group of actor processes from its
own forkserver, local counters and a parameter store. The learner's node agent also runs the
learner processes and holds the replay; its actors write into it as they do locally. Actors on the
other nodes write into an outbox of the same layout; their agent ships committed rows, with their
initial priorities, to the learner's agent, which is the only writer of those actors' replay
segments, so the lock-free protocol is unchanged. Weights go out from the learner's node once per
`weight_broadcast_seconds` as one object (`ray.put`), newest wins; global counters go to every
agent on each tick. Nothing is written on the nodes but a staging directory each agent removes:
checkpoints and replay snapshots travel to the driver, which writes them.

Ray is optional (`pip install 'asyncql[ray]'`): these modules are imported only for
`parallelism=ray`. May import: everything of `asyncql_cli.runtime` below `run`, and the lower layers.
"""
