"""The public entry points: ``check_available`` (before any work starts), ``load_dataset`` (cached
in-process) and ``clear_cache``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..registry import datasets
from .checksums import _checksum_problem, _md5_of
from .splits import DataContext, DatasetSplits, _subset

# ---- public entry points ------------------------------------------------------------------------

def check_available(name: str, params: dict, ctx: DataContext) -> None:
    """Raise ``UserError`` naming the file and what to do if dataset ``name`` is not on disk, a file
    of it is truncated or corrupt, or (with ``ctx.verify``) a file differs from torchvision's checksum.

    The entry's ``check`` (its meta) finds missing files and opens every file for a structural check
    that reads headers and sizes, not the images. The entry's ``checksums`` (a torchvision dataset
    class) name the MD5s its files must have: the check torchvision itself makes on every load, made
    here first so that it fails once with a way out (``verify: false``); each file's MD5 is computed
    once per process. Passes when ``ctx.download`` is set (the load fetches the data; torchvision
    replaces files that fail its checksums) and for embedded datasets, whose entries have no
    ``check``. ``params`` are the suite's parameters; no built-in check depends on them.

    With ``ctx.download`` nothing is fetched here (a run fetches the data when it first loads it, inside
    torchvision): what is missing or damaged is printed as a note saying so, not raised. With
    ``ctx.check_files`` off (a dry run) nothing on disk is looked at.
    """
    entry = datasets.get(name)
    check: Callable[[DataContext], str | None] | None = entry.meta.get("check")
    if not ctx.check_files or check is None:
        return
    problem = check(ctx)
    if ctx.download:
        if problem:
            _note_once(name, ctx, problem, check)
        return
    checksums = entry.meta.get("checksums")
    if problem is None and ctx.verify and checksums is not None:
        problem = _checksum_problem(checksums, ctx.data_dir)
    if problem:
        raise UserError(f"dataset {name!r}: {problem}")


_NOTED: set[tuple[str, Path]] = set()


def _note_once(name: str, ctx: DataContext, problem: str, check: Callable) -> None:
    """What ``--download`` will do about dataset ``name`` (once per process and data directory): the run
    fetches the files that are missing (a check with ``missing`` and ``size``: torchvision's datasets); a
    damaged copy, or data no check says how to fetch, is the check's own message, which says what to do."""
    if (name, ctx.data_dir) in _NOTED:
        return
    _NOTED.add((name, ctx.data_dir))
    missing = getattr(check, "missing", None)
    if missing is None:
        print(f"advbench: note: dataset {name!r}: {problem}; --download cannot fetch it")
    elif missing(ctx):
        print(f"advbench: note: dataset {name!r} is not under {ctx.data_dir} yet: with --download the run fetches "
              f"it ({check.size}) into {ctx.data_dir} when it first loads it; nothing is downloaded before that")
    else:
        print(f"advbench: note: dataset {name!r}: {problem}; nothing is downloaded before the run loads it")


def has_checksums(name: str) -> bool:
    """Whether dataset ``name``'s files are checked against checksums, i.e. whether ``verify: false``
    changes anything for it."""
    return datasets.get(name).meta.get("checksums") is not None


def load_dataset(name: str, params: dict | None, ctx: DataContext, *, train_size: int | None = None,
                 test_size: int | None = None, seed: int = 0) -> DatasetSplits:
    """Build dataset ``name`` and take seeded random subsets of ``train_size``/``test_size`` examples.

    ``None`` keeps a whole split. For one seed a smaller subset is a prefix of a larger one.
    Results are cached in-process and shared: callers must not modify the returned tensors.
    """
    entry = datasets.get(name)
    frozen = tuple(sorted(entry.validate(params).items()))
    return _load_subsets(name, frozen, ctx, train_size, test_size, seed)


def clear_cache() -> None:
    """Drop the in-process cache of loaded datasets (frees memory; tests use it)."""
    _load_subsets.cache_clear()
    _load_full.cache_clear()
    _md5_of.cache_clear()
    _NOTED.clear()


@functools.lru_cache(maxsize=4)
def _load_full(name: str, frozen_params: tuple[tuple[str, Any], ...], ctx: DataContext) -> DatasetSplits:
    check_available(name, dict(frozen_params), ctx)
    return datasets.get(name).factory(ctx, **dict(frozen_params))


@functools.lru_cache(maxsize=16)
def _load_subsets(name: str, frozen_params: tuple[tuple[str, Any], ...], ctx: DataContext,
                  train_size: int | None, test_size: int | None, seed: int) -> DatasetSplits:
    full = _load_full(name, frozen_params, ctx)
    # Independent streams per split, so the test subset does not depend on train_size.
    train_x, train_y = _subset(name, "train", full.train_x, full.train_y, train_size, (seed, 0))
    test_x, test_y = _subset(name, "test", full.test_x, full.test_y, test_size, (seed, 1))
    return DatasetSplits(train_x, train_y, test_x, test_y, full.num_classes, full.class_names)
