"""The forkserver's first preload module: it names the forkserver `asyncql:forkserver` in ps."""

from asyncql_cli.workers.child import set_process_title

set_process_title("asyncql:forkserver")
