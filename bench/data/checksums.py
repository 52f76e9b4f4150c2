"""Whether a dataset's files are there and sound: the availability check of a torchvision dataset (its
messages about missing and damaged files), torchvision's MD5 lists, the comparison with them, and what
``verify: false`` loads with."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

from .splits import DataContext


# ---- availability and structure checks ----------------------------------------------------------
#
# A dataset on disk registers ``check=_files_check(folder, files, size, structure)``: the files must
# exist, and ``structure(paths)`` opens each one cheaply (headers, sizes, a few MB of pickle) and
# returns one problem per bad file, so a truncated or corrupt file fails validation with its path.

def _files_check(folder: str, files: Sequence[str], size: str, structure: Callable[[dict[str, Path]], list[str]],
                 alternative: str = "") -> Callable[[DataContext], str | None]:
    """A check for a torchvision dataset that reads ``files`` from ``<data_dir>/<folder>``: all there, and
    ``structure`` (file name -> path) finds no problem."""

    def missing(ctx: DataContext) -> list[Path]:
        root = ctx.data_dir / folder
        return [root / f for f in files if not (root / f).is_file()]

    def check(ctx: DataContext) -> str | None:
        root = ctx.data_dir / folder
        if absent := missing(ctx):
            expected = root if folder and not root.is_dir() else ", ".join(str(p) for p in absent)
            return (f"not found under {ctx.data_dir} (expected {expected}); rerun with --download to fetch it "
                    f"({size}) into --data-dir, or copy the torchvision layout there{alternative}")
        problems = structure({f: root / f for f in files})
        return (f"{'; '.join(problems)} (delete what is damaged and rerun with --download, or copy good files "
                f"there{alternative})") if problems else None

    # What --download does about it (check_available's note): torchvision fetches missing files.
    check.missing, check.size = missing, size  # type: ignore[attr-defined]
    return check


# ---- torchvision's checksums ---------------------------------------------------------------------
#
# A torchvision dataset class lists the MD5 of each file it reads: ``train_list``/``test_list``
# ([file, md5] under ``base_folder``; CIFAR, STL-10), ``meta`` (CIFAR's class names file) and
# ``split_list`` ({split: [url, file, md5]} under the root; SVHN). Both functions below read these
# lists, so what we check is what torchvision checks. MNIST and Fashion-MNIST have none: torchvision
# checks the downloaded archives, not the raw files.

def _torchvision_md5s(cls: type) -> dict[str, str]:
    """File (relative to the data directory) -> the MD5 torchvision expects, for the train and test splits."""
    folder = Path(getattr(cls, "base_folder", ""))
    out = {str(folder / f): md5 for attr in ("train_list", "test_list") for f, md5 in getattr(cls, attr, [])}
    meta = getattr(cls, "meta", None)
    if isinstance(meta, dict) and meta.get("md5"):
        out[str(folder / meta["filename"])] = meta["md5"]
    for split in ("train", "test"):
        if split in getattr(cls, "split_list", {}):
            _, filename, md5 = cls.split_list[split]
            out[filename] = md5
    return {f: md5 for f, md5 in out.items() if md5}


@functools.lru_cache(maxsize=None)
def _unverified(cls: type) -> type:
    """``cls`` with the MD5s of the files it reads set to None, which torchvision's ``check_integrity``
    takes as "the file exists": what ``verify: false`` loads with.

    Why this way: it uses the meaning torchvision itself gives a missing MD5, and it is scoped to this
    class (patching ``check_integrity`` in torchvision's modules would change every caller in the
    process, and CIFAR checks its meta file outside ``_check_integrity``, so overriding that method
    alone is not enough); reading the files ourselves would be a second reader of each format. The
    archive MD5s (``tgz_md5``) stay, so what ``--download`` fetches is still verified, and a file that
    exists is not fetched again over a local copy.
    """
    attrs: dict[str, Any] = {attr: [[f, None] for f, _ in getattr(cls, attr)]
                             for attr in ("train_list", "test_list") if hasattr(cls, attr)}
    if isinstance(getattr(cls, "meta", None), dict) and "md5" in cls.meta:
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        attrs["split_list"] = {split: [url, f, None] for split, (url, f, _) in cls.split_list.items()}
    # The same name: torchvision derives folders from some classes' names (MNIST's raw_folder).
    return type(cls.__name__, (cls,), attrs) if attrs else cls


def _md5(path: Path) -> str:
    stat = path.stat()
    return _md5_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _md5_of(path: str, size: int, mtime_ns: int) -> str:
    """A file's MD5, once per process while its size and modification time stay the same."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
    return md5.hexdigest()


def _checksum_problem(cls: type, data_dir: Path) -> str | None:
    """Which files differ from the MD5s torchvision expects, and how to accept them (``verify: false``)."""
    wrong = []
    for relative, expected in _torchvision_md5s(cls).items():
        path = data_dir / relative
        if path.is_file() and (got := _md5(path)) != expected:
            wrong.append((path, got, expected))
    if not wrong:
        return None
    (first, got, expected), rest = wrong[0], [path for path, _, _ in wrong[1:]]
    text = f"{first} has MD5 {got}, not torchvision's {expected}"
    if rest:  # one folder in practice: name the other files, not their paths
        names = ", ".join(p.name if p.parent == first.parent else str(p) for p in rest)
        text += f"; {names} differ{'' if len(rest) > 1 else 's'} too"
    many = bool(rest)
    return (f"{text}: not the official file{'s' if many else ''}, so torchvision would refuse to load "
            f"{'them' if many else 'it'}; to use this copy as it is, set `verify: false` on this dataset entry "
            f"(its results record it), or delete {'them' if many else 'it'} and rerun with --download for the "
            f"official files")
