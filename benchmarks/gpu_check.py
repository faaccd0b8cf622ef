"""`make gpu-check`: the learner's CUDA path checked on a GPU machine in at most 9 minutes, every
result in one JSON file.

    python benchmarks/gpu_check.py [--json benchmarks/results/gpu_check.json] [--quick]
                                   [--only STEP,...] [--budget-seconds 540]

Each step runs in its own process (a hung kernel or a crashed run is killed with its process
group and recorded; the next step starts clean) with its own timeout, and the whole run keeps to
`--budget-seconds`: a step that would start past it is skipped, and the Pong run gets what is left
(at most 4 minutes). The JSON is rewritten after every step, so a run cut short keeps what it did.

    versions         torch, CUDA, cuDNN, driver, GPUs, Python packages, CPU
    autocast_probe   a no-grad forward then a graded one in one autocast block (pytorch#105211):
                     torch's default autocast (recorded: does this torch have the bug?) and the
                     learner's (must give every parameter its float32 gradient); the head's dtype
    cuda_tests       pytest -m cuda (the tests that skip without a GPU)
    matrix           (MLP, Nature CNN with dueling, MLP with LayerNorm) x (amp off, bf16, fp16) x
                     (uniform, prioritized): 30 Learner.update calls on CUDA; every parameter got a
                     gradient and changed; amp off against the same 30 updates on CPU within 1e-4
                     (TF32 off); bf16/fp16 against CUDA float32 loosely (MIXED_TOLERANCE)
    round_trips      weights published from CUDA; checkpoints and optimizer state CUDA -> CPU ->
                     CUDA, fp16's GradScaler state too; an update after each load
    compile          algo.compile=true (MLP bf16 prioritized, Nature CNN bf16) with recompiles
                     forbidden once the learner has started
    learner_vs_bare  `asyncql bench`'s Learner.update against a bare loop: MLP and Nature CNN, amp
                     off and bf16
    actor_scaling    asyncql bench --env Pong --only actor --actors 1,2,4,8,14
    cartpole_e2e     asyncql train on CUDA: one learner, two independent learners, a resume
    pong             asyncql train env=Pong on CUDA for at most 4 minutes: eval return against
                     wall-clock

Without CUDA the script says so on stdout and in the JSON (`cuda.available: false`), runs what
means something on a CPU (versions, the probe and the matrix with CPU bf16 against CPU float32,
and compile on CPU without --quick) and skips the rest. `--quick` shortens every step that runs
(for the test that runs this script on a CPU machine). Exit status: 0 unless a step that ran
failed or timed out; CUDA being absent is not a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

# asyncql_cli's modules are imported inside the steps: the parent only schedules steps, and each
# step's process loads what it uses
REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "benchmarks" / "results" / "gpu_check.json"
BUDGET_SECONDS = 540.0  # the whole check: 9 minutes
MIN_STEP_SECONDS = 10.0  # a step is not started with less time than this left
KILL_GRACE_SECONDS = 5.0  # after SIGTERM to a timed-out step's process group, before SIGKILL
PONG_MAX_SECONDS = 240.0  # the Pong run: at most 4 minutes from launch to exit
PONG_SHUTDOWN_SECONDS = 35.0  # of those, kept for start-up, the last checkpoint and shutdown
PONG_MIN_SECONDS = 90.0  # with less of the budget left the Pong run is skipped
MATRIX_UPDATES = 30
CPU_CNN_UPDATES = 3  # without CUDA: bf16 convolutions on a CPU without bf16 units take ~0.8 s an update
MATRIX_LR = 1e-4  # Adam moves a weight by about lr per step, whatever the gradient's rounding
# Against a reference run from the same weights: the loss of one fixed batch before training
# (relative), and, when both runs drew the same batches, the weights after the updates. CUDA
# float32 (TF32 off) against CPU float32: weights within 1e-4 (max |difference|). bf16/fp16
# against CUDA float32: the weight change (relative L2), loosely: Adam's steps follow each
# gradient element's sign, so elements within rounding of 0 move differently. Calibrated on CPU
# with these cases (benchmarks/RESULTS.md): loss within 1e-4, weight change within 0.11 (bf16)
# and 0.04 (fp16); the tolerances leave room for CUDA's other kernels.
TOLERANCE = {"off": {"loss": 1e-5, "weights": 1e-4},
             "bf16": {"loss": 1e-2, "weight_change": 0.3},
             "fp16": {"loss": 5e-3, "weight_change": 0.15}}
BF16_GRADIENT_ERROR = 0.15  # relative L2 error of a gradient in the probe (tests/test_gpu_path.py)


@dataclass
class Context:
    cuda: bool
    quick: bool
    workdir: Path
    timeout: float  # this step's seconds
    out_file: Optional[Path] = None  # where the step process reports to the parent

    def progress(self, partial: dict[str, Any]) -> None:
        """What a step has so far: the parent keeps it if the step then runs out of time."""
        if self.out_file is not None:
            write_json(self.out_file, {"partial": partial})


@dataclass(frozen=True)
class Step:
    name: str
    timeout: float  # seconds, including the step process's own start-up
    run: Callable[[Context], dict[str, Any]]
    without_cuda: Optional[str]  # None: runs without CUDA too; else why it is skipped there
    in_quick: bool = True  # runs with --quick
    min_seconds: float = MIN_STEP_SECONDS  # not started with less of the budget left


# ------------------------------------------------------------------------------ helpers
def cuda_device() -> torch.device:
    return torch.device("cuda", 0)


def exact_float32() -> None:
    """No TF32 (10-bit mantissa) in float32 matmuls and convolutions: CUDA float32 is then
    comparable with CPU float32. The legacy flags: torch 2.13 raises when they are read after
    the newer `fp32_precision` settings were used, so only one of the two APIs is touched."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def run_command(cmd: list[str], timeout: float, log: Path, cwd: Path = REPO) -> tuple[int, str]:
    """Run `cmd` (its output into `log`); return its exit status and the output's last 3,000
    characters. The step's process group is killed by the parent on a timeout."""
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    return proc.returncode, log.read_text(errors="replace")[-3000:]


