"""The config: the schema Hydra composes `conf/` into, the unknown-key check, validation, and
`load_config`, which makes the typed `Config` that the wiring (and only the wiring) reads.

May import: `asyncql_cli.errors`; hydra and omegaconf.
"""
