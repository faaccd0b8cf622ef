"""asyncql's `hydra/launcher=ray` (Hydra discovers launchers in the hydra_plugins namespace)."""