def asyncql(*args: str) -> list[str]:
    return [sys.executable, "-m", "asyncql_cli", *args]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all (a temporary file renamed): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in module.parameters()])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| (L2)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ------------------------------------------------------------------------------ versions
def step_versions(ctx: Context) -> dict[str, Any]:
    import gymnasium

    from asyncql_cli.cli.bench.report import machine_info

    info: dict[str, Any] = machine_info(cuda_device() if ctx.cuda else torch.device("cpu"), 1)
    info.update(torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if ctx.cuda else None,
                gymnasium=gymnasium.__version__, numpy=__import__("numpy").__version__)
    for package in ("ale_py", "triton"):
        try:
            info[package] = __import__(package).__version__
        except Exception as exc:  # noqa: BLE001 - absent or broken: say which
            info[package] = f"unavailable ({type(exc).__name__})"
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    info["git_commit"] = git.stdout.strip() or None
    if ctx.cuda:
        info["gpus"] = [{"index": i, "name": torch.cuda.get_device_name(i),
                         "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                         "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                         "multiprocessors": torch.cuda.get_device_properties(i).multi_processor_count}
                        for i in range(torch.cuda.device_count())]
        info["driver"] = nvidia_smi()
    return info


def nvidia_smi() -> Any:
    if shutil.which("nvidia-smi") is None:
        return "unknown (no nvidia-smi)"
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] or out.stderr.strip()


# ------------------------------------------------------------------------------ autocast probe
def probe_gradients(device: torch.device, dtype: torch.dtype, cache_enabled: Optional[bool]) -> dict[str, Any]:
    """No-grad forward, then a graded forward, in one autocast block (cache_enabled None: the
    learner's autocast); gradients against float32's."""
    from asyncql_cli.algo.networks import build_network
    from asyncql_cli.config.schema import NetworkConfig
    from asyncql_cli.workers.device import autocast

    torch.manual_seed(0)
    net = build_network(NetworkConfig(hidden=[64, 64], dueling=True, layer_norm=True), (6,), 3).to(device)
    obs = torch.randn(32, 6, device=device)
    net(obs).float().square().mean().backward()
    reference = [p.grad.clone() for p in net.parameters()]
    for param in net.parameters():
        param.grad = None
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    context = (autocast(device, amp) if cache_enabled is None
               else torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled))
    result: dict[str, Any] = {}
    try:
        with context:
            with torch.no_grad():
                net(obs)
            q = net(obs)
            result["q_dtype"] = str(q.dtype)
            q.float().square().mean().backward()
    except Exception as exc:  # noqa: BLE001 - the bug may raise: record it
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    names = [name for name, _ in net.named_parameters()]
    grads = [p.grad for p in net.parameters()]
    result["without_gradient"] = [n for n, g in zip(names, grads) if g is None]
    errors = {n: relative(g.float(), r) for n, g, r in zip(names, grads, reference) if g is not None}
    result["max_relative_error"] = max(errors.values(), default=None)
    return result


def step_autocast_probe(ctx: Context) -> dict[str, Any]:
    cases = [(torch.device("cpu"), torch.bfloat16)]
    if ctx.cuda:
        cases += [(cuda_device(), torch.bfloat16), (cuda_device(), torch.float16)]
    out: dict[str, Any] = {"failures": []}
    for device, dtype in cases:
        key = f"{device.type}-{str(dtype).replace('torch.', '')}"
        ours = probe_gradients(device, dtype, None)
        out[key] = {"torch_default_cache_enabled": probe_gradients(device, dtype, True), "asyncql_autocast": ours}
        if ours.get("error") or ours["without_gradient"] or ours["max_relative_error"] > BF16_GRADIENT_ERROR:
            out["failures"].append(f"{key}: the learner's autocast: {ours}")
        if ours.get("q_dtype") != "torch.float32":
            out["failures"].append(f"{key}: Q-values in {ours.get('q_dtype')}, not float32")
    return out


