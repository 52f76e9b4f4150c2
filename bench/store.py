"""The results store: one SQLite file plus artifact files named by task key.

Layout of a store directory::

    advbench.sqlite          tasks (every task's status), results (one row per scored cell),
                             suite_plans (the keys of each suite's latest plan)
    artifacts/<key>.pt       checkpoints and adversarial examples

Crash safety: an artifact is written to a temporary file and renamed into
place, and only then is the task's row committed. A task counts as done only
when its row says so, so a crash at any point loses at most the task that was
running, and a rerun resumes from there without counting anything twice
(results are keyed by task key).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .errors import UserError
from .metrics import REJECTION_FIELDS, RESULT_METRICS

# The results table: what a row is about, its metrics (one per spec of bench.metrics.RESULT_METRICS),
# where it came from. SQLite appends a column added after the first schema (ALTER TABLE ... ADD COLUMN),
# so a store made earlier has those last, in the order they were added; a fresh store is created with
# the same order. A new metric is a spec with ``appended=True``; a new non-metric column goes last.
_RESULT_IDENTITY = [
    "key", "suite", "dataset", "defense", "defense_name", "defense_config", "attack", "attack_config",
    "threat_model", "surface", "source", "budget_param", "budget", "seed",
]
_RESULT_PROVENANCE = ["versions", "git_commit", "created_at"]
_RESULT_ADDED = ["correct", "evaluated_on"]  # per-example flags; which part of a defense was scored
RESULT_COLUMNS = [
    *_RESULT_IDENTITY, *(m.name for m in RESULT_METRICS if not m.appended), *_RESULT_PROVENANCE,
    *_RESULT_ADDED, *(m.name for m in RESULT_METRICS if m.appended),
    "batch_size",  # the batch size it ran with (bench.runner.batching); added later
    "examples",  # which test images were attacked: examples_digest of their indices; added later
    # Per example, aligned with ``correct`` (added later; ``PER_EXAMPLE_ARRAYS`` says how each is stored): the
    # attacked test indices, and the perturbation's L2 and L∞ size, so a minimum-norm attack's examples count
    # at every budget they fit in and rows over overlapping images combine (bench.report.best_known).
    "example_indices", "perturbation_l2", "perturbation_linf",
    # Per example, where the deployed model abstained on some of them without a reject option (randomized
    # smoothing, ``abstain: error``): it decided a wrong class (not "abstain") in some repeat. Check 8 reads it
    # (an abstention contradicts no certificate); NULL where ``correct`` says the same (added later).
    "wrong_class",
]
# The per-example arrays of a results row besides ``correct`` (bit-packed): column -> numpy dtype of its blob.
PER_EXAMPLE_ARRAYS = {"example_indices": np.int64, "perturbation_l2": np.float32, "perturbation_linf": np.float32,
                      "wrong_class": np.bool_}


def array_blob(value, dtype) -> bytes | None:
    """A per-example array as stored: its values' bytes in ``dtype`` (None stays NULL)."""
    return None if value is None else np.ascontiguousarray(np.asarray(value, dtype=dtype)).tobytes()


def _decoded(frame, arrays: dict[str, Any]):
    """A results or certificates frame as read: ``plan_suites`` a list, ``correct`` and the per-example ``arrays``
    (column -> dtype) arrays again (None where NULL; a read-only older store may lack a column)."""
    frame["plan_suites"] = [sorted(s.split("\n")) if isinstance(s, str) else [] for s in frame["plan_suites"]]
    frame["correct"] = [
        None if blob is None else np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=int(n)).astype(bool)
        for blob, n in zip(frame["correct"], frame["n"])
    ]
    for column, dtype in arrays.items():
        blobs = frame[column] if column in frame.columns else [None] * len(frame)
        frame[column] = [None if blob is None else np.frombuffer(blob, dtype=dtype).copy() for blob in blobs]
    return frame


