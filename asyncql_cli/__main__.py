"""`python -m asyncql_cli ...` is the `asyncql` command."""

from asyncql_cli.cli.main import entry

if __name__ == "__main__":
    entry()
