"""The sweep record store: one SQLite file (stdlib ``sqlite3``, WAL mode) any SQLite tool can open.

Two tables (schema in docs/sweeps.md): ``cells``, one row per grid cell with its
config, status and provenance, and ``models``, one row per model per finished
cell (clean, poisoned, each defense). Only the sweep driver writes; a cell's
model rows and its ``complete`` status are written in one transaction, so a
killed driver leaves every cell either finished with all its rows or not
finished with none.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,          -- the cell's ExperimentConfig as JSON: `ptk run --config` can repeat it
    grid_values TEXT NOT NULL,     -- the grid values that made this cell, as JSON
    status TEXT NOT NULL,          -- pending, running, complete, failed
    error TEXT,
    started TEXT,
    finished TEXT,
    seconds REAL,
    host TEXT,
    device TEXT,
    versions TEXT                  -- ptk, torch and plugin versions as JSON
);
CREATE TABLE IF NOT EXISTS models (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    name TEXT NOT NULL,            -- clean, poisoned or the defense's name
    seed INTEGER,
    attack TEXT,
    budget INTEGER,                -- poisoned training samples
    target_index INTEGER,
    source_class TEXT,
    target_class TEXT,
    test_accuracy REAL,
    target_p_source REAL,
    target_p_target REAL,
    target_pred TEXT,
    attack_success INTEGER,        -- 0/1: the target is predicted as the attacker's class
    backdoor_asr REAL,             -- backdoor attacks: share of triggered non-target test images sent to the target
    rejected_clean REAL,           -- test-time filters: share of clean test images rejected
    rejected_triggered REAL,       -- test-time filters: share of triggered test images rejected
    removed_count INTEGER,
    removal_precision REAL,
    removal_recall REAL,
    suspicion_auroc REAL,
    train_seconds REAL,
    defense_seconds REAL,
    threat_model TEXT,
    failed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    row TEXT NOT NULL,             -- the model's whole results.json entry, as JSON
    PRIMARY KEY (cell_id, name)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,          -- what the store holds: `suite` (a bench store's suite and version)
    value TEXT NOT NULL
);
"""