# ------------------------------------------------------------------------------ CUDA tests
def step_cuda_tests(ctx: Context) -> dict[str, Any]:
    rc, tail = run_command([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
                           ctx.timeout - 10, ctx.workdir / "pytest.log")
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}
    failures = [] if rc == 0 and counts.get("passed", 0) > 0 else [f"pytest -m cuda exited {rc}"]
    return {"exit_code": rc, "counts": counts, "output_tail": tail, "failures": failures}


# ------------------------------------------------------------------------------ learners in-process
NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {  # name: (bench --env, network config changes)
    "mlp": ("CartPole-v1", {"hidden": [256, 256], "dueling": False, "layer_norm": False}),
    "nature_cnn_dueling": ("Pong", {"hidden": [512], "dueling": True, "layer_norm": False}),
    "mlp_layer_norm": ("CartPole-v1", {"hidden": [256, 256], "dueling": False, "layer_norm": True}),
}


@dataclass
class Replay:
    """A filled replay and the settings of a learner on it (the wiring training uses)."""

    settings: Any
    storage: Any


def filled_replay(network: str, capacity: int, seed: int = 0) -> Replay:
    from asyncql_cli.cli.bench.learning import filled
    from asyncql_cli.cli.bench.options import compose_config, parse_args

    env, changes = NETWORKS[network]
    args = parse_args(["--env", env, "--device", "cpu", "--amp", "off", "--no-compile", "--actors", "1",
                       "--capacity", str(capacity)])
    config, spec = compose_config(args)
    config = dataclasses.replace(config, network=dataclasses.replace(config.network, **changes))
    torch.manual_seed(seed)  # the rows are drawn from torch's global generator
    wiring, shared = filled(config, spec)
    return Replay(wiring.learner_settings(0), shared.storage)


def make_learner(replay: Replay, device: str, amp: str = "off", buffer: str = "uniform", **algo: Any) -> Any:
    from asyncql_cli.algo.networks import build_network, num_parameters
    from asyncql_cli.shm.counters import Counters
    from asyncql_cli.shm.params import ParameterStore
    from asyncql_cli.workers.learner import Learner

    s = replay.settings
    settings = dataclasses.replace(
        s, device=device, buffer=dataclasses.replace(s.buffer, name=buffer),
        algo=dataclasses.replace(s.algo, **{"amp": amp, "compile": False, **algo}))
    store = ParameterStore(num_parameters(build_network(s.network, s.env.obs_shape, s.env.num_actions)))
    return Learner(settings, replay.storage, store, Counters(num_actors=1, num_updaters=1), queue.SimpleQueue())


def train(learner: Any, updates: int) -> dict[str, Any]:
    """`updates` successful Learner.update calls (fp16 may skip some; at most 3x the calls)."""
    losses: list[float] = []
    drawn: list[torch.Tensor] = []
    add, sample = learner.stats_window.add, learner.sampler.sample

    def recording(*args: Any) -> Any:
        batch = sample(*args)
        if batch is not None:
            drawn.append(batch.index.clone())
        return batch

    learner.stats_window.add = lambda loss, *rest: (losses.append(loss), add(loss, *rest))
    learner.sampler.sample = recording
    calls = 0
    while learner.updates < updates and calls < 3 * updates:
        learner.update()
        calls += 1
    if learner.device.type == "cuda":
        torch.cuda.synchronize()
    learner.stats_window.add, learner.sampler.sample = add, sample
    return {"updates": learner.updates, "skipped": learner.skipped, "losses": losses, "drawn": drawn}


def gradient_problems(learner: Any, initial: list[torch.Tensor]) -> list[str]:
    problems = []
    for (name, param), before in zip(learner.q_net.named_parameters(), initial):
        if param.grad is None:
            problems.append(f"{name}: no gradient")
        elif not bool(torch.isfinite(param.grad).all()):
            problems.append(f"{name}: non-finite gradient")
        if torch.equal(param.detach().cpu(), before):
            problems.append(f"{name}: unchanged")
    return problems


def fixed_batch_loss(learner: Any, batch: Any) -> float:
    """The learner's TD loss on `batch` with its current weights, device and amp."""
    from asyncql_cli.algo.losses import td_loss
    from asyncql_cli.workers.device import autocast

    b, a = batch.to(learner.device), learner.algo
    with torch.no_grad(), autocast(learner.device, a.amp):
        out = td_loss(learner.q_net, learner.target_net, b.obs, b.action, b.reward, b.next_obs, b.discount,
                      a.double, a.loss, a.huber_delta, weight=b.weight)
    return float(out.loss)


