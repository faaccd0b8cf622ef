"""asyncql: asynchronous deep Q-learning from the command line.

Layers, top to bottom (an import may only point down; `make lint` checks it with import-linter):

    cli          the `asyncql` command: Hydra app, train task, sweeps, eval, bench
    runtime      wiring (config -> components), process group, forkserver, run loop, reporting
    workers      the processes' roles: actor, learner, actor-learner, evaluator, child entry
    evaluation   greedy episodes, evaluation, video, best-policy selection
    envs         env construction and checks (classic control, toy text, Atari)
    algo | replay | config | checkpoint
                 losses, networks, optimizer, n-step, exploration | storages and samplers |
                 schema and validation | weights-only checkpoints
    shm          shared-memory primitives: rings, parameter store, counters, memory ordering
    errors | compat
                 BadInput and exit codes | private APIs of torch and Python behind public fallbacks
"""