#: ``PRAGMA application_id`` of a ptk store ("ptkS"): how ptk knows a SQLite file is its own.
APPLICATION_ID = 0x70746B53


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class SweepStore:
    """A sweep's SQLite file. Writes happen in short transactions, one per state change of a cell."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        """Open (or, unless ``readonly``, create) the store at ``path``. ptk writes only into files it made:
        a new or empty file becomes a store (stamped with ptk's SQLite application id); an existing one must be
        a ptk store (the id, or the tables of a store made before the id existed); anything else is refused
        untouched. ``readonly`` (``sweep status``, ``sweep report``, ``bench report``) changes nothing on disk."""
        self.path = Path(path)
        if self.path.is_dir():
            raise UsageError(f"record store {self.path} is a directory; give a file path, e.g. {self.path / 'sweep.db'}")
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if readonly and fresh:
            raise UsageError(f"record store {self.path} does not exist (or is empty); `ptk sweep run` makes one")
        try:
            if readonly:
                self.db = self.connect_readonly()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.check_owner(fresh)
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(SCHEMA)
                if fresh:
                    self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self.add_missing_columns()
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "db"):
                self.db.close()
            raise UsageError(f"record store {self.path}: {exc} (is it a file ptk made? give another --db)") from None
        except OSError as exc:
            raise UsageError(f"record store {self.path}: {exc.strerror or exc}") from None

    def connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection; on read-only media (where SQLite cannot make the -shm file WAL reading
        needs) the file is opened as immutable instead: nothing can be writing it there."""
        uri = self.path.resolve().as_uri()
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
            return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=30, isolation_level=None)

    def check_owner(self, fresh: bool) -> None:
        """Refuse a SQLite file some other program made (the store would add tables to it)."""
        if fresh:
            return
        app = self.db.execute("PRAGMA application_id").fetchone()[0]  # raises DatabaseError for a non-SQLite file
        if app == APPLICATION_ID:
            return
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app == 0 and {"cells", "models"} <= tables:
            return  # a store made before ptk stamped its id (ptk 0.1.0)
        raise UsageError(f"{self.path} is a SQLite file ptk did not make (tables: {', '.join(sorted(tables)) or 'none'}); "
                         "ptk writes only its own stores: give another --db")

    def add_missing_columns(self) -> None:
        """A store made by an older ptk lacks the columns added since (``backdoor_asr``, ``rejected_*``): add them, empty, so
        its sweep can resume with this ptk. SQLite appends them at the end; inserts name their columns."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(models)")}
        for name, sql_type in ADDED_MODEL_COLUMNS.items():
            if name not in have:
                self.db.execute(f"ALTER TABLE models ADD COLUMN {name} {sql_type}")

    def meta(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        except sqlite3.OperationalError:  # a store from before the meta table, opened read-only
            return None
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()

    def rowless(self) -> list[str]:
        """Complete cells with no model row: rows deleted by hand (or by a tool), the cell's results still in
        ``cells/<id>.json``."""
        return [r[0] for r in self.db.execute(
            "SELECT cell_id FROM cells c WHERE status='complete' AND NOT EXISTS "
            "(SELECT 1 FROM models m WHERE m.cell_id = c.cell_id)")]

    def repair(self, results_dir: Path) -> tuple[list[str], list[str]]:
        """Complete cells without model rows get them back from ``results_dir/<id>.json``; a cell whose file is
        gone or unreadable goes back to pending (it reruns). Returns (restored, reset) cell ids."""
        restored, reset = [], []
        for cell in self.rowless():
            try:
                results = json.loads((results_dir / f"{cell}.json").read_text())
                seconds = self.db.execute("SELECT seconds FROM cells WHERE cell_id=?", (cell,)).fetchone()[0]
                self.finish(cell, results, seconds or 0.0)
                restored.append(cell)
            except (OSError, ValueError, KeyError, TypeError):
                self.db.execute("UPDATE cells SET status='pending', finished=NULL WHERE cell_id=?", (cell,))
                reset.append(cell)
        return restored, reset

    def status(self) -> dict[str, str]:
        """Status of every cell the store knows, by cell id."""
        return dict(self.db.execute("SELECT cell_id, status FROM cells"))

    def add_cell(self, cell_id: str, config: dict[str, Any], values: dict[str, Any]) -> None:
        """Record a cell as pending unless it is already known (finished rows are never touched)."""
        self.db.execute("INSERT OR IGNORE INTO cells (cell_id, config, grid_values, status) VALUES (?, ?, ?, 'pending')",
                        (cell_id, json.dumps(config, sort_keys=True), json.dumps(values, sort_keys=True)))

    def start(self, cell_id: str, device: str) -> None:
        self.db.execute("UPDATE cells SET status='running', error=NULL, started=?, finished=NULL, host=?, device=? "
                        "WHERE cell_id=?", (now(), socket.gethostname(), device, cell_id))

    def release(self, cell_id: str) -> None:
        """A cell interrupted by Ctrl-C goes back to pending: it is rerun, not counted as failed."""
        self.db.execute("UPDATE cells SET status='pending', started=NULL WHERE cell_id=? AND status='running'",
                        (cell_id,))

    def counts(self) -> dict[str, int]:
        """How many cells are pending, running, complete and failed (``ptk sweep status``)."""
        out = {s: 0 for s in ("pending", "running", "complete", "failed")}
        out.update(dict(self.db.execute("SELECT status, COUNT(*) FROM cells GROUP BY status")))
        return out

    def fail(self, cell_id: str, error: str, seconds: float, host: str | None = None,
             device: str | None = None) -> None:
        """A cell whose run raised: its error, and where it ran (a Ray worker's host, not the driver's)."""
        self.db.execute("UPDATE cells SET status='failed', error=?, finished=?, seconds=?, host=COALESCE(?, host), "
                        "device=COALESCE(?, device) WHERE cell_id=?",
                        (error, now(), round(seconds, 3), host, device, cell_id))

    def finish(self, cell_id: str, results: dict[str, Any], seconds: float, host: str | None = None,
               device: str | None = None) -> str:
        """The cell's model rows and its final status (returned: complete, or failed if a defense failed),
        in one transaction; ``host`` and ``device`` say where it ran when that was not the driver."""
        rows = list(model_rows(cell_id, results))
        status = "complete" if results.get("status") == "complete" else "failed"
        failed = [m["name"] for m in results.get("models", []) if m.get("failed")]
        error = f"defense(s) failed: {', '.join(failed)}" if failed else results.get("error")
        with self.transaction():
            self.db.execute("DELETE FROM models WHERE cell_id=?", (cell_id,))
            self.db.executemany(f"INSERT INTO models ({', '.join(MODEL_COLUMNS)}) VALUES "
                                f"({', '.join('?' * len(MODEL_COLUMNS))})", rows)
            self.db.execute("UPDATE cells SET status=?, error=?, finished=?, seconds=?, versions=?, "
                            "host=COALESCE(?, host), device=COALESCE(?, device) WHERE cell_id=?",
                            (status, error, now(), round(seconds, 3), json.dumps(results.get("versions", {})),
                             host, device, cell_id))
        return status

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: all of it lands, or (on any exception) none of it."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def models(self) -> Iterator[dict[str, Any]]:
        """Every model row of finished cells, with the cell's grid values (for reports)."""
        cur = self.db.execute("SELECT m.*, c.grid_values, c.config, c.device AS cell_device, c.versions AS "
                              "cell_versions FROM models m JOIN cells c USING (cell_id) "
                              "WHERE c.status IN ('complete', 'failed')")
        names = [d[0] for d in cur.description]
        for values in cur:
            yield dict(zip(names, values))