def run_case(replay: Replay, device: str, amp: str, buffer: str, updates: int) -> tuple[dict[str, Any], Any]:
    from asyncql_cli.replay.uniform import UniformSampler

    learner = make_learner(replay, device, amp, buffer, lr=MATRIX_LR)
    initial = [p.detach().cpu().clone() for p in learner.q_net.parameters()]
    record: dict[str, Any] = {"initial_loss": fixed_batch_loss(
        learner, UniformSampler(replay.storage, seed=123).sample(replay.settings.algo.batch_size))}
    start = time.perf_counter()
    record.update(train(learner, updates))
    record["seconds"] = round(time.perf_counter() - start, 3)
    record["problems"] = gradient_problems(learner, initial)
    if learner.updates < updates:
        record["problems"].append(f"{learner.updates} of {updates} updates went through ({learner.skipped} skipped)")
    record["initial"] = torch.cat([t.flatten() for t in initial])
    return record, learner


def compare(case: dict[str, Any], learner: Any, reference: dict[str, Any], ref_learner: Any,
            amp: str, against: str) -> dict[str, Any]:
    """Against a run from the same weights (TOLERANCE): the loss of one fixed batch, and the
    weights after the updates when both runs drew the same batches (a prioritized run draws by
    its TD errors, which differ in the last bits, and an fp16 step the GradScaler skips uses one
    batch more: then the weights are shown, not judged)."""
    tolerance = TOLERANCE[amp]
    loss = abs(case["initial_loss"] - reference["initial_loss"]) / max(abs(reference["initial_loss"]), 1e-12)
    same = len(case["drawn"]) == len(reference["drawn"]) and all(
        torch.equal(a, b) for a, b in zip(case["drawn"], reference["drawn"]))
    mine, theirs = flat(learner.q_net), flat(ref_learner.q_net)
    out: dict[str, Any] = {"against": against, "tolerance": tolerance, "same_batches": same,
                           "initial_loss_relative_difference": loss}
    if amp == "off":
        weights = float((mine - theirs).abs().max())
        out["max_abs_weight_difference"] = weights
        judged = weights <= tolerance["weights"]
    else:
        change = relative(mine - case["initial"], theirs - reference["initial"])
        out["weight_change_relative_difference"] = change
        judged = change <= tolerance["weight_change"]
    out["ok"] = loss <= tolerance["loss"] and (judged or not same)
    if not same:
        out["note"] = "the runs drew different batches: weights shown, not judged"
    return out