def examples_digest(indices) -> str:
    """A short SHA-256 of the attacked test indices: two rows with equal digests attacked the same images in
    the same order, so their per-example ``correct`` flags line up (a worst case over them is one)."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]

# Detector experiments: one row per (detection task, method, evaluation, train attack, test attack).
# evaluation: "attack-data" (Table II: the attack's success rate and MSE while building detector data),
# "cv" (k-fold CV on one attack's data, Table III + detection rate + TPR at a clean-chosen FPR),
# "cross" (trained on train_attack, tested on test_attack, Figs. 5-6), "non-adaptive"/"adaptive"
# (an attack on the guarded classifier without/with the detector folded in), "worst-case" (per image,
# defended only if defended against both).
DETECTION_COLUMNS = [
    "key", "task_key", "suite", "dataset", "detector", "detector_name", "detector_config", "method", "seed",
    "evaluation", "train_attack", "test_attack", "attack_config", "budget", "n", "folds",
    "accuracy", "accuracy_std", "f1", "f1_std", "roc_auc", "roc_auc_std", "detection_rate",
    "detection_rate_std", "false_positive_rate", "false_positive_rate_std", "tpr_at_fpr", "tpr_at_fpr_std",
    "target_fpr", "clean_fpr",
    "attack_success_rate", "mse_mean", "adversarial_fraction", "clean_acc", "clean_rejected", "model_clean_acc",
    "model_robust_acc", "robust_acc", "threshold",
    "robust_ci_low", "robust_ci_high", "wall_time_s", "versions", "git_commit", "created_at",
    # The guarded classifier's Acc. / Rej. / Err. under attack (bench.metrics.rejection_outcome), added later.
    *REJECTION_FIELDS,
    "batch_size",
]

# Certificates (bench.certify): one row per (certify task, budget). ``correct``: per example, classified right
# AND certified at the budget (bit-packed, as a results row's); ``radius``: per example, the radius within which
# it is certified right, where the method gives one (randomized smoothing's L2 radius; 0 where it abstains or its
# class is wrong); ``abstained``: examples
# a smoothed classifier abstained on; ``unsupported``: why the method could not take the network (then no
# number: the leaderboard shows "—" and this reason).
CERTIFICATE_COLUMNS = [
    "key", "task_key", "suite", "dataset", "defense", "defense_name", "defense_config", "method", "method_config",
    "threat_model", "budget", "seed", "n", "certified", "clean_correct", "abstained", "unsupported",
    "correct", "example_indices", "radius", "wall_time_s", "versions", "git_commit", "created_at", "batch_size",
]

# A task's status row. ``inputs``: the SHA-256 of each upstream artifact as the task read it ({key: hash}),
# so a task whose producer was re-run with a different output is recomputed (added later: last).
TASK_COLUMNS = ["key TEXT PRIMARY KEY", "kind TEXT NOT NULL", "label TEXT NOT NULL", "status TEXT NOT NULL",
                "config TEXT NOT NULL", "error TEXT", "wall_time_s REAL", "suite TEXT", "versions TEXT",
                "git_commit TEXT", "finished_at TEXT", "inputs TEXT", "batch_size INTEGER"]
_TASK_NAMES = [c.split()[0] for c in TASK_COLUMNS]

# The tables task steps write rows to (a step's registered ``table``), and their columns.
TABLES = {"results": RESULT_COLUMNS, "detection_results": DETECTION_COLUMNS, "certificates": CERTIFICATE_COLUMNS}
# Per table, its per-example arrays besides ``correct``: column -> numpy dtype of its blob.
TABLE_ARRAYS = {"results": PER_EXAMPLE_ARRAYS, "detection_results": {},
                "certificates": {"example_indices": np.int64, "radius": np.float32}}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    {", ".join(TASK_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS results (
    {", ".join(c + (" TEXT PRIMARY KEY" if c == "key" else "") for c in RESULT_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS detection_results (
    {", ".join(c + (" TEXT PRIMARY KEY" if c == "key" else "") for c in DETECTION_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS certificates (
    {", ".join(c + (" TEXT PRIMARY KEY" if c == "key" else "") for c in CERTIFICATE_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS suite_plans (suite TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (suite, key));
CREATE TABLE IF NOT EXISTS artifacts (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
                                      created_at TEXT);
CREATE TABLE IF NOT EXISTS suite_settings (suite TEXT PRIMARY KEY, settings TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL,
                                   pid INTEGER NOT NULL, heartbeat REAL NOT NULL);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ArtifactBroken(Exception):
    """A stored artifact a task needs is missing, damaged or unreadable: the task that made it must re-run."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"artifact {key}: {problem}")
        self.key, self.problem = key, problem


