"""What a plan will cost before it runs: ``advbench run SUITE --dry-run``'s time estimate.

A task's seconds come from, best first:

1. **the store's timings**: a done task of the same signature (``cost.TaskCosts``: another budget of the same
   attack on the same defense, another seed) took that long (only for a device this machine has: the store
   does not say where its timings were taken);
2. **the cost model**: ``cost.task_work``'s forward passes of one example through one model of the task's
   defense (training: every module it trains; a craft: the attacked surface; a score: the deployed model), each
   weighted by that model's **FLOPs per forward pass** (convolutions and matrix products, as
   ``torch.utils.flop_counter`` counts them), counted on the meta device from the dataset's registry ``shape``
   alone (no data, no memory; the few models meta cannot run, on the CPU without doing the arithmetic), times
   **seconds per FLOP** of each architecture on the device:

   * *measured* where the device is this machine's: one forward and backward of the architecture at a batch of
     ``RATE_BATCH`` (fewer where that would take longer than ``MEASURE_SECONDS``), timed once per architecture
     and process: a fraction of a second for the small nets, a second or two for a ResNet on two CPU cores;
   * *assumed* where it is not (``--device cuda`` on a machine without a GPU): ``ASSUMED_FLOPS`` of the device
     at ``ASSUMED_UTILIZATION``, plus ``ASSUMED_SECONDS_PER_KERNEL`` for each kernel of a pass at a batch of
     ``RATE_BATCH`` (what keeps a small MNIST net from looking free on a GPU). The output states it;

   plus ``TASK_OVERHEAD_SECONDS`` a task.

``estimate_plan`` returns an ``Estimate`` (seconds in all and by task kind, the FLOPs counted, where the numbers
came from); ``dry_run`` prints the plan with it. ``rates`` is the seam for rates taken elsewhere (a GPU run's
measurements, issue 28): any ``Rates`` (``seconds_per_flop`` of an architecture, ``describe``).

Crude by design, as ``cost.py``'s counts are (early stopping counted at full length but for AutoAttack's; data
loading, the detectors' scikit-learn fits and the runner's own work only as ``TASK_OVERHEAD_SECONDS``): it says
whether a suite takes minutes, hours or days, and where the time goes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..plan import Plan, Task
from ..plan.specs import EntryRef, TrainSpec
from ..registry import datasets, defenses
from .cost import FORWARD_BACKWARD, TRAINED, TaskCosts, task_work
from .progress import duration

RATE_BATCH = 64  # the batch a pass is timed (or its kernels counted) at
MEASURE_SECONDS = 0.3  # at most about this long per timed pass: big nets on a CPU are timed at a smaller batch
PARALLEL_EFFICIENCY = 0.8  # CPU threads' speed-up over one thread, per thread (time_pass)

# A device that is not this machine's: what is assumed of it (dense FP32, no tensor cores: PyTorch's default).
ASSUMED_FLOPS = {
    "cuda": (51e12, "an H100's ~51 TFLOP/s dense FP32"),
    "mps": (10e12, "an Apple M-series GPU's ~10 TFLOP/s FP32"),
    "cpu": (1e12, "a 32-core server CPU's ~1 TFLOP/s FP32"),
}
ASSUMED_UTILIZATION = 0.30  # of peak, for these small convolutional nets in eager PyTorch
ASSUMED_SECONDS_PER_KERNEL = 10e-6  # eager PyTorch's launch and dispatch per operator on a GPU
# Each task's own work besides its passes: restoring a checkpoint, taking its images, writing its rows (an
# assumption, a fraction of a second; what keeps a suite of a thousand tiny tasks from looking free).
TASK_OVERHEAD_SECONDS = 0.25

_NUM_CLASSES = {"cifar100": 100}  # datasets whose class count is not 10 (it only sizes the last layer)


# ---- FLOPs of a defense's models -----------------------------------------------------------------------

def _spec(dataset: str):
    from ..models import InputSpec

    shape = tuple(datasets.get(dataset).meta.get("shape") or (3, 32, 32))
    c = shape[0]
    return InputSpec(*shape, num_classes=_NUM_CLASSES.get(dataset, 10), mean=(0.5,) * c, std=(0.25,) * c)


def _forward_flops(module: nn.Module, shape: tuple[int, ...], device: str) -> float:
    """FLOPs of one forward pass of one example through ``module`` on ``device``: "meta" (shapes only), or
    "cpu" for a module with an operator meta cannot run, where the convolutions and matrix products are not
    computed either (``_CountFlops``), so counting a ResNet-50's 15 random draws costs little."""
    counter = _CountFlops(compute=device == "meta")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 operators: threads would only wait on each other (on a busy machine, long)
    try:
        with counter, torch.no_grad():
            module(torch.zeros(1, *shape, device=device))
    finally:
        torch.set_num_threads(threads)
    return float(counter.flops)


