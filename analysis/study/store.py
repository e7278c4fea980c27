"""The study's SQLite database: raters, items, per-rater tasks and the answers.

    raters   one row per rater: an opaque link token (the rater's only credential)
    items    one row per (question, subject, prompt, method pair): the hidden mapping
    tasks    one row per (rater, item): the rater's order, left/right side and a form nonce
    answers  at most one row per task (primary key) and per (rater, item) (unique): a replayed
             POST cannot change a stored answer

Durability: WAL journal with synchronous=FULL, and the server commits an answer before it
answers the request, so a killed server loses nothing it has acknowledged. Standard library only.
The server's queries never select the method or trial columns: what it renders cannot name them.
"""

from __future__ import annotations

import hmac
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

DB_NAME = "study.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    question TEXT NOT NULL,          -- subject_fidelity | 3d_consistency | prompt_fidelity
    question_text TEXT NOT NULL,     -- what the rater reads
    subject TEXT NOT NULL,
    prompt TEXT NOT NULL,            -- with the identifier token, as in the results
    method_1 TEXT NOT NULL, trial_1 TEXT NOT NULL, media_1 TEXT NOT NULL, kind_1 TEXT NOT NULL,
    method_2 TEXT NOT NULL, trial_2 TEXT NOT NULL, media_2 TEXT NOT NULL, kind_2 TEXT NOT NULL,
    photos TEXT NOT NULL             -- JSON list of opaque photo names ("[]" when not shown)
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,             -- opaque, sent in the form as "item"
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    item_id INTEGER NOT NULL REFERENCES items(id),
    position INTEGER NOT NULL,
    first_left INTEGER NOT NULL CHECK (first_left IN (0, 1)),  -- method_1 shown as "A" (left)
    nonce TEXT NOT NULL,
    UNIQUE (rater_id, item_id),
    UNIQUE (rater_id, position)
);
CREATE TABLE IF NOT EXISTS answers (
    task_id TEXT PRIMARY KEY REFERENCES tasks(id),
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    item_id INTEGER NOT NULL REFERENCES items(id),
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B')),          -- A = left, B = right
    answered_at TEXT NOT NULL,       -- UTC, ISO 8601
    UNIQUE (rater_id, item_id)
);
"""


def connect(db: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL + synchronous=FULL."""
    con = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA busy_timeout=30000")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")  # per connection: fsync the WAL at every commit
    con.execute("PRAGMA foreign_keys=ON")
    return con


class NotAStudy(ValueError):
    """The path holds no study database, or one that is not a study's (or is corrupt)."""


TABLES = {"meta", "raters", "items", "tasks", "answers"}


def check(db: Path) -> None:
    """Raise NotAStudy unless `db` is an existing, readable study database. Never creates a file."""
    db = Path(db)
    if not db.is_file():
        raise NotAStudy(f"{db.parent}: not a study folder (no {DB_NAME}; make one with `db3d study build`)")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if con.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise NotAStudy(f"{db}: unreadable study database ({err}); restore it from a backup") from None
    if not TABLES <= names:
        raise NotAStudy(f"{db}: not a study database (tables {sorted(names)}; expected {sorted(TABLES)})")


def methods(db: Path) -> list[str]:
    """The methods a study compares (read only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT method_1 FROM items UNION SELECT method_2 FROM items").fetchall()
    finally:
        con.close()
    return sorted(r[0] for r in rows)


def create(db: Path) -> sqlite3.Connection:
    con = connect(db)
    con.executescript(SCHEMA)
    return con


def rater_id(con: sqlite3.Connection, token: str) -> int | None:
    row = con.execute("SELECT id FROM raters WHERE token = ?", (token,)).fetchone()
    return None if row is None else int(row["id"])


def progress(con: sqlite3.Connection, rater: int) -> tuple[int, int]:
    """(answered, total) tasks of a rater."""
    total = con.execute("SELECT COUNT(*) FROM tasks WHERE rater_id = ?", (rater,)).fetchone()[0]
    done = con.execute("SELECT COUNT(*) FROM answers WHERE rater_id = ?", (rater,)).fetchone()[0]
    return int(done), int(total)


def next_task(con: sqlite3.Connection, rater: int) -> dict | None:
    """The rater's first unanswered task, as the page needs it (no method or trial names)."""
    row = con.execute(
        """SELECT t.id AS task, t.nonce, t.first_left, i.question, i.question_text,
                  i.media_1, i.kind_1, i.media_2, i.kind_2, i.photos
           FROM tasks t JOIN items i ON i.id = t.item_id
           LEFT JOIN answers a ON a.task_id = t.id
           WHERE t.rater_id = ? AND a.task_id IS NULL
           ORDER BY t.position LIMIT 1""", (rater,)).fetchone()
    return None if row is None else dict(row)


def record_answer(con: sqlite3.Connection, rater: int, task: str, nonce: str, choice: str) -> str:
    """Store one answer, committed before returning. Returns "ok", or why not: "unknown" (no such
    task), "other" (another rater's task), "nonce" (form nonce mismatch), "duplicate"."""
    con.execute("BEGIN IMMEDIATE")
    try:
        row = con.execute("SELECT rater_id, item_id, nonce FROM tasks WHERE id = ?", (task,)).fetchone()
        if row is None:
            verdict = "unknown"
        elif int(row["rater_id"]) != rater:
            verdict = "other"
        elif not hmac.compare_digest(str(row["nonce"]), nonce):
            verdict = "nonce"
        else:
            try:
                con.execute("INSERT INTO answers (task_id, rater_id, item_id, choice, answered_at) VALUES (?,?,?,?,?)",
                            (task, rater, int(row["item_id"]), choice,
                             datetime.now(timezone.utc).isoformat(timespec="microseconds")))
                verdict = "ok"
            except sqlite3.IntegrityError:
                verdict = "duplicate"
        if verdict == "ok":
            con.execute("COMMIT")
        else:
            con.execute("ROLLBACK")
        return verdict
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
