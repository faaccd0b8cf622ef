"""`hydra/launcher=ray`: sweep jobs as Ray tasks, their files brought back (asyncql_cli/cli/ray_launcher.py)."""

from asyncql_cli.cli.ray_launcher import RayJobLauncher, register

register()


class RayLauncher(RayJobLauncher):
    """Defined here because Hydra instantiates only plugin classes of the hydra_plugins package."""
