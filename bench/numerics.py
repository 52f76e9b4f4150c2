"""Portable CPU numerics: the same trained weights and the same numbers on any x86-64 CPU with AVX2 (issue 16).

What moves a CPU result between machines, measured on the mnist-quick undefended model (6 epochs on
mnist5k, then FGSM and PGD; every run on one machine is bit-identical):

- ATen's vector kernels follow the CPU (``ATEN_CPU_CAPABILITY``: default, avx2, avx512). Forcing the
  non-vector kernels on an AVX2 machine moved undefended FGSM ε=0.3 from 14.4% to 9.2%, clean accuracy
  96.3% → 96.2%: the size of the shift between two machines that issue 16 reports (14.4% vs 8.8%).
- oneDNN (convolutions) picks its kernels by ISA too (``ONEDNN_MAX_CPU_ISA``): capping it at SSE4.1
  gave other weights.
- MKL (matrix products) picks code paths by CPU and splits work by thread count: 1 and 2 threads gave
  other weights (clean 96.0% vs 96.3%). MKL's conditional numerical reproducibility
  (``MKL_CBWR=AVX2``) makes them equal (same weights with 1, 2 and 4 threads).

``portable`` numerics pin all three to AVX2, which every x86-64 CPU of the last decade has, so a
machine with AVX-512 computes what an AVX2 machine computes; the price is AVX-512's speed on CPU
runs. Nothing here touches CUDA. Where torch cannot give equal numbers: other CPU architectures (ARM,
where none of these switches exist), other torch/MKL/oneDNN versions (kernels change), and GPUs
(cuDNN picks algorithms per GPU model) — provenance records each of these per row.

The libraries read these variables once, when they first run a kernel, so they must be set before
``torch`` is imported: the CLI does it first thing (``advbench run --numerics portable`` or the
suite's ``numerics: portable``); a Python session sets ``pin_portable_numerics()`` before ``import torch``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from .errors import UserError

PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
MODES = ("native", "portable")


def cpu_has_avx2() -> bool:
    """Whether this is an x86-64 CPU with AVX2 (read from /proc/cpuinfo on Linux; assumed on x86-64 elsewhere)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return "avx2" in line.split()
    except OSError:
        pass
    return True


def pin_portable_numerics(*, where: str = "--numerics") -> None:
    """Set the environment that pins ATen, oneDNN and MKL to AVX2 kernels. Must run before torch is imported."""
    if not cpu_has_avx2():
        raise UserError(f"{where}: portable numerics need an x86-64 CPU with AVX2; this one is "
                        f"{platform.machine()} without it (use numerics: native)")
    if "torch" in sys.modules and any(os.environ.get(k) != v for k, v in PORTABLE_ENV.items()):
        raise RuntimeError("pin_portable_numerics() must run before torch is imported: torch, MKL and oneDNN "
                           "read their kernel choice once")
    os.environ.update(PORTABLE_ENV)


def numerics_mode() -> str:
    """What this process computes with, for provenance: 'portable (AVX2 pinned)' or 'native (<ATen's ISA>)'."""
    import torch

    if all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items()):
        return "portable (ATen, oneDNN and MKL pinned to AVX2)"
    return f"native (ATen {torch.backends.cpu.get_cpu_capability()})"


def requested_mode(suite_path: Path) -> str | None:
    """The suite's ``numerics:`` key, read from the YAML without validating it (validation comes later and
    checks it properly): the CLI needs it before anything imports torch. None if absent or unreadable."""
    import yaml

    try:
        data = yaml.safe_load(Path(suite_path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # the real loader reports it, with file and line
    value = data.get("numerics") if isinstance(data, dict) else None
    return value if value in MODES else None