def load_artifact(root: str | Path, key: str) -> dict[str, torch.Tensor]:
    """An artifact's tensors, checked against its recorded SHA-256 (``Store.load_artifact``)."""
    store = Store(root)
    try:
        return store.load_artifact(key)
    finally:
        store.close()


class Store:
    DB_NAME = "advbench.sqlite"

    def __init__(self, root: str | Path, *, readonly: bool = False):
        """Open (and create) the store at ``root``; ``readonly``: an existing store for reading only (reports),
        which needs no write access to it and changes nothing in it."""
        self.root = Path(root)
        self.artifacts = self.root / "artifacts"
        path = self.root / self.DB_NAME
        try:
            if readonly:
                self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60,
                                           isolation_level=None)
                self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return
            self.artifacts.mkdir(parents=True, exist_ok=True)
            # Several processes (one per GPU, Ray workers on one host) may write: WAL and a busy timeout.
            self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._add_missing_columns()
        except OSError as e:  # a read-only or missing directory
            raise UserError(f"{self.root}: cannot open the store there: {e.strerror or e}") from None
        except sqlite3.DatabaseError as e:  # not SQLite, or damaged: say what to do, not a traceback
            if hasattr(self, "_db"):
                self._db.close()
            raise UserError(f"{path}: not a readable advbench store ({e}); move it aside and rerun (the suite "
                            f"recomputes what it held), or check it with: sqlite3 {path} 'PRAGMA integrity_check'"
                            ) from None

    def _add_missing_columns(self) -> None:
        """Stores written by an older advbench lack newer result columns: add them (as NULL)."""
        for table, columns in (("results", RESULT_COLUMNS), ("detection_results", DETECTION_COLUMNS),
                               ("tasks", _TASK_NAMES)):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    @classmethod
    def open_existing(cls, root: str | Path, *, readonly: bool = False) -> "Store | None":
        """The store at root if one exists, without creating anything."""
        return cls(root, readonly=readonly) if (Path(root) / cls.DB_NAME).exists() else None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- task status -------------------------------------------------------------------------
    def done_keys(self, keys: list[str] | None = None) -> set[str]:
        rows = self._db.execute("SELECT key FROM tasks WHERE status = 'done'").fetchall()
        done = {k for (k,) in rows}
        return done if keys is None else done & set(keys)

    def is_done(self, key: str) -> bool:
        row = self._db.execute("SELECT status FROM tasks WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] == "done"

    def task(self, key: str) -> dict[str, Any] | None:
        cur = self._db.execute("SELECT * FROM tasks WHERE key = ?", (key,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None

    def _record_task(self, db: sqlite3.Connection, task, status: str, error: str | None, wall_time_s: float,
                     provenance: dict[str, Any], inputs: dict[str, str] | None, batch_size: int | None = None
                     ) -> None:
        values = dict(key=task.key, kind=task.kind, label=task.label, status=status,
                      config=json.dumps(task.config, sort_keys=True), error=error, wall_time_s=wall_time_s,
                      suite=provenance["suite"], versions=json.dumps(provenance["versions"], sort_keys=True),
                      git_commit=provenance["git_commit"], finished_at=now(),
                      inputs=None if inputs is None else json.dumps(inputs, sort_keys=True), batch_size=batch_size)
        db.execute(f"INSERT OR REPLACE INTO tasks ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                   list(values.values()))

    def mark_done(self, task, *, wall_time_s: float, provenance: dict[str, Any], table: str | None = None,
                  rows: list[dict[str, Any]] = (), inputs: dict[str, str] | None = None,
                  batch_size: int | None = None) -> None:
        """Record a finished task and its rows (for ``table``, one of ``TABLES``) in one transaction;
        ``inputs``: the SHA-256 of each upstream artifact it read; ``batch_size``: what it ran with."""
        columns = TABLES[table] if table is not None else []
        with self._transaction() as db:
            self._record_task(db, task, "done", None, wall_time_s, provenance, inputs, batch_size)
            for row in rows:
                unknown = set(row) - set(columns)
                if unknown:
                    raise ValueError(f"unknown {table} columns {sorted(unknown)}")
                values = {c: row.get(c) for c in columns}
                if values.get("correct") is not None:  # per-example flags, bit-packed
                    values["correct"] = np.packbits(np.asarray(values["correct"], dtype=bool)).tobytes()
                for column, dtype in TABLE_ARRAYS[table].items():
                    values[column] = array_blob(values.get(column), dtype)
                db.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES "
                           f"({', '.join('?' * len(columns))})", [values[c] for c in columns])

    def mark_failed(self, task, error: str, *, wall_time_s: float, provenance: dict[str, Any]) -> None:
        with self._transaction() as db:
            self._record_task(db, task, "failed", error, wall_time_s, provenance, None)

    def forget(self, key: str) -> None:
        """Make a task not done, so the next run (or this one) runs it again; its rows are replaced then."""
        with self._transaction() as db:
            db.execute("DELETE FROM tasks WHERE key = ?", (key,))

    def task_rows(self) -> list[tuple[str, str, str, str]]:
        """(key, kind, label, status) of every task the store knows."""
        return self._db.execute("SELECT key, kind, label, status FROM tasks ORDER BY finished_at").fetchall()

    def task_inputs(self, key: str) -> dict[str, str]:
        """The upstream artifact hashes a done task recorded ({} where it recorded none)."""
        row = self._db.execute("SELECT inputs FROM tasks WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def suites(self) -> list[str]:
        """The suites that have a plan in this store."""
        return [s for (s,) in self._db.execute("SELECT DISTINCT suite FROM suite_plans ORDER BY suite")]

    def plan_keys(self, suite: str) -> set[str]:
        """The task keys of ``suite``'s latest plan."""
        return {k for (k,) in self._db.execute("SELECT key FROM suite_plans WHERE suite = ?", (suite,))}

    def wall_times(self, keys: list[str]) -> dict[str, float]:
        """The wall time (s) of each done task among ``keys``: the scheduler's stored timings."""
        rows = self._db.execute("SELECT key, wall_time_s FROM tasks WHERE status = 'done' AND wall_time_s IS NOT NULL")
        wanted = set(keys)
        return {key: float(seconds) for key, seconds in rows if key in wanted}

    def mean_wall_times(self) -> dict[str, float]:
        """Mean wall time (s) of the done tasks of each kind: the prior for progress estimates."""
        rows = self._db.execute("SELECT kind, AVG(wall_time_s) FROM tasks WHERE status = 'done' "
                                "AND wall_time_s IS NOT NULL GROUP BY kind").fetchall()
        return {kind: float(mean) for kind, mean in rows}

    def set_suite_plan(self, suite: str, keys: list[str], settings: dict[str, Any] | None = None) -> None:
        """Remember which results make up a suite now, so edited suites do not show stale rows, and the
        suite's report settings (its ``headline``), which are not part of any task key."""
        with self._transaction() as db:
            db.execute("DELETE FROM suite_plans WHERE suite = ?", (suite,))
            db.executemany("INSERT OR IGNORE INTO suite_plans VALUES (?, ?)", [(suite, k) for k in keys])
            db.execute("INSERT OR REPLACE INTO suite_settings VALUES (?, ?)",
                       (suite, json.dumps(settings or {}, sort_keys=True)))

    def suite_settings(self) -> dict[str, dict[str, Any]]:
        """Each suite's report settings as its latest run stored them."""
        return {s: json.loads(v) for s, v in self._db.execute("SELECT suite, settings FROM suite_settings")}

    # ---- claims: which run is working on a task (bench/runner/claims.py) ----------------------
    def claim(self, key: str, owner: str, host: str, pid: int, *, stale: Callable[[dict], bool]) -> str:
        """Claim task ``key`` for ``owner``, atomically: "claimed", "done" (stored meanwhile: nothing to do),
        or "held" (another live run holds it). A claim that ``stale(claim)`` judges abandoned is taken over."""
        with self._transaction() as db:
            status = db.execute("SELECT status FROM tasks WHERE key = ?", (key,)).fetchone()
            if status is not None and status[0] == "done":
                return "done"
            row = db.execute("SELECT owner, host, pid, heartbeat FROM claims WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] != owner and not stale(dict(zip(("owner", "host", "pid", "heartbeat"), row))):
                return "held"
            db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)", (key, owner, host, pid, time.time()))
            return "claimed"

    def release(self, owner: str, key: str | None = None) -> None:
        """Drop ``owner``'s claim on ``key`` (all its claims if None)."""
        with self._transaction() as db:
            if key is None:
                db.execute("DELETE FROM claims WHERE owner = ?", (owner,))
            else:
                db.execute("DELETE FROM claims WHERE owner = ? AND key = ?", (owner, key))

    def touch_claims(self, owner: str) -> None:
        """The heartbeat that keeps ``owner``'s claims from looking abandoned."""
        with self._transaction() as db:
            db.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), owner))

    def claims_held(self, keys: list[str]) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT key, owner, host, pid, heartbeat FROM claims").fetchall()
        wanted = set(keys)
        return [dict(zip(("key", "owner", "host", "pid", "heartbeat"), r)) for r in rows if r[0] in wanted]

    # ---- artifacts ---------------------------------------------------------------------------
    def artifact_path(self, key: str) -> Path:
        return self.artifacts / f"{key}.pt"

    def save_artifact(self, key: str, tensors: dict[str, torch.Tensor]) -> Path:
        """Write an artifact atomically and record its SHA-256 and size (checked whenever it is read)."""
        final = self.artifact_path(key)
        # Serialised in memory: saved to a path, torch names the archive's root folder after the (random)
        # temporary file, so equal tensors would give different bytes and hashes on every run.
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        data = buffer.getvalue()
        fd, tmp = tempfile.mkstemp(dir=self.artifacts, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?)",
                       (key, hashlib.sha256(data).hexdigest(), len(data), now()))
        return final

    def drop_artifact(self, key: str) -> None:
        """Delete an artifact's file and record."""
        self.artifact_path(key).unlink(missing_ok=True)
        with self._transaction() as db:
            db.execute("DELETE FROM artifacts WHERE key = ?", (key,))

    def artifact_record(self, key: str) -> tuple[str, int] | None:
        """(SHA-256, size) recorded when the artifact was written; None for one written before records."""
        row = self._db.execute("SELECT sha256, size FROM artifacts WHERE key = ?", (key,)).fetchone()
        return (row[0], int(row[1])) if row else None

    def artifact_problem(self, key: str, *, read: bool = True) -> str | None:
        """What is wrong with a recorded artifact ("missing", "truncated ...", "corrupt ..."), or None.

        ``read``: compare the SHA-256 too (reads the file); otherwise only existence and size (cheap).
        An artifact without a record (older stores) is only checked for existence.
        """
        path, record = self.artifact_path(key), self.artifact_record(key)
        if not path.is_file():
            return "missing"
        if record is None:
            return None
        size = path.stat().st_size
        if size != record[1]:
            return f"truncated or overwritten ({size} bytes, {record[1]} recorded)"
        if read and hashlib.sha256(path.read_bytes()).hexdigest() != record[0]:
            return "corrupt (its SHA-256 differs from the one recorded)"
        return None

    def load_artifact(self, key: str) -> dict[str, torch.Tensor]:
        """An artifact's tensors, checked against its recorded SHA-256; ``ArtifactBroken`` if it is missing,
        damaged or unreadable (the harness then re-runs the task that made it)."""
        path, record = self.artifact_path(key), self.artifact_record(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactBroken(key, "missing") from None
        if record is not None and (len(data) != record[1] or hashlib.sha256(data).hexdigest() != record[0]):
            raise ArtifactBroken(key, "corrupt (its SHA-256 differs from the one recorded)")
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # an older artifact without a record, damaged: torch's own error says how
            raise ArtifactBroken(key, f"unreadable ({type(e).__name__}: {e})") from None

    # ---- results -----------------------------------------------------------------------------
    def results(self, *, current_only: bool = True):
        """All result rows as a DataFrame; by default only rows in some suite's latest plan."""
        import pandas as pd

        # plan_suites: the suites whose latest plan holds the row (a cell two suites share is stored once).
        query = ("SELECT r.*, (SELECT group_concat(p.suite, char(10)) FROM suite_plans p WHERE p.key = r.key) "
                 "AS plan_suites FROM results r")
        if current_only:
            query += " WHERE r.key IN (SELECT key FROM suite_plans)"
        return _decoded(pd.read_sql_query(query, self._db), PER_EXAMPLE_ARRAYS)

    def rows_missing(self, column: str, keys: list[str]) -> list[str]:
        """The keys among ``keys`` of result rows whose ``column`` is empty (written before it existed)."""
        wanted = set(keys)
        cur = self._db.execute(f"SELECT key FROM results WHERE {column} IS NULL")
        return [k for (k,) in cur.fetchall() if k in wanted]

    def fill_rows(self, column_values: dict[str, dict[str, Any]]) -> None:
        """Set per-example array columns of stored result rows ({key: {column: array}}) in one transaction:
        values that are a function of a row's stored inputs, so the row's key and numbers stay as they are."""
        with self._transaction() as db:
            for key, values in column_values.items():
                for column, value in values.items():
                    db.execute(f"UPDATE results SET {column} = ? WHERE key = ?",
                               (array_blob(value, PER_EXAMPLE_ARRAYS[column]), key))

    def detections(self, *, current_only: bool = True):
        """All detection rows as a DataFrame; by default only those of tasks in some suite's latest plan."""
        import pandas as pd

        query = "SELECT * FROM detection_results"
        if current_only:
            query += " WHERE task_key IN (SELECT key FROM suite_plans)"
        return pd.read_sql_query(query, self._db)

    def certificates(self, *, current_only: bool = True):
        """All certificate rows as a DataFrame, per-example arrays decoded; by default only those of tasks in some
        suite's latest plan (``plan_suites``: which)."""
        import pandas as pd

        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'certificates'").fetchone():
            return pd.DataFrame(columns=[*CERTIFICATE_COLUMNS, "plan_suites"])  # a store from before them, read-only
        query = ("SELECT c.*, (SELECT group_concat(p.suite, char(10)) FROM suite_plans p WHERE p.key = c.task_key) "
                 "AS plan_suites FROM certificates c")
        if current_only:
            query += " WHERE c.task_key IN (SELECT key FROM suite_plans)"
        return _decoded(pd.read_sql_query(query, self._db), TABLE_ARRAYS["certificates"])

    def failed_tasks(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        cur = self._db.execute("SELECT key, label, error FROM tasks WHERE status = 'failed'")
        rows = [dict(zip(("key", "label", "error"), r)) for r in cur.fetchall()]
        return rows if keys is None else [r for r in rows if r["key"] in set(keys)]