def _conv_flops(args, out) -> int:
    """A convolution's: each output element (transposed: each input element) takes C_in / groups x kernel
    multiply-adds with the weight (C_out, C_in / groups, *kernel)."""
    transposed = len(args) > 6 and bool(args[6])
    return 2 * (args[0] if transposed else out).numel() * math.prod(args[1].shape[1:])


_aten = torch.ops.aten
# FLOPs (two per multiply-add) of the operators that do the arithmetic of these nets, as torch.utils.flop_counter
# counts them; the rest (activations, pooling, normalization) are left out, as it leaves them.
_HEAVY = {
    _aten.convolution.default: _conv_flops,
    _aten.mm.default: lambda args, out: 2 * math.prod(args[0].shape) * args[1].shape[-1],
    _aten.addmm.default: lambda args, out: 2 * math.prod(args[1].shape) * args[2].shape[-1],
    _aten.bmm.default: lambda args, out: 2 * math.prod(args[0].shape) * args[1].shape[-1],
    _aten.baddbmm.default: lambda args, out: 2 * math.prod(args[1].shape) * args[2].shape[-1],
}


class _CountFlops(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the FLOPs of the ``_HEAVY`` operators a pass runs. With ``compute`` off (a CPU pass) they are not
    run: answered with zeros of their output's shape, found on the meta device; the other operators run. The
    zeros change no shape, and what the pass computes is not used. (``FlopCounterMode`` counts the same, at
    about a millisecond per operator: seconds for a ResNet-50 drawn 15 times.)"""

    def __init__(self, compute: bool = True):
        super().__init__()
        self.compute, self.flops = compute, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        count = _HEAVY.get(func)
        if count is None:
            return func(*args, **kwargs)
        if self.compute:
            out = func(*args, **kwargs)
        else:
            to_meta = (lambda a: a.to("meta") if isinstance(a, torch.Tensor) else a)
            shaped = func(*[to_meta(a) for a in args], **{k: to_meta(v) for k, v in kwargs.items()})
            device = next(a.device for a in args if isinstance(a, torch.Tensor))
            out = torch.zeros(shaped.shape, dtype=shaped.dtype, device=device)
        self.flops += count(args, out)
        return out


class _KernelCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operators a pass dispatches that launch a kernel (views and detach launch none)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not getattr(func, "is_view", False) and func is not torch.ops.aten.detach.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _kernels_per_pass(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Kernels of one forward and backward pass of ``module`` (its meta copy) at a batch of ``RATE_BATCH``."""
    meta = copy.deepcopy(module).to("meta").train()
    counter = _KernelCounter()
    with counter:
        out = meta(torch.zeros(RATE_BATCH, *shape, device="meta"))
        (out[0] if isinstance(out, (tuple, list)) else out).float().sum().backward()
    return counter.count


@dataclass
class ModelProfile:
    """One defense (its config) on one dataset: FLOPs per forward of one example through each of its models,
    and each trained module's architecture label (what a rate is measured for)."""

    defense: Any  # set up on the meta device
    shape: tuple[int, ...]
    dataset: str
    config: EntryRef  # the defense, as its train task names it
    labels: dict[str, str]  # module name -> architecture label
    module_flops: dict[str, float]  # module name -> forward FLOPs per example
    flops: dict[str, float] = field(default_factory=dict)  # model (TRAINED or a surface) -> forward FLOPs
    note: str | None = None  # how it was stood in for, when it could not be built
    _cpu: Any = None

    def model_flops(self, model: str) -> float:
        if model not in self.flops:
            self.flops[model] = self._count(model)
        return self.flops[model]

    def _count(self, model: str) -> float:
        if model == TRAINED:
            return sum(self.module_flops.values())
        name = model if model in self.defense.surface_names() else "deployed"
        try:
            return _forward_flops(self.defense.surface(name), self.shape, "meta")
        except Exception:  # an operator without a meta kernel (random layer sampling's unique, generators)
            pass
        try:
            return _forward_flops(self.cpu_defense().surface(name), self.shape, "cpu")
        except Exception:
            passes = self.defense.forward_passes if name == "deployed" else 1
            return passes * max(self.module_flops.values(), default=0.0)

    def cpu_defense(self) -> Any:
        """The same defense set up on the CPU (real weights): for timing, and the few surfaces meta cannot run."""
        if self._cpu is None:
            self._cpu = _build(self.config, self.dataset, "cpu")
        return self._cpu


def _build(defense: EntryRef, dataset: str, device: str) -> Any:
    built = defenses.get(defense.name).build(**defense.params)
    with torch.device(device):
        built.setup(_spec(dataset), seed=0, device=torch.device(device))
    return built


def _labels(defense: EntryRef, modules: dict[str, nn.Module], dataset: str) -> dict[str, str]:
    """Each module's architecture label: the registered architecture the config names (``arch``, ``auto``
    resolved; a detector's ``model_a``/``model_b``), else the module's class."""
    from ..defense import default_architecture

    params = defense.params
    spec = _spec(dataset)
    arch = params.get("arch")
    if arch is not None:
        arch = default_architecture(spec) if arch == "auto" else arch
    out = {}
    for name, module in modules.items():
        named = params.get(name)
        if isinstance(named, str):
            out[name] = named
        elif isinstance(named, dict):
            out[name] = "pretrained " + type(module).__name__
        else:
            out[name] = arch or f"{defense.name} {type(module).__name__}"
    return out


_PROFILES: dict[str, ModelProfile] = {}


def profile(train: Task) -> ModelProfile:
    """The ``ModelProfile`` of a train task's defense and dataset (cached per defense config and dataset)."""
    spec: TrainSpec = train.spec
    defense, dataset = spec.defense, spec.dataset.name
    key = json.dumps([defense.payload(), dataset], sort_keys=True, default=str)
    if key not in _PROFILES:
        _PROFILES[key] = _profile(defense, dataset)
    return _PROFILES[key]


def _profile(defense_ref: EntryRef, dataset: str) -> ModelProfile:
    shape = tuple(datasets.get(dataset).meta.get("shape") or (3, 32, 32))
    note, cpu = None, None
    try:
        defense = _build(defense_ref, dataset, "meta")
        modules = defense.modules()
        module_flops = {}
        for name, module in modules.items():
            try:
                module_flops[name] = _forward_flops(module, shape, "meta")
            except Exception:  # no meta kernel for one of its operators: on the CPU
                cpu = cpu or _build(defense_ref, dataset, "cpu")
                module_flops[name] = _forward_flops(cpu.modules()[name], shape, "cpu")
    except Exception as e:  # a plugin defense that cannot be set up without its data: a stand-in
        from ..defense import default_architecture

        stand_in = default_architecture(_spec(dataset))
        note = (f"{defense_ref.name} counted as one {stand_in} (it could not be built on the meta device: "
                f"{type(e).__name__})")
        defense_ref = EntryRef("undefended", {"arch": stand_in})
        defense = _build(defense_ref, dataset, "meta")
        modules = defense.modules()
        module_flops = {n: _forward_flops(m, shape, "meta") for n, m in modules.items()}
    return ModelProfile(defense, shape, dataset, defense_ref, _labels(defense_ref, modules, dataset), module_flops,
                        note=note, _cpu=cpu)


# ---- seconds per pass ----------------------------------------------------------------------------------

class Rates(Protocol):
    """Where seconds come from: ``seconds_per_flop`` of architecture ``label``'s forward and backward passes,
    per forward-pass FLOP, found from ``module()`` (one module of it, ``flops`` per forward of one example) the
    first time a label is asked for; ``describe`` says how, in words."""

    here: bool  # whether ``module`` should have real weights (it runs them) rather than be on the meta device

    def seconds_per_flop(self, label: str, module: Callable[[], nn.Module], shape: tuple[int, ...],
                         flops: float) -> float: ...

    def describe(self, labels: list[str]) -> str: ...


@dataclass
class Measured:
    """One forward and backward pass of each architecture, timed on this machine's ``device``."""

    device: str
    here: bool = True
    # (label, shape) -> (seconds per example, the batch it was timed at, forward FLOPs per example)
    timed: dict[tuple[str, tuple[int, ...]], tuple[float, int, float]] = field(default_factory=dict)

    def seconds_per_flop(self, label: str, module: Callable[[], nn.Module], shape: tuple[int, ...],
                         flops: float) -> float:
        key = (label, shape)
        if key not in self.timed:
            self.timed[key] = (*time_pass(module(), shape, self.device), flops)
        seconds, _, measured_flops = self.timed[key]
        return seconds / (FORWARD_BACKWARD * max(measured_flops, 1.0))

    def describe(self, labels: list[str]) -> str:
        parts = [f"{label} {_ms(seconds)}" + (f" (batch {batch})" if batch != RATE_BATCH else "")
                 for (label, _), (seconds, batch, _) in self.timed.items() if label in labels]
        threads = f", {torch.get_num_threads()} threads" if self.device == "cpu" else ""
        return f"measured on {self.device}{threads}, a forward and backward pass per image: " + ", ".join(parts)


@dataclass
class Assumed:
    """A device that is not here: its ``ASSUMED_FLOPS`` at ``ASSUMED_UTILIZATION`` and a cost per kernel."""

    device: str
    here: bool = False
    # (label, shape) -> (kernels of a forward and backward pass at RATE_BATCH, forward FLOPs per example)
    counted: dict[tuple[str, tuple[int, ...]], tuple[int, float]] = field(default_factory=dict)

    @property
    def flops_per_second(self) -> float:
        return ASSUMED_FLOPS[self.device.split(":")[0]][0] * ASSUMED_UTILIZATION

    def seconds_per_flop(self, label: str, module: Callable[[], nn.Module], shape: tuple[int, ...],
                         flops: float) -> float:
        key = (label, shape)
        if key not in self.counted:
            try:
                kernels = _kernels_per_pass(module(), shape)
            except Exception:  # an operator without a meta kernel: FLOPs alone
                kernels = 0
            self.counted[key] = (kernels, flops)
        kernels, counted_flops = self.counted[key]
        pass_flops = FORWARD_BACKWARD * max(counted_flops, 1.0)
        return 1 / self.flops_per_second + kernels * ASSUMED_SECONDS_PER_KERNEL / RATE_BATCH / pass_flops

    def describe(self, labels: list[str]) -> str:
        _, what = ASSUMED_FLOPS[self.device.split(":")[0]]
        return (f"assumed for {self.device}, which this machine lacks: {_tflops(self.flops_per_second)} "
                f"({what} at {ASSUMED_UTILIZATION:.0%} utilization) plus {ASSUMED_SECONDS_PER_KERNEL * 1e6:.0f} µs "
                f"per kernel at a batch of {RATE_BATCH}")


def time_pass(module: nn.Module, shape: tuple[int, ...], device: str) -> tuple[float, int]:
    """(seconds per example, batch) of one forward and backward pass of ``module`` (a copy, in training mode, as
    training runs it) on ``device``: at a batch of ``RATE_BATCH``, or fewer (at least 8) where that would take
    longer than ``MEASURE_SECONDS``; the best of up to three passes after a warm-up.

    On the CPU with several threads, also at one thread, counted ``PARALLEL_EFFICIENCY`` × threads faster, and
    the better of the two kept: on a machine busy with other work, threads that wait on each other can make a
    pass ten times slower than the run (which may have the machine to itself) will see.
    """
    dev = torch.device(device)
    net = copy.deepcopy(module).to(dev).train()
    threads = torch.get_num_threads()
    best = _timed(net, shape, dev)
    if dev.type == "cpu" and threads > 1:
        torch.set_num_threads(1)
        try:
            one, batch = _timed(net, shape, dev)
        finally:
            torch.set_num_threads(threads)
        best = min(best, (one / (threads * PARALLEL_EFFICIENCY), batch))
    return best


def _timed(net: nn.Module, shape: tuple[int, ...], dev: torch.device) -> tuple[float, int]:
    def run(batch: int) -> float:
        x = torch.rand(batch, *shape, device=dev)
        _sync(dev)
        start = time.perf_counter()
        net.zero_grad(set_to_none=True)
        out = net(x)
        (out[0] if isinstance(out, (tuple, list)) else out).float().sum().backward()
        _sync(dev)
        return time.perf_counter() - start

    run(2)  # warm-up: kernels chosen, memory allocated
    probe = 8
    took = run(probe)
    guess = took * RATE_BATCH / probe  # per-batch overheads make it high: a small net is still timed at RATE_BATCH
    batch = RATE_BATCH if guess <= MEASURE_SECONDS else max(
        probe, 2 ** int(math.log2(RATE_BATCH * MEASURE_SECONDS / guess)))
    times = [took] if batch == probe else [run(batch)]
    while sum(times) < MEASURE_SECONDS and len(times) < 3:
        times.append(run(batch))
    return min(times) / batch, batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_is_here(device: str) -> bool:
    kind = device.split(":")[0]
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return True


def rates_for(device: str) -> Rates:
    """Measured rates on ``device`` where this machine has it, else assumed ones (cached per process)."""
    if device not in _RATES:
        _RATES[device] = Measured(device) if device_is_here(device) else Assumed(device)
    return _RATES[device]


_RATES: dict[str, Rates] = {}


# ---- the estimate --------------------------------------------------------------------------------------

@dataclass
class Estimate:
    seconds: float
    by_kind: dict[str, float]  # task kind -> seconds
    flops: float  # forward-pass FLOPs the cost model counted (its tasks only)
    stored: int  # tasks estimated from the store's timings
    modelled: int  # tasks estimated by the cost model
    rates: str  # where the cost model's seconds per FLOP came from
    notes: list[str]

    @property
    def source(self) -> str:
        """Where the estimate came from, in words."""
        model = f"cost model: {self.rates}"
        if not self.stored:
            return model
        if not self.modelled:
            return "from the store's timings"
        return f"from the store's timings for {self.stored} tasks; {self.modelled} by the {model}"


def estimate_plan(plan: Plan, device: str, todo: list[Task] | None = None,
                  stored_wall_times: dict[str, float] | None = None, rates: Rates | None = None) -> Estimate:
    """Seconds the tasks ``todo`` (default: all) of ``plan`` will take on ``device`` (a concrete device: cpu,
    cuda, cuda:1, mps): the store's timings of the same signature where there are any, else the cost model.
    Stored timings are not used for a device this machine lacks: the store does not say where they were taken,
    and most likely it was here."""
    todo = plan.tasks if todo is None else todo
    rates = rates or rates_for(device)
    timings = TaskCosts(plan, stored_wall_times if device_is_here(device) else None)
    by_kind: dict[str, float] = {}
    flops_total, stored, labels, notes = 0.0, 0, [], []
    for task in todo:
        seconds = timings.stored(task)
        if seconds is not None:
            stored += 1
        else:
            work = task_work(task, timings.by_key)
            seconds = TASK_OVERHEAD_SECONDS
            if work.train is not None and work.passes:
                prof = profile(work.train)
                flops = work.passes * prof.model_flops(work.model)
                flops_total += flops
                seconds += flops * _seconds_per_flop(prof, rates, labels)
                if prof.note and prof.note not in notes:
                    notes.append(prof.note)
        by_kind[task.kind] = by_kind.get(task.kind, 0.0) + seconds
    return Estimate(sum(by_kind.values()), by_kind, flops_total, stored, len(todo) - stored,
                    rates.describe(labels), notes)


def _seconds_per_flop(prof: ModelProfile, rates: Rates, labels: list[str]) -> float:
    """The defense's seconds per forward-pass FLOP: its modules' architectures', weighted by their FLOPs."""
    total = sum(prof.module_flops.values())
    if total <= 0:
        return 0.0
    seconds = 0.0
    for name, flops in prof.module_flops.items():
        label = prof.labels[name]

        def module(name: str = name) -> nn.Module:
            return (prof.cpu_defense() if rates.here else prof.defense).modules()[name]

        seconds += flops * rates.seconds_per_flop(label, module, prof.shape, flops)
        if label not in labels:
            labels.append(label)
    return seconds / total


# ---- the dry run ---------------------------------------------------------------------------------------

def dry_run(suite: Any, plan: Plan, requested_device: str, store_dir: str | Path, data_ctx: Any = None) -> int:
    """``advbench run SUITE --dry-run``: each task and its state, data that is not on disk yet (a note, not an
    error: nothing is loaded), then the task count and the estimate of what is left. ``requested_device`` as the
    command line or suite gives it (auto, cpu, cuda, mps): a device this machine lacks is estimated, not
    refused. Returns the exit status."""
    from ..store import Store

    device = _concrete(requested_device)
    existing = Store.open_existing(store_dir, readonly=True)
    done = existing.done_keys(plan.keys) if existing else set()
    failed = {r["key"] for r in existing.failed_tasks(plan.keys)} if existing else set()
    for task in plan.tasks:
        state = "done" if task.key in done else ("failed, will retry" if task.key in failed else "to run")
        print(f"{task.kind:13}  {task.key}  {state:17}  {task.label}")
    for note in _data_notes(suite, data_ctx):
        print(f"note: {note}")
    todo = [t for t in plan.tasks if t.key not in done]
    head = f"{len(plan.tasks)} tasks planned: {len(done)} done, {len(todo)} to run"
    if not todo:
        print(f"{head} (device {device}; store {store_dir})")
        return 0
    est = estimate_plan(plan, device, todo, existing.wall_times(plan.keys) if existing else None)
    print(f"{head}, about {_long_duration(est.seconds)} on {device} ({est.source}); store {store_dir}")
    kinds = ", ".join(f"{kind} {_long_duration(s)}" for kind, s in sorted(est.by_kind.items(), key=lambda kv: -kv[1]))
    print(f"  by task kind: {kinds}" + (f"; {_flops(est.flops)} counted" if est.flops else ""))
    for note in est.notes:
        print(f"  note: {note}")
    return 0


# A suite estimated beyond this is a typo (epochs: 5000), not a plan: validate says so (a warning, since a
# patient user on a slow machine may mean it). A paper-scale suite on a GPU takes hours, not weeks.
ABSURD_SECONDS = 7 * 86400


def absurd_estimate(plan: Plan, requested_device: str) -> str | None:
    """What ``validate`` warns about a suite whose cost-model estimate on its device is beyond
    ``ABSURD_SECONDS`` (``auto`` on a machine without a GPU: estimated for cuda, where such a suite is meant to
    run), with the task kind that costs the most; None for a suite of sane size."""
    device = "cuda" if requested_device == "auto" else requested_device
    est = estimate_plan(plan, device)
    if est.seconds <= ABSURD_SECONDS:
        return None
    kind, seconds = max(est.by_kind.items(), key=lambda kv: kv[1])
    return (f"the cost model estimates {_long_duration(est.seconds)} on {device}, {_long_duration(seconds)} of it in "
            f"{kind} tasks ({est.rates}): check the epochs, steps, restarts and sizes")


def _concrete(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _long_duration(seconds: float) -> str:
    text = duration(seconds)
    return f"{text} (≈ {seconds / 86400:.1f} days)" if seconds >= 2 * 86400 else text


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2g} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.2g} µs"


