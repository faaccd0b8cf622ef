"""Environments: construction for every process (plain, flattened, Atari) and the one-time
inspection that turns an env asyncql cannot train on into a one-line BadInput.

May import: `asyncql_cli.algo` (the networks' shape check), `asyncql_cli.config`,
`asyncql_cli.errors`; gymnasium, ale-py.
"""