def step_matrix(ctx: Context) -> dict[str, Any]:
    if ctx.cuda:
        exact_float32()
    amps = ["off", "bf16", "fp16"] if ctx.cuda else ["off", "bf16"]
    device = "cuda" if ctx.cuda else "cpu"
    cases: list[dict[str, Any]] = []
    failures: list[str] = []
    for network in NETWORKS:
        updates = 3 if ctx.quick else MATRIX_UPDATES if ctx.cuda or "cnn" not in network else CPU_CNN_UPDATES
        replay = filled_replay(network, capacity=4096)
        for buffer in ("uniform", "prioritized"):
            cpu_run = run_case(replay, "cpu", "off", buffer, updates) if ctx.cuda else None
            float32 = None
            for amp in amps:
                name = f"{network}/{amp}/{buffer}"
                try:
                    record, learner = run_case(replay, device, amp, buffer, updates)
                    if amp == "off" and cpu_run is not None:
                        record["comparison"] = compare(record, learner, *cpu_run, amp, "cpu float32")
                    elif amp != "off" and float32 is not None:
                        record["comparison"] = compare(record, learner, *float32, amp, f"{device} float32")
                    if amp == "off":
                        float32 = (record, learner)
                except Exception as exc:  # noqa: BLE001 - one case failing does not stop the others
                    record = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
                if record.get("error") or record.get("problems") or not record.get("comparison", {}).get("ok", True):
                    failures.append(name)
                shown = {key: value for key, value in record.items() if key not in ("initial", "drawn")}
                shown["losses"] = [round(x, 6) for x in record.get("losses", [])]
                cases.append({"case": name, "updates_asked": updates, **shown})
                ctx.progress({"cases": cases, "failures": failures})
    tf32 = ({"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
            if ctx.cuda else None)
    return {"lr": MATRIX_LR, "device": device, "tf32": tf32, "cases": cases, "failures": failures,
            "note": None if ctx.cuda else "CUDA absent: CPU bf16 against CPU float32 only; no CUDA comparison"}


# ------------------------------------------------------------------------------ round trips
def states_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def tensors(state: Any) -> list[torch.Tensor]:
        if isinstance(state, torch.Tensor):
            return [state.detach().cpu()]
        if isinstance(state, dict):
            return [t for key in sorted(state, key=str) for t in tensors(state[key])]
        if isinstance(state, (list, tuple)):
            return [t for item in state for t in tensors(item)]
        return [torch.tensor(float(state))] if isinstance(state, (int, float)) else []

    ta, tb = tensors(a), tensors(b)
    return len(ta) == len(tb) and all(x.shape == y.shape and torch.equal(x.float(), y.float()) for x, y in zip(ta, tb))


def step_round_trips(ctx: Context) -> dict[str, Any]:
    from asyncql_cli.algo.networks import build_network
    from asyncql_cli.checkpoint import load_checkpoint, save_checkpoint

    exact_float32()
    out: dict[str, Any] = {"failures": []}
    replay = filled_replay("mlp", capacity=4096)
    gpu = make_learner(replay, "cuda", buffer="prioritized")
    train(gpu, 3)
    gpu.publish()
    gpu.publisher.flush()
    reader = build_network(replay.settings.network, replay.settings.env.obs_shape, replay.settings.env.num_actions)
    published = gpu.params.read_into(reader, timeout=1.0)
    out["publish"] = {"pinned": all(b.is_pinned() for b in gpu.publisher.pinned), "published_updates": published,
                      "equal": torch.equal(flat(reader), flat(gpu.q_net)), "version": gpu.params.version}
    if not (out["publish"]["pinned"] and published == 3 and out["publish"]["equal"] and gpu.params.version % 2 == 0):
        out["failures"].append(f"publish: {out['publish']}")
    for network, amp in (("mlp", "off"), ("nature_cnn_dueling", "bf16"), ("nature_cnn_dueling", "fp16")):
        key = f"checkpoint/{network}/{amp}"
        try:
            out[key] = checkpoint_round_trip(replay if network == "mlp" else filled_replay(network, 2048), amp,
                                             ctx.workdir / "rt.pt", save_checkpoint, load_checkpoint)
        except Exception as exc:  # noqa: BLE001 - recorded, the next round trip still runs
            out[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        if out[key].get("error") or not all(v for k, v in out[key].items() if k.endswith("_equal")):
            out["failures"].append(key)
    return out


def checkpoint_round_trip(replay: Replay, amp: str, path: Path, save: Any, load: Any) -> dict[str, Any]:
    """CUDA learner -> file -> CPU learner -> file -> CUDA learner: weights, target, optimizer and
    GradScaler state equal at each hop, and each loaded learner can update. (fp16 on a CPU learner:
    config validation refuses it, the Learner runs it; here it carries fp16's state across.)"""
    gpu = make_learner(replay, "cuda", amp, "prioritized")
    train(gpu, 4)
    save(path, gpu.checkpoint_state())
    cpu = make_learner(replay, "cpu", amp, "prioritized")
    cpu.load_state(load(path))
    result = {"to_cpu_weights_equal": torch.equal(flat(cpu.q_net), flat(gpu.q_net)),
              "to_cpu_target_equal": torch.equal(flat(cpu.target_net), flat(gpu.target_net)),
              "to_cpu_optimizer_equal": states_equal(cpu.optimizer.state_dict()["state"],
                                                     gpu.optimizer.state_dict()["state"])}
    save(path, cpu.checkpoint_state())
    back = make_learner(replay, "cuda", amp, "prioritized")
    back.load_state(load(path))
    result.update(back_weights_equal=torch.equal(flat(back.q_net), flat(gpu.q_net)),
                  back_optimizer_equal=states_equal(back.optimizer.state_dict()["state"],
                                                    gpu.optimizer.state_dict()["state"]))
    if amp == "fp16":
        result["back_grad_scaler_equal"] = back.scaler.state_dict() == gpu.scaler.state_dict()
    result["updates_after_load"] = {"cpu": train(cpu, cpu.updates + 1)["updates"],
                                    "cuda": train(back, back.updates + 1)["updates"]}
    return result


# ------------------------------------------------------------------------------ compile
@contextlib.contextmanager
def recompiles_forbidden() -> Iterator[None]:
    """Any recompile raises (torch.compiler.set_stance, public since torch 2.6)."""
    stance = getattr(torch.compiler, "set_stance", None)
    if stance is not None:
        with stance("fail_on_recompile"):
            yield
        return
    from torch._dynamo import config as dynamo_config

    with dynamo_config.patch(error_on_recompile=True):
        yield


def step_compile(ctx: Context) -> dict[str, Any]:
    if not ctx.cuda and shutil.which("g++") is None:
        return {"skipped": "torch.compile on CPU needs a C++ compiler (g++)", "failures": []}
    cases = ([("mlp", "bf16", "prioritized"), ("nature_cnn_dueling", "bf16", "uniform")] if ctx.cuda
             else [("mlp", "bf16", "uniform")])
    # compile workers: the learner bounds them by its torch threads (1); here the compile time is not
    # what is checked, so the step's process may use half the cores (a value already set stands)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, len(os.sched_getaffinity(0)) // 2)))
    out: dict[str, Any] = {"device": "cuda" if ctx.cuda else "cpu", "failures": [],
                           "compile_threads": os.environ["TORCHINDUCTOR_COMPILE_THREADS"]}
    for network, amp, buffer in cases:
        key = f"{network}/{amp}/{buffer}"
        try:
            replay = filled_replay(network, 2048)
            start = time.perf_counter()
            learner = make_learner(replay, "cuda" if ctx.cuda else "cpu", amp, buffer, compile=True)
            compiled = time.perf_counter() - start
            with recompiles_forbidden():
                record = train(learner, 10)
            out[key] = {"compile_seconds": round(compiled, 1), "updates": record["updates"], "recompiles": 0}
        except Exception as exc:  # noqa: BLE001 - a recompile raises here
            out[key] = {"error": f"{type(exc).__name__}: {str(exc)[:1000]}"}
            out["failures"].append(key)
        ctx.progress(out)
    return out


# ------------------------------------------------------------------------------ throughput
def step_learner_vs_bare(ctx: Context) -> dict[str, Any]:
    from asyncql_cli.cli.bench.learning import bench_learner
    from asyncql_cli.cli.bench.measure import add_ratios
    from asyncql_cli.cli.bench.options import compose_config, parse_args
    from asyncql_cli.workers.device import torch_threads

    seconds = 0.5 if ctx.quick else 2.0
    out: dict[str, Any] = {"seconds_each": seconds, "failures": []}
    for env in ("CartPole-v1", "Pong"):
        for amp in ("off", "bf16"):
            key = f"{env}/{amp}"
            try:
                config, spec = compose_config(parse_args(["--env", env, "--only", "learner", "--device", "cuda",
                                                          "--amp", amp, "--capacity", "20000"]))
                with torch_threads(config.parallelism.torch_threads):
                    results = bench_learner(config, spec, seconds)
                add_ratios(results)
                out[key] = [dataclasses.asdict(r) for r in results]
            except Exception as exc:  # noqa: BLE001
                out[key] = {"error": f"{type(exc).__name__}: {exc}"}
                out["failures"].append(key)
    return out


def step_actor_scaling(ctx: Context) -> dict[str, Any]:
    actors = "1,2" if ctx.quick else "1,2,4,8,14"
    path = ctx.workdir / "actors.json"
    rc, tail = run_command(asyncql("bench", "--env", "Pong", "--only", "actor", "--actors", actors,
                                   "--seconds", "1" if ctx.quick else "3", "--capacity", "100000", "--json", str(path)),
                           ctx.timeout - 10, ctx.workdir / "actors.log")
    if rc != 0 or not path.is_file():
        return {"exit_code": rc, "output_tail": tail, "failures": [f"asyncql bench exited {rc}"]}
    return {**json.loads(path.read_text()), "failures": []}


# ------------------------------------------------------------------------------ end to end
def train_run(ctx: Context, name: str, overrides: list[str], timeout: float) -> dict[str, Any]:
    """`asyncql train` into `ctx.workdir/name` (a resume continues that directory): its summary,
    the learners' devices from this run's part of train.log, and its eval curve."""
    run_dir, log_file = ctx.workdir / name, ctx.workdir / name / "train.log"
    logged_before = log_file.stat().st_size if log_file.is_file() else 0
    launch = time.time()
    rc, tail = run_command(asyncql("train", *overrides, "train.progress=plain", f"hydra.run.dir={run_dir}"),
                           timeout, ctx.workdir / f"{name}.out")
    out: dict[str, Any] = {"exit_code": rc, "launch_to_exit_seconds": round(time.time() - launch, 1),
                           "overrides": overrides}
    summary = run_dir / "summary.json"
    out["summary"] = json.loads(summary.read_text()) if summary.is_file() else None
    log = log_file.read_bytes()[logged_before:].decode(errors="replace") if log_file.is_file() else ""
    out["devices"] = re.findall(r"(learner-\d+ device: .*)", log)
    out["eval_curve"] = eval_curve(run_dir, launch)
    if rc != 0:
        out["output_tail"] = tail
    return out


def eval_curve(run_dir: Path, launch_epoch: float) -> list[list[float]]:
    """eval/mean_return from the run's TensorBoard events: [seconds since launch, env steps, return]."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        return [[round(e.wall_time - launch_epoch, 1), int(e.step), round(float(e.value), 2)]
                for e in events.Scalars("eval/mean_return") if e.wall_time >= launch_epoch]  # this run's
    except Exception:  # noqa: BLE001 - no events (a failed run): an empty curve
        return []


def run_problems(name: str, run: dict[str, Any], learners: int) -> list[str]:
    problems = []
    if run["exit_code"] != 0 or run["summary"] is None:
        problems.append(f"{name}: exit code {run['exit_code']}")
    elif run["summary"]["updates"] <= 0:
        problems.append(f"{name}: no learner update")
    if len([d for d in run["devices"] if "device: cuda:" in d]) != learners:
        problems.append(f"{name}: expected {learners} learner(s) on CUDA in train.log, got {run['devices']}")
    return problems


def step_cartpole_e2e(ctx: Context) -> dict[str, Any]:
    seconds = 10 if ctx.quick else 25
    base = ["env=CartPole-v1", "parallelism.learner_device=cuda", "train.stop_at_return=475",
            f"train.max_seconds={seconds}"]
    out: dict[str, Any] = {"one_learner": train_run(ctx, "one", base, seconds + 30)}
    ctx.progress(out)
    out["two_learners"] = train_run(ctx, "two", [*base, "parallelism.num_learners=2"], seconds + 30)
    ctx.progress(out)
    out["resume"] = train_run(ctx, "one", [f"resume={ctx.workdir / 'one'}", "train.stop_at_return=null",
                                           "train.max_seconds=10"], 40)
    failures = [*run_problems("one_learner", out["one_learner"], 1),
                *run_problems("two_learners", out["two_learners"], 2), *run_problems("resume", out["resume"], 1)]
    first, resumed = out["one_learner"]["summary"], out["resume"]["summary"]
    if first and resumed and not (resumed["generation"] == 1 and resumed["updates"] > first["updates"]):
        failures.append(f"resume: generation {resumed['generation']}, updates {resumed['updates']} after "
                        f"{first['updates']}")
    return {**out, "failures": failures}


def step_pong(ctx: Context) -> dict[str, Any]:
    seconds = 20 if ctx.quick else max(20, int(min(PONG_MAX_SECONDS, ctx.timeout) - PONG_SHUTDOWN_SECONDS))
    actors = max(2, min(14, (os.cpu_count() or 4) - 2))
    overrides = ["env=Pong", "parallelism.learner_device=cuda", f"parallelism.num_actors={actors}",
                 f"train.max_seconds={seconds}", "eval.interval_seconds=30", "eval.episodes=3",
                 "buffer.capacity=200000", *(["train.learning_starts=1000"] if ctx.quick else [])]
    run = train_run(ctx, "pong", overrides, ctx.timeout - 5)
    return {**run, "train_max_seconds": seconds, "actors": actors, "failures": run_problems("pong", run, 1)}


STEPS = [
    Step("versions", 30, step_versions, None),
    Step("autocast_probe", 45, step_autocast_probe, None),
    Step("cuda_tests", 90, step_cuda_tests, "the cuda-marked tests skip without a GPU"),
    Step("matrix", 90, step_matrix, None),
    Step("round_trips", 45, step_round_trips, "round trips between CPU and CUDA need CUDA"),
    Step("compile", 120, step_compile, None, in_quick=False),
    Step("learner_vs_bare", 60, step_learner_vs_bare,
         "a CUDA learner against a bare CUDA loop (CPU numbers: benchmarks/results/bench_cpu*.json)"),
    Step("actor_scaling", 90, step_actor_scaling,
         "measured for the GPU machine's cores (CPU numbers: benchmarks/results/bench_cpu_pong.json)"),
    Step("cartpole_e2e", 110, step_cartpole_e2e, "training with a CUDA learner needs CUDA (CPU runs: make test)"),
    Step("pong", PONG_MAX_SECONDS, step_pong, "Pong with a CUDA learner needs CUDA", min_seconds=PONG_MIN_SECONDS),
]


# ------------------------------------------------------------------------------ the parent
def run_step(step: Step, ctx: Context, quick: bool) -> dict[str, Any]:
    """The step in a process of its own (a new session, so a timeout kills everything it started)."""
    out_file, log_file = ctx.workdir / f"{step.name}.result.json", ctx.workdir / f"{step.name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-step", step.name, "--step-out", str(out_file),
           "--workdir", str(ctx.workdir), "--step-timeout", str(ctx.timeout), "--cuda" if ctx.cuda else "--no-cuda",
           *(["--quick"] if quick else [])]
    start = time.monotonic()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=ctx.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            end_group(proc)
    record: dict[str, Any] = {"seconds": round(time.monotonic() - start, 1), "timeout_seconds": round(ctx.timeout)}
    reported = read_json(out_file)
    tail = log_file.read_text(errors="replace")[-2000:]
    if timed_out:
        return {**record, "status": "timeout", "error": f"ran past its {ctx.timeout:.0f} s timeout",
                "partial_result": reported.get("partial"), "output_tail": tail}
    if "result" not in reported:
        return {**record, "status": "failed", "error": reported.get("error") or f"exited {proc.returncode}",
                "traceback": reported.get("traceback"), "partial_result": reported.get("partial"),
                "output_tail": tail}
    result = reported["result"]
    failures = result.pop("failures", [])
    status = "failed" if failures else "ok"
    return {**record, "status": status, "result": result, **({"failures": failures} if failures else {})}


def end_group(proc: subprocess.Popen) -> None:
    """A step out of time ends with everything it started: its session (process group) gets
    SIGTERM (a training run then stops cleanly) and, after KILL_GRACE_SECONDS, SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def check(args: argparse.Namespace) -> int:
    cuda = torch.cuda.is_available()
    budget_end = time.monotonic() + args.budget_seconds
    note = ("CUDA available: every step runs" if cuda else
            "CUDA ABSENT: no GPU on this machine; only the CPU parts ran, and nothing in this file "
            "was measured on a GPU")
    print(f"gpu_check: {note}", flush=True)
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(), "quick": args.quick, "budget_seconds": args.budget_seconds,
        "cuda": {"available": cuda, "device_count": torch.cuda.device_count() if cuda else 0, "note": note},
        "steps": [],
    }
    selected = [s for s in STEPS if args.only is None or s.name in args.only]
    with tempfile.TemporaryDirectory(prefix="asyncql-gpu-check-") as workdir:
        for step in selected:
            left = budget_end - time.monotonic()
            if not cuda and step.without_cuda is not None:
                entry = {"status": "skipped", "reason": f"CUDA absent: {step.without_cuda}"}
            elif args.quick and not step.in_quick:
                entry = {"status": "skipped", "reason": "--quick"}
            elif left < step.min_seconds:
                entry = {"status": "skipped", "reason": f"the {args.budget_seconds:.0f} s budget ran out"}
            else:
                ctx = Context(cuda=cuda, quick=args.quick, workdir=Path(workdir), timeout=min(step.timeout, left))
                entry = run_step(step, ctx, args.quick)
            report["steps"].append({"name": step.name, **entry})
            extra = entry.get("reason") or entry.get("error") or ", ".join(entry.get("failures", []))[:300]
            seconds = entry.get("seconds", 0.0)
            print(f"[{entry['status']:>7}] {step.name} ({seconds:.1f} s){': ' + extra if extra else ''}", flush=True)
            write_json(args.json, report)
    statuses = [s["status"] for s in report["steps"]]
    report["summary"] = {status: statuses.count(status) for status in ("ok", "failed", "timeout", "skipped")}
    report["wall_seconds"] = round(args.budget_seconds - (budget_end - time.monotonic()), 1)
    write_json(args.json, report)
    print(f"gpu_check: {report['summary']} in {report['wall_seconds']:.0f} s; "
          f"{'CUDA absent: nothing measured on a GPU; ' if not cuda else ''}written: {args.json}")
    return 1 if report["summary"]["failed"] or report["summary"]["timeout"] else 0


# ------------------------------------------------------------------------------ the step process
def step_main(args: argparse.Namespace) -> int:
    step = next(s for s in STEPS if s.name == args.run_step)
    ctx = Context(cuda=args.cuda, quick=args.quick, workdir=args.workdir, timeout=args.step_timeout,
                  out_file=args.step_out)
    # CPU work in this process (references, CPU learners) gets half the cores: more threads than
    # free cores make torch's OpenMP threads wait on each other (40x slower on a loaded 2-core machine)
    torch.set_num_threads(max(1, min(8, len(os.sched_getaffinity(0)) // 2)))
    try:
        result = step.run(ctx)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which goes on
        write_json(args.step_out, {"error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc()[-3000:]})
        return 1
    write_json(args.step_out, {"result": result})
    return 0


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Check the learner's CUDA path (or say plainly that CUDA is absent).")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"the results file (default {DEFAULT_JSON})")
    p.add_argument("--quick", action="store_true", help="shortened steps, no compile (a smoke run of this script)")
    p.add_argument("--only", type=lambda text: text.split(","), default=None,
                   help=f"comma list of steps: {','.join(s.name for s in STEPS)}")
    p.add_argument("--budget-seconds", type=float, default=BUDGET_SECONDS, help="the whole check's wall-clock cap")
    p.add_argument("--run-step", help=argparse.SUPPRESS)
    p.add_argument("--step-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--step-timeout", type=float, help=argparse.SUPPRESS)
    p.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.only or []) - {s.name for s in STEPS}
    if unknown:
        p.error(f"--only: unknown step(s) {', '.join(sorted(unknown))}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    return step_main(args) if args.run_step else check(args)


if __name__ == "__main__":
    sys.exit(main())
