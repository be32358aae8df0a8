"""What a run was made from, recorded in MLflow: the code's git commit and the dataset splits.

    tags = git_tags()                       # {} outside a git checkout (a ray job working_dir)
    log_dataset_inputs(uri, run_id, "synthetic", {"train": (files, schema, rows), ...})

Writes through the same explicit client as mlflow_tracking.py.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

GIT_COMMIT_TAG = "mlflow.source.git.commit"
"""MLflow's own tag: the run page shows it as the source version."""
GIT_DIRTY_TAG = "ple_adatt.git_dirty"
"""'true' when tracked files differed from the commit when the run started."""


def git_tags(where: str | Path | None = None) -> dict[str, str]:
    """{commit tag, dirty tag} of the checkout holding `where` (default: this package); {} when it is
    not in a git checkout or git is missing (a `ray job submit` working_dir has no .git)."""
    cwd = Path(where) if where is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: "unknown" if status is None else str(bool(status)).lower()}


_MLFLOW_TYPES = {"int64": "long", "int32": "integer", "int16": "integer", "int8": "integer", "double": "double",
                 "float": "float", "string": "string", "large_string": "string", "bool": "boolean", "binary": "binary"}


def arrow_schema_json(schema) -> str:
    """A pyarrow schema as MLflow's column-spec JSON (list columns and other types by their arrow name)."""
    cols = [{"name": f.name, "type": _MLFLOW_TYPES.get(str(f.type), str(f.type))} for f in schema]
    return json.dumps({"mlflow_colspec": cols})


def split_dataset(name: str, split: str, files: list[str], schema, rows: int):
    """An MLflow Dataset entity for one split: source = its files, schema (pyarrow), row count, digest
    (sha256 of file names, sizes and the schema: it changes when the data is rewritten)."""
    from mlflow.entities import Dataset

    from ple_adatt.config import storage

    fs, _ = storage.filesystem(files[0])
    infos = fs.get_file_info([storage.filesystem(f)[1] for f in files])
    digest = hashlib.sha256(json.dumps([[(f, i.size) for f, i in zip(files, infos)],
                                        schema.to_string()]).encode()).hexdigest()[:16]
    source = {"uri": storage.parent(files[0]) if len(files) > 1 else files[0], "files": files}
    return Dataset(name=f"{name}/{split}", digest=digest,
                   source_type="local" if storage.local_path(files[0]) else "uri", source=json.dumps(source),
                   schema=arrow_schema_json(schema), profile=json.dumps({"num_rows": rows, "num_files": len(files)}))


def log_dataset_inputs(uri: str, run_id: str, name: str, splits: dict[str, tuple[list[str], object, int]]) -> None:
    """Record each split ({split: (files, pyarrow schema, rows)}) as an input of the run (context = split)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    inputs = [DatasetInput(split_dataset(name, split, files, schema, rows),
                          tags=[InputTag("mlflow.data.context", split)])
              for split, (files, schema, rows) in splits.items()]
    MlflowClient(tracking_uri=uri).log_inputs(run_id, datasets=inputs)
