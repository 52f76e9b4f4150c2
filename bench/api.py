"""The Python API: evaluate an ``nn.Module`` you have in memory, read a store's results, export them.

``evaluate(model, dataset=..., attacks=[...], store=...)`` builds a suite around the model (the
``pretrained`` defense's ``module`` source: ``defenses/pretrained.py``), validates it as a YAML suite is
validated, plans it and runs it with the local executor into ``store``, and returns its result rows as a
pandas DataFrame: what ``advbench run`` would store, without a YAML file. As with a suite, what is stored
is not run again: the model's name in its task keys is its class and a hash of its architecture and
tensors, so calling it again with the same model reads the store, and a changed model runs afresh. The
suite is named after ``label``: like an edited suite, a second model under the same label makes its plan the
suite's latest (the first one's rows stay stored but leave the current results); give each model its own
label to compare them. (The model lives in this process: the Ray executor cannot run it; save its weights
and use a suite.)

``results(store)`` returns the stored rows of every suite's latest plan (``table="detection"``: the
detector experiments' rows), one row per result with the store's columns (``bench.store.RESULT_COLUMNS``:
n, clean and robust accuracy with the 95% Wilson interval, budget, attack, task key, provenance, ...).
The per-example flags (``correct``) are left out unless asked for, so every column is a number or a
string and the frame writes to CSV or JSON and reads back equal (``export``, ``read_export``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable, Literal

from .errors import UserError

TABLES = {"results": "results", "detection": "detection_results"}
FORMATS = ("csv", "json", "parquet")


def evaluate(model, *, dataset: str = "mnist5k", attacks: Iterable[dict[str, Any]] = (),
             dataset_params: dict[str, Any] | None = None, eval_size: int | None = None,
             train_size: int | None = None, test_size: int | None = None, label: str = "model",
             normalize: dict[str, list[float]] | None = None, compare: Iterable[dict[str, Any]] = (),
             seeds: Iterable[int] = (0,), store: str | Path = "results", suite: str | None = None,
             device: str = "auto", batch_size: int = 256, data_dir: str | Path = "data", download: bool = False,
             verbose: bool = True, per_example: bool = False, options: dict[str, Any] | None = None):
    """Run attacks on ``model`` (an ``nn.Module`` taking [0, 1] NCHW images of ``dataset``; with ``normalize``
    ``{mean, std}`` a Normalize layer goes in front) and return one DataFrame row per result.

    ``attacks``: suite attack entries as dicts, e.g. ``{"name": "pgd-linf", "budgets": [0.1, 0.3],
    "params": {"steps": 10}}``; none: clean accuracy only. ``compare``: more defense entries run beside it
    (``{"name": "undefended", "params": {"epochs": 6}}``), trained as a suite would. ``suite``: its name in
    the store (default ``evaluate-<label>``). ``data_dir``/``download``: as ``advbench run``'s ``--data-dir``
    and ``--download``; ``verbose``: print a line per task; ``options``: more suite keys (``repeats``,
    ``headline``, ...). The frame holds every result row of the plan, with any rows the harness adds to a
    suite's (the soundness checks', ``source`` ``check:*``, where they run). A bad argument raises ``UserError``
    naming it; a task that
    fails raises ``RuntimeError`` after the others ran (what ran is stored).
    """
    from defenses.pretrained import register_module

    from .config import suite_from_mapping
    from .data import DataContext
    from .plan import build_plan
    from .runner import RunContext, resolve_device
    from .runner.local import LocalExecutor
    from .store import Store

    try:
        name = register_module(model)
    except TypeError as e:
        raise UserError(f"evaluate: model: {e}") from None
    params = {"module": name, **({"normalize": normalize} if normalize is not None else {})}
    sizes = {k: v for k, v in (("eval_size", eval_size), ("train_size", train_size), ("test_size", test_size))
             if v is not None}
    raw = {"name": suite or f"evaluate-{label}", "seeds": list(seeds), "device": device, "batch_size": batch_size,
           "datasets": [{"name": dataset, "params": dict(dataset_params or {}), **sizes}],
           "defenses": [{"name": "pretrained", "label": label, "params": params}, *map(dict, compare)],
           "attacks": [dict(a) for a in attacks], **(options or {})}
    data = DataContext(Path(data_dir), download)
    checked = suite_from_mapping(raw, shown="evaluate()", data_ctx=data)
    plan = build_plan(checked)
    ctx = RunContext(store_dir=Path(store), data=data, device=resolve_device(checked.device),
                     batch_size=checked.batch_size, progress=False, suite=checked.name)
    db = Store(store)
    try:
        db.set_suite_plan(checked.name, plan.keys, settings={"headline": checked.headline})
        summary = LocalExecutor(echo=print if verbose else (lambda line: None)).run(plan, ctx, db)
    finally:
        db.close()
    if not summary.ok:
        raise RuntimeError("evaluate: " + "; ".join(f"{task}: {error}" for task, error in summary.failed))
    return results(store, keys=plan.keys, per_example=per_example)


def results(store: str | Path = "results", *, table: Literal["results", "detection"] = "results",
            suite: str | None = None, keys: Iterable[str] | None = None, current_only: bool = True,
            per_example: bool = False):
    """The stored rows of ``table`` as a DataFrame: those in some suite's latest plan (``current_only``), or
    ``suite``'s, or those of the task ``keys``. ``plan_suites`` (results) is a comma-separated string;
    ``per_example``: keep the per-example columns (``correct``, a boolean array per row, and the arrays of
    ``bench.store.PER_EXAMPLE_ARRAYS``: attacked indices and perturbation sizes)."""
    from .registry import UnknownName
    from .store import PER_EXAMPLE_ARRAYS, Store

    if table not in TABLES:
        raise UserError(f"table: {UnknownName('table', table, list(TABLES))}")
    db = Store.open_existing(store, readonly=True)
    if db is None:
        raise UserError(f"--store {store}: no results store there; run a suite first (advbench run SUITE)")
    try:
        frame = db.results(current_only=current_only) if table == "results" else db.detections(
            current_only=current_only)
        task_key = "key" if table == "results" else "task_key"
        if suite is not None:
            known = db.suites()
            if suite not in known:
                raise UserError(f"--suite: {UnknownName('suite in this store', suite, known)}")
            frame = frame[frame[task_key].isin(db.plan_keys(suite))]
    finally:
        db.close()
    if keys is not None:
        frame = frame[frame[task_key].isin(set(keys))]
    if table == "results":
        frame = frame.assign(plan_suites=[", ".join(s) for s in frame["plan_suites"]])
        if not per_example:
            frame = frame.drop(columns=["correct", *PER_EXAMPLE_ARRAYS])
    return _tidy(frame.sort_values(task_key, kind="stable").reset_index(drop=True))


def _tidy(frame):
    """One spelling per value, so that a frame reads back from CSV or JSON as it was: "" (the store's "no
    surface" of a clean row, which CSV cannot tell from missing) is missing, and a column of numbers and
    missing values (SQLite gives None for a metric no row has) is a float column."""
    import pandas as pd

    tidy = {}
    for column in frame.columns:
        values = frame[column]
        if column == "correct" or pd.api.types.is_numeric_dtype(values) or any(hasattr(v, "shape") for v in values):
            continue
        values = values.replace("", None)
        present = values.dropna()
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            values = pd.to_numeric(values, errors="coerce").astype(float)
        tidy[column] = values
    return frame.assign(**tidy)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UserError("--format parquet: needs pyarrow, which is not installed (pip install pyarrow); "
                        "csv and json need nothing more")


def write_frame(frame, path: str | Path, fmt: str) -> Path:
    """Write ``frame`` as ``fmt``: CSV (floats exactly as stored), JSON (a list of records, null for missing)
    or Parquet (pyarrow)."""
    _check_format(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "json":
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        path.write_text(json.dumps(records, indent=1, default=str) + "\n")  # repr floats: exact round trip
    else:
        frame.to_parquet(path, index=False)
    return path


def read_export(path: str | Path, fmt: str | None = None):
    """A frame written by ``export``/``write_frame``, read back (format from the suffix unless given)."""
    import pandas as pd

    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    _check_format(fmt)
    if fmt == "csv":
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])  # a label such as "NA" stays a string
    elif fmt == "json":
        frame = pd.DataFrame.from_records(json.loads(path.read_text()))
    else:
        frame = pd.read_parquet(path)
    return _tidy(frame)


def export(store: str | Path = "results", *, fmt: str = "csv", out: str | Path | None = None,
           suite: str | None = None) -> list[Path]:
    """Write the store's results (and its detection results, where it has any) as ``fmt``: to ``out`` (the
    detection rows beside it, as ``<stem>.detection<suffix>``), by default ``<store>/export/results.<fmt>``
    (and ``results.detection.<fmt>``). Returns the written paths."""
    _check_format(fmt)
    out = Path(out) if out is not None else Path(store) / "export" / f"results.{fmt}"
    written = [write_frame(results(store, suite=suite), out, fmt)]
    detection = results(store, table="detection", suite=suite)
    if len(detection):
        written.append(write_frame(detection, out.with_name(f"{out.stem}.detection{out.suffix}"), fmt))
    return written