def _flops(flops: float) -> str:
    """``12.4 TFLOP``, ``3.1 PFLOP``: forward-pass FLOPs in the largest unit under 1,000."""
    for unit, size in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= size:
            return f"{flops / size:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def _tflops(flops_per_second: float) -> str:
    return f"{flops_per_second / 1e12:.3g} TFLOP/s"


def _data_notes(suite: Any, data_ctx: Any) -> list[str]:
    """Each dataset (and out-distribution set) the run would find missing or damaged: what ``validate`` says."""
    if data_ctx is None:
        return []
    import dataclasses

    from ..data import check_available
    from ..errors import UserError

    ctx = dataclasses.replace(data_ctx, check_files=True)
    notes = []
    entries = [(ds.name, ds.params, getattr(ds, "verify", True)) for ds in suite.datasets]
    entries += [(ds.out_distribution.name, ds.out_distribution.params, True) for ds in suite.datasets
                if getattr(ds, "out_distribution", None) is not None]
    for name, params, verify in dict.fromkeys((n, json.dumps(p, sort_keys=True, default=str), v)
                                               for n, p, v in entries):
        try:
            check_available(name, json.loads(params), dataclasses.replace(ctx, verify=verify))
        except UserError as e:
            notes.append(f"{e} (a dry run needs no data; the run does)")
    return notes

