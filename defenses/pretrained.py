"""A model you already have, as a defense: built from your code, torchvision or RobustBench, with your
weights, and evaluated like any other defense (README, "Evaluate your own model").

Where the network comes from (exactly one of):

* ``factory: "package.module:callable"`` (or ``"path/to/file.py:callable"``), called with
  ``factory_params``: your own architecture;
* ``torchvision: resnet18`` (any name of ``torchvision.models.list_models()``), with ``num_classes`` and,
  optionally, ``torchvision_weights`` (an enum name such as ``IMAGENET1K_V1``; torchvision downloads it);
* ``robustbench: <model name>`` with ``threat_model`` and ``dataset``, through
  ``robustbench.utils.load_model`` (Croce et al. 2021; ``pip install 'advbench[robustbench]'``; it downloads
  the weights into ``model_dir``);
* ``module``: a model handed to ``bench.evaluate`` in this process (``register_module``).

``weights: path/to/file.pt`` is then loaded into it: read with ``torch.load(weights_only=True)``, so a file
whose content needs unpickling code (a whole pickled model, custom classes) is refused, never executed;
``weights_key`` picks the state dict out of a checkpoint dict (``state_dict``, ``model``, ...). Paths are
relative to the working directory, where ``advbench`` runs (as ``--data-dir`` is).

Input conventions are parameters: ``normalize: {mean: [...], std: [...]}`` puts a ``Normalize`` layer in
front of the network, so attacks work on [0, 1] pixels as for every other defense; ``num_classes`` is the
number of scores the network must give (default: the dataset's). At validation the network is built on
PyTorch's meta device (no memory, no compute) and fed a batch of the dataset's image shape: a shape the
network cannot take, weights that do not fit it, a bad factory string or a missing file are one line.

Task keys: the plan pins the SHA-256 of the weights file into the resolved parameters
(``resolve_params``: ``weights_sha256``), beside the factory's name and parameters, so a changed file
re-runs and an unchanged one (touched, copied) does not; loading checks the file still has that hash.
Stored rows record the path and the hash in their ``defense_config``. A suite may pin the hash itself
(``weights_sha256``): a file that differs is then refused at validation. The defense trains nothing: its
train task builds the network, loads the weights and stores them as the checkpoint every craft and score
task restores, as for a trained defense (a fraction of a second for a small network).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import importlib.util
import pickle
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pydantic
import torch
from torch import nn

from bench.data import DatasetSplits
from bench.defense import Defense
from bench.models import InputSpec, Normalize
from bench.registry import UnknownName, defenses

# Models handed to bench.evaluate in this process, by name ("<class>@<content hash>"): the name changes
# with the module's architecture (its repr) and its tensors, so it can stand in a task key.
_IN_MEMORY: dict[str, nn.Module] = {}


def module_digest(model: nn.Module) -> str:
    """SHA-256 of a module's architecture (its repr) and every tensor of its state dict."""
    digest = hashlib.sha256(repr(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def register_module(model: nn.Module) -> str:
    """Keep (a CPU copy of) ``model`` for the ``pretrained`` defense's ``module`` parameter; returns its name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    name = f"{type(model).__qualname__}@{module_digest(model)[:16]}"
    if name not in _IN_MEMORY:
        _IN_MEMORY[name] = copy.deepcopy(model).cpu().eval()  # later edits to the caller's model do not leak in
    return name


@lru_cache(maxsize=64)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, hashed again only when its size or modification time changes."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def load_weights(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` through ``torch.load(weights_only=True)``; ValueError (one line) if the file
    is missing, needs unpickling code, or holds no mapping of names to tensors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights: {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported[^.]*?GLOBAL [\w.]+|Unsupported operand \d+", str(e))
        reason = found.group(0) if found else (str(e).splitlines() or ["unpickling error"])[0]
        raise ValueError(f"weights: {path}: refused: its content needs unpickling code to load ({reason}); save "
                         f"the tensors alone with torch.save(model.state_dict(), path)") from None
    except Exception as e:  # not a torch file, truncated, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"weights: {path}: torch.load cannot read it ({type(e).__name__}: {first})") from None
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            keys = ", ".join(map(str, list(state)[:8])) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"weights_key: {path} has no entry {key!r} (it has: {keys})")
        state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        hint = "; weights_key names the entry that holds them" if isinstance(state, dict) else ""
        raise ValueError(f"weights: {path}: holds a {type(state).__name__} that is not a state dict (a mapping "
                         f"of names to tensors){hint}")
    return state


@lru_cache(maxsize=16)
def _loadable(path: str, resolved: str, mtime_ns: int, size: int, key: str | None) -> bool:
    load_weights(path, key)  # raises where it is not (naming the path as the suite gives it)
    return True


def check_weights(path: str | Path, key: str | None = None) -> None:
    """``load_weights``'s checks, done again only when the file's size or modification time changes (a
    defense is built for validation and again for each task)."""
    if not Path(path).is_file():
        raise ValueError(f"weights: {path}: no such file")
    stat = Path(path).stat()
    _loadable(str(path), str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, key)


@lru_cache(maxsize=16)
def _module_from_file(path: str, mtime_ns: int) -> Any:
    name = f"_advbench_factory_{hashlib.sha256(path.encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def import_factory(text: str) -> Callable[..., nn.Module]:
    """The callable a ``factory`` string names: ``package.module:callable`` or ``path/file.py:callable``
    (``callable`` may be dotted: ``Class.build``). ValueError (one line) for anything else."""
    where, sep, attr = text.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(f"factory: {text!r}: expected 'package.module:callable' or 'path/to/file.py:callable'")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ValueError(f"factory: {text!r}: no such file {where}")
            obj = _module_from_file(str(path.resolve()), path.stat().st_mtime_ns)
        else:
            obj = importlib.import_module(where)
    except ValueError:
        raise
    except Exception as e:  # ImportError, or the module's own code failing
        raise ValueError(f"factory: {text!r}: cannot import {where} ({type(e).__name__}: {e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            known = sorted(n for n in dir(obj) if not n.startswith("_"))
            raise ValueError(f"factory: {text!r}: {where} has no {attr!r}"
                             + (f"; {UnknownName('name', part, known)}" if known else ""))
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"factory: {text!r}: {attr} is a {type(obj).__name__}, not callable")
    return obj


class _TryOnCPU(Exception):
    """Building or running the network on the meta device failed: try again on the CPU to tell a real
    problem from an operation without a meta implementation."""


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


@defenses.register("pretrained", version="1")
class Pretrained(Defense):
    """A model you already have (your factory, torchvision or RobustBench), with your weights; trains nothing."""

    @classmethod
    def training_factor(cls, params: dict[str, Any]) -> float:
        """Loaded, not trained."""
        return 0.0

    def __init__(self, *, factory: str | None = None, factory_params: dict[str, Any] | None = None,
                 torchvision: str | None = None, torchvision_weights: str | None = None,
                 robustbench: str | None = None, threat_model: str = "Linf", dataset: str = "cifar10",
                 model_dir: str = "models", module: str | None = None,
                 weights: str | None = None, weights_key: str | None = None, weights_sha256: str | None = None,
                 normalize: dict[str, list[float]] | None = None, num_classes: int | None = None):
        sources = {k: v for k, v in (("factory", factory), ("torchvision", torchvision),
                                     ("robustbench", robustbench), ("module", module)) if v is not None}
        if len(sources) != 1:
            raise ValueError("give exactly one of factory, torchvision, robustbench (or module, from bench.evaluate)"
                             + (f" (got {', '.join(sources)})" if sources else ""))
        if factory_params and factory is None:
            raise ValueError("factory_params: only with factory")
        if torchvision_weights is not None and torchvision is None:
            raise ValueError("torchvision_weights: only with torchvision")
        if robustbench is None and (threat_model, dataset, model_dir) != ("Linf", "cifar10", "models"):
            raise ValueError("threat_model, dataset and model_dir: only with robustbench")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        self.factory, self.factory_params = factory, dict(factory_params or {})
        self.torchvision, self.torchvision_weights = torchvision, torchvision_weights
        self.robustbench, self.threat_model = robustbench, threat_model
        self.dataset, self.model_dir = dataset, model_dir
        self.module_name = module
        self.weights, self.weights_key, self.weights_sha256 = weights, weights_key, weights_sha256
        self.num_classes = num_classes
        self.normalize = self._check_normalize(normalize)
        # Fail at suite validation, not mid-run: the builder must resolve and the weights must load safely.
        self._builder()
        if weights is not None:
            check_weights(weights, weights_key)
            if weights_sha256 is not None and file_sha256(weights) != weights_sha256:
                raise ValueError(f"weights: {weights}: its SHA-256 is {file_sha256(weights)}, but weights_sha256 "
                                 f"pins {weights_sha256} (set in the suite, or by the plan of a run that began "
                                 f"before the file changed: run again)")
        self.model: nn.Module | None = None
        self.network: nn.Module | None = None

    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters a task key hashes: the weights file's SHA-256 pinned in (``bench.plan``)."""
        if params.get("weights") is None or params.get("weights_sha256") is not None:
            return params
        return {**params, "weights_sha256": file_sha256(params["weights"])}

    @staticmethod
    def _check_normalize(normalize: dict[str, list[float]] | None
                         ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        if normalize is None:
            return None
        if set(normalize) != {"mean", "std"}:
            raise ValueError(f"normalize: give mean and std (per channel), got keys {sorted(normalize)}")
        mean, std = tuple(normalize["mean"]), tuple(normalize["std"])
        if len(mean) != len(std) or not mean:
            raise ValueError(f"normalize: mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if not all(s > 0 for s in std):
            raise ValueError(f"normalize: std must be > 0, got {list(std)}")
        return mean, std

    # -- building the network

    def _builder(self, *, offline: bool = False) -> Callable[[InputSpec], nn.Module]:
        """A function spec -> the bare network (weights not loaded yet), checked as far as is cheap.
        ``offline``: torchvision's own weights are not fetched (the validation's shape check)."""
        if self.factory is not None:
            fn = import_factory(self.factory)
            return lambda spec: fn(**self.factory_params)
        if self.torchvision is not None:
            import torchvision

            known = torchvision.models.list_models()
            if self.torchvision not in known:
                raise UnknownName("torchvision model", self.torchvision, known)
            weights_enum = None
            if self.torchvision_weights is not None:
                enum = torchvision.models.get_model_weights(self.torchvision)
                names = [w.name for w in enum]
                if self.torchvision_weights not in names:
                    raise ValueError(f"torchvision_weights: {self.torchvision} has no weights "
                                     f"{self.torchvision_weights!r} (it has: {', '.join(names)})")
                weights_enum = enum[self.torchvision_weights]
                categories = len(weights_enum.meta["categories"])
                if self.num_classes not in (None, categories):
                    raise ValueError(f"num_classes: {self.num_classes}, but torchvision's {self.torchvision_weights} "
                                     f"weights score {categories} classes (a fine-tuned head: load it with weights)")

            def build_torchvision(spec: InputSpec) -> nn.Module:
                if offline and weights_enum is not None:  # the same network, without downloading its weights
                    classes = self.num_classes or len(weights_enum.meta["categories"])
                    return torchvision.models.get_model(self.torchvision, weights=None, num_classes=classes)
                classes = self.num_classes or (None if weights_enum is not None else spec.num_classes)
                extra = {} if classes is None else {"num_classes": classes}
                return torchvision.models.get_model(self.torchvision, weights=weights_enum, **extra)

            return build_torchvision
        if self.robustbench is not None:
            try:
                from robustbench.utils import load_model
            except ImportError:
                raise ValueError("robustbench: the robustbench package is not installed: "
                                 "pip install 'advbench[robustbench]'") from None
            return lambda spec: load_model(model_name=self.robustbench, model_dir=self.model_dir,
                                           dataset=self.dataset, threat_model=self.threat_model)
        if self.module_name not in _IN_MEMORY:
            raise ValueError(f"module: {self.module_name!r} is not a model handed to bench.evaluate in this process")
        return lambda spec: copy.deepcopy(_IN_MEMORY[self.module_name])

    def _source(self) -> str:
        return (f"factory {self.factory}" if self.factory else f"torchvision {self.torchvision}" if self.torchvision
                else f"robustbench {self.robustbench}" if self.robustbench else f"module {self.module_name}")

    def _wrap(self, network: nn.Module) -> nn.Module:
        return nn.Sequential(Normalize(*self.normalize), network) if self.normalize else network

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """ValueError (one line) if the network cannot take a batch of ``shape`` images, gives no (N, classes)
        scores, or does not fit the weights file; called at suite validation with each dataset's shape.

        Built on the meta device (shapes only, no memory); where that fails, confirmed on the CPU, since a
        few operations have no meta implementation. A RobustBench model is not built here (that downloads).
        """
        if self.robustbench is not None:
            return
        if self.normalize and len(self.normalize[0]) != shape[0]:
            raise ValueError(f"normalize: {len(self.normalize[0])} values per channel, but the images have "
                             f"{shape[0]} channels")
        spec = InputSpec(*shape, num_classes=self.num_classes or 10)
        try:
            self._probe(spec, torch.device("meta"))
        except _TryOnCPU:
            self._probe(spec, torch.device("cpu"))

    def _probe(self, spec: InputSpec, device: torch.device) -> None:
        try:
            with device:
                network = self._builder(offline=True)(spec)
        except Exception as e:
            if device.type == "meta":
                raise _TryOnCPU from e
            raise ValueError(f"{self._source()}: building the network failed ({_first_line(e)})") from None
        if not isinstance(network, nn.Module):
            raise ValueError(f"{self._source()}: returned a {type(network).__name__}, not a torch.nn.Module")
        if self.weights is not None:
            self._check_fits(network.state_dict(), load_weights(self.weights, self.weights_key))
        try:
            with torch.no_grad():
                out = self._wrap(network.to(device).eval())(torch.zeros(2, *spec.shape, device=device))
        except Exception as e:
            if device.type == "meta":
                raise _TryOnCPU from e
            raise ValueError(f"input shape: the network of {self._source()} cannot take images of shape "
                             f"{spec.shape} ({_first_line(e)})") from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != 2:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{self._source()}: gives {got} for a batch of 2 images of shape {spec.shape}; "
                             f"expected scores shaped (2, classes)")
        if self.num_classes is not None and out.shape[1] != self.num_classes:
            raise ValueError(f"num_classes: {self.num_classes}, but the network gives {out.shape[1]} scores")

    def _check_fits(self, expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
        if missing or unexpected or shapes:
            parts = [f"{label} {', '.join(items[:3])}" + (f" (+{len(items) - 3})" if len(items) > 3 else "")
                     for label, items in (("missing", missing), ("unexpected", unexpected),
                                          ("shape differs:", shapes)) if items]
            raise ValueError(f"weights: {self.weights}: does not fit the network of {self._source()}: "
                             f"{'; '.join(parts)}")

    # -- the Defense interface

    def setup(self, spec: InputSpec, *, seed: int, device: torch.device) -> None:
        self.spec, self.device = spec, device
        torch.manual_seed(seed)  # initialisation of what no weights overwrite (torchvision without weights)
        self.network = self._builder()(spec)
        self.model = self._wrap(self.network).to(device).eval()

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        """No training: load the weights file (checking it still has the hash the plan pinned)."""
        if self.weights is not None:
            sha = file_sha256(self.weights)
            if self.weights_sha256 is not None and sha != self.weights_sha256:
                raise ValueError(f"weights: {self.weights} changed since the run was planned (SHA-256 {sha}, "
                                 f"planned {self.weights_sha256}); run again to plan with the new file")
            self.network.load_state_dict(load_weights(self.weights, self.weights_key))
            self.model.to(self.device).eval()
        with torch.no_grad():
            classes = self.model(data.test_x[:2].to(self.device)).shape[1]
        if classes != data.num_classes:
            raise ValueError(f"{self._source()} gives {classes} scores, but the dataset has {data.num_classes} "
                             f"classes")

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def deployed(self) -> nn.Module:
        return self.model


# -- a defense inside another (an ensemble's members, a detector's two models)

def validation_line(error: pydantic.ValidationError, known: list[str] | None = None) -> str:
    """pydantic's multi-line error as one line: ``key: problem; key: problem``; an unknown key gets close
    matches among ``known`` (the parameters allowed there)."""
    problems = []
    for e in error.errors():
        where = ".".join(map(str, e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), known or [], n=3, cutoff=0.6)
            msg = "unknown key" + (f"; did you mean {' or '.join(map(repr, close))}?" if close
                                   else f" (allowed: {', '.join(known)})" if known else "")
        problems.append(f"{where}: {msg}" if where else msg)
    return "; ".join(problems)


def nested_defense(name: str, params: dict[str, Any], *, set_outside: tuple[str, ...] = ()) -> Defense:
    """Registered defense ``name`` built from parameters nested in another defense's; any problem (unknown
    or mistyped keys, a missing file, ...) is a ValueError of one line, which the suite loader prefixes with
    the file and key. ``set_outside``: parameters the outer defense sets, never suggested for a misspelt key."""
    entry = defenses.get(name)
    try:
        validated = entry.validate(params)
    except pydantic.ValidationError as e:
        known = [p.name for p in entry.params if p.name not in set_outside]
        raise ValueError(validation_line(e, known=known)) from None
    try:
        return entry.factory(**validated)
    except pydantic.ValidationError as e:  # parameters nested one level further (arch_params)
        raise ValueError(validation_line(e)) from None
    except UnknownName as e:
        raise ValueError(str(e)) from None
