"""The local MLflow store (a sqlite file) made safe against a full disk and interrupted creation.

    prepare_sqlite_store(path)   # before Ray starts: create atomically, or refuse a half-built one
    check_free_space(folder, mb) # a clear error before a run when the disk is (nearly) full
    disk_full_message(err)       # the one message for a full disk, whatever layer raised it

MLflow creates its tables and migrates them in place on first use; a full disk (or a kill) in the
middle leaves a file that MLflow neither uses nor repairs (`table ... already exists` on every
later run). Here a new store is built under a temporary name next to the target and linked into
place only when complete, so `mlflow.db` is either absent or whole; an existing file with missing
tables is reported with the command that fixes it.
"""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

DISK_FULL_MARKERS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


class StoreError(ValueError):
    """The MLflow store cannot be used as it is; the message says what to do."""


def check_free_space(folder: str | Path, min_free_mb: float) -> None:
    """Raise StoreError when the filesystem holding `folder` (a local path or file:// URI; remote
    storage is not checked) has less than `min_free_mb` free."""
    from ple_adatt.config.storage import local_path

    local = local_path(str(folder))
    if local is None:
        return
    p = Path(local)
    while not p.exists() and p != p.parent:  # the nearest existing ancestor holds the filesystem
        p = p.parent
    free = shutil.disk_usage(p).free / 2**20
    if free < min_free_mb:
        raise StoreError(f"only {free:.0f} MB free on the disk holding {folder} (run.min_free_mb={min_free_mb:g}): "
                         f"free space there (or set run.storage_path to another disk), then rerun the same command")


def expected_tables() -> set[str]:
    """Every table MLflow's ORM defines (what a complete store holds)."""
    from mlflow.store.db.utils import Base  # importing the module registers every ORM model

    return set(Base.metadata.tables)


def incomplete_store(path: Path) -> str | None:
    """Why the sqlite file at `path` is not a complete MLflow store, or None when it is."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            if con.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                return "sqlite reports it corrupt (PRAGMA quick_check)"
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            version = con.execute("SELECT version_num FROM alembic_version").fetchall() if "alembic_version" in tables else []
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        return f"not a readable sqlite database ({e})"
    missing = sorted(expected_tables() - tables)
    if missing:
        return f"{len(missing)} MLflow table(s) missing, e.g. {missing[:3]}"
    if not version:
        return "no schema version recorded (alembic_version is empty)"
    return None


def prepare_sqlite_store(path: str | Path) -> Path:
    """Make sure `path` is a complete MLflow sqlite store: build a new one atomically, accept a
    complete one, refuse a half-built one with the fix."""
    path = Path(path)
    if path.exists():
        why = incomplete_store(path)
        if why:
            raise StoreError(f"the MLflow store {path} is incomplete: {why}. It was left half-built by an earlier "
                             f"failure (a full disk or a kill while it was created). If it holds no runs you need, "
                             f"move it away (mv {path} {path}.broken) and rerun: a new store is created")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.building")
    try:
        _create(tmp)
        try:
            os.link(tmp, path)  # atomic and never replaces: a store another process just made wins
        except FileExistsError:
            pass
    except Exception as e:
        msg = disk_full_message(e, str(path.parent))
        if msg:
            raise StoreError(msg) from None
        raise
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)
    return path


def _create(tmp: Path) -> None:
    """A new MLflow store at `tmp`: MLflow creates and migrates its tables on the first request."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
    why = incomplete_store(tmp)
    if why:  # a store MLflow left unfinished without raising is never linked into place
        raise StoreError(f"MLflow did not finish creating its store at {tmp}: {why}")


def disk_full_message(err: BaseException, where: str | None = None) -> str | None:
    """One clear sentence for a full disk anywhere in `err`'s chain (OSError ENOSPC, sqlite's
    'database or disk is full', or either inside a Ray worker's error text); None otherwise."""
    seen, e = set(), err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(m in text for m in DISK_FULL_MARKERS):
            path = where or getattr(e, "filename", None) or "run.storage_path (or the MLflow store)"
            return (f"the disk holding {path} is full ({next((m for m in DISK_FULL_MARKERS if m in text), 'ENOSPC')}). "
                    f"Free space there, then rerun the same command: the run resumes from its last complete "
                    f"checkpoint, and the MLflow store is checked (a half-built one is reported with its fix)")
        e = e.__cause__ or e.__context__
    return None


def prepared(uri: str) -> str:
    """`uri` after making sure a local sqlite store behind it is complete (other stores: as is)."""
    if uri.startswith("sqlite:///"):
        prepare_sqlite_store(uri[len("sqlite:///"):])
    return uri


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def loopback_tracking_problem(uri: str | None, node_ips: set[str], driver_ip: str) -> str | None:
    """Why a tracking URI on this machine's loopback cannot serve a run whose rank 0 may land on
    another machine (the cluster's MLflow server listens on the head's loopback by default,
    cluster.yaml), or None. Nodes on this machine's own address (local multi-node clusters) are fine."""
    if not uri or not uri.startswith(("http://", "https://")):
        return None
    host = uri.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
    others = sorted(ip for ip in node_ips if ip != driver_ip)
    if host not in LOOPBACK_HOSTS or not others:
        return None
    return (f"tracking.uri={uri} is this machine's loopback, but the Ray cluster has nodes at {others[:3]} whose "
            f"workers (rank 0 logs to MLflow) cannot reach it. Either opt in to multi-node tracking (cluster.yaml: "
            f"the MLflow server on the head's private address; tracking.uri=http://<head private IP>:5000) or set "
            f"tracking.enabled=false")
