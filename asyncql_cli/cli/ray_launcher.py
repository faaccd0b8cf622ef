"""`asyncql train -m ... hydra/launcher=ray`: each sweep job as a Ray task, its files brought back.

Each job becomes a Ray task reserving what the job runs (`num_cpus`: its actors, learners and
evaluator; one for `parallelism=serial`; `num_gpus`: 1 when its learner asks for CUDA), on any
node of the cluster at `hydra.launcher.address` (`local` starts Ray here, on 127.0.0.1 only).
The task runs the job with Hydra's own `run_job` in a temporary directory of its node, then
returns the job's directory as a tar archive; the launcher unpacks it into the sweep directory on
this machine and removes nothing else, so run directories, TensorBoard files and
`sweep_summary.csv` end up where the sweep was launched, with no shared filesystem assumed.
Job names (`hydra.sweep.subdir`) are resolved here, where the sweep's swept keys are known.
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from asyncql_cli.cli.common import INTERRUPT_MARKER
from asyncql_cli.cli.hydra_app import register_resolvers
from asyncql_cli.cli.sweep_budget import processes_per_job

log = logging.getLogger("asyncql")

TARGET = "hydra_plugins.asyncql_ray_launcher.ray_launcher.RayLauncher"  # Hydra takes plugins from there


@dataclass
class RayLauncherConf:
    _target_: str = TARGET
    address: str = "local"  # local (Ray on this machine, 127.0.0.1 only) | auto | host:port of a cluster's head
    object_store_mb: int = 200  # object store of the Ray this launcher starts (address=local), MiB


def register() -> None:
    ConfigStore.instance().store(group="hydra/launcher", name="ray", node=RayLauncherConf, provider="asyncql")


def _archive(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def run_job_here(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
                 singletons: dict[Any, Any]) -> tuple[JobReturn, bytes]:
    """A Ray task: one sweep job in a temporary directory of this node, and that directory."""
    setup_globals()
    Singleton.set_state(singletons)
    register_resolvers()
    workspace = Path(tempfile.mkdtemp(prefix="asyncql-job-"))
    try:
        with open_dict(config):
            config.hydra.sweep.dir = str(workspace)
        ret = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        ret.working_dir = None  # a path on another machine means nothing there
        return ret, _archive(workspace / str(config.hydra.sweep.subdir))
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


class RayJobLauncher(Launcher):
    def __init__(self, address: str = "local", object_store_mb: int = 200) -> None:
        self.address, self.object_store_mb = address, object_store_mb
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _resources(self, job_config: DictConfig) -> dict[str, float]:
        device = str(OmegaConf.select(job_config, "parallelism.learner_device", default="cpu"))
        return {"num_cpus": processes_per_job(job_config), "num_gpus": 1.0 if device.startswith("cuda") else 0.0}

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from asyncql_cli.runtime.cluster.connect import connect  # Ray is optional: only with this launcher

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        import ray

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        connection = connect(self.address, self.object_store_mb)
        try:
            run_remote = ray.remote(run_job_here)
            jobs, refs = [], []
            for offset, overrides in enumerate(job_overrides):
                if (sweep_dir / INTERRUPT_MARKER).exists():
                    break  # the sweep was interrupted: jobs not started yet are skipped
                idx = initial_job_idx + offset
                job_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(job_config):
                    job_config.hydra.job.id = idx
                    job_config.hydra.job.num = idx
                    job_config.hydra.sweep.subdir = str(OmegaConf.select(job_config, "hydra.sweep.subdir"))
                resources = self._resources(job_config)
                log.info("#%d on Ray (%g CPU, %g GPU): %s", idx, resources["num_cpus"], resources["num_gpus"],
                         " ".join(filter_overrides(overrides)))
                jobs.append(job_config)
                refs.append(run_remote.options(**resources).remote(
                    self.hydra_context, self.task_function, job_config, Singleton.get_state()))
            returns = []
            for job_config, ref in zip(jobs, refs):
                ret, archive = ray.get(ref)
                target = sweep_dir / str(job_config.hydra.sweep.subdir)
                target.mkdir(parents=True, exist_ok=True)
                with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                    tar.extractall(target, filter="data")
                ret.working_dir = str(target)
                returns.append(ret)
            return returns
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        finally:
            connection.close()