MODEL_COLUMNS = ("cell_id", "name", "seed", "attack", "budget", "target_index", "source_class", "target_class",
                 "test_accuracy", "target_p_source", "target_p_target", "target_pred", "attack_success",
                 "backdoor_asr", "rejected_clean", "rejected_triggered", "removed_count", "removal_precision", "removal_recall", "suspicion_auroc",
                 "train_seconds", "defense_seconds", "threat_model", "failed", "error", "row")
#: Columns added to ``models`` after the first release of the schema, with their SQL types (see
#: :meth:`SweepStore.add_missing_columns`).
ADDED_MODEL_COLUMNS = {"backdoor_asr": "REAL", "rejected_clean": "REAL", "rejected_triggered": "REAL"}


def model_rows(cell_id: str, results: dict[str, Any]) -> Iterator[tuple]:
    """One tuple per model of a run's results, in MODEL_COLUMNS order."""
    target = results.get("target", {})
    src, tgt = target.get("source_class"), target.get("target_class")
    attack = results.get("attack", {})
    budget = len(attack["poison_indices"]) if "poison_indices" in attack else None
    for m in results.get("models", []):
        probs = m.get("target_probs", {})
        success = m.get("attack_success")
        slim = {k: v for k, v in m.items() if k not in ("removed_indices", "suspicion_roc")}  # in results.json only
        yield (cell_id, m["name"], results["config"]["seed"], attack.get("name"), budget, target.get("index"), src,
               tgt, m.get("test_accuracy"), probs.get(src), probs.get(tgt), m.get("target_pred"),
               None if success is None else int(success), m.get("backdoor_asr"), m.get("rejected_clean"),
               m.get("rejected_triggered"), m.get("removed_count"),
               m.get("removal_precision"), m.get("removal_recall"), m.get("suspicion_auroc"), m.get("train_seconds"), m.get("defense_seconds"),
               m.get("threat_model"), int(bool(m.get("failed"))), m.get("error"), json.dumps(slim))
