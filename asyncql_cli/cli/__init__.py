"""The `asyncql` command: the entry point (`main`), the Hydra app, the train task, the sweep's
job side and its callback side, `asyncql eval`. (`asyncql bench` is `asyncql_cli.cli.bench`.)

The top layer: may import every other one; nothing imports it.
"""
