"""Where runs and data live: a local folder or a URI that pyarrow filesystems understand
(`s3://bucket/prefix`, `gs://...`, `abfs://...`, `file:///abs/path`).

    root = storage_root(cfg.run.storage_path)      # URI as written; local path made absolute
    run_dir = join(root, "my-run")                 # never Path(): Path("s3://b/x") is "s3:/b/x"
    write_text(join(run_dir, "final_metrics.json"), text)
    with staged(join(run_dir, "report")) as local: # write files locally, uploaded on exit
        ...
    with local_copy(checkpoint_uri) as d:          # a checkpoint folder as a local folder
        torch.load(Path(d) / "state.pt")

A URI is never resolved as a local path (`config/paths.is_uri` is the one test). S3-compatible
servers (MinIO, moto, Ceph) are reached with the standard `AWS_ENDPOINT_URL` environment variable,
which pyarrow (these helpers, Ray Train/Tune/Data storage) and boto3 (MLflow) all read; credentials
come from the usual AWS variables or the instance profile. On a cluster set them for every node
(cluster environment or `ray job submit --runtime-env-json '{"env_vars": ...}'`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(value: str) -> bool:
    """The one test for "not a local path" (re-exported by config/paths.py)."""
    return "://" in str(value)

RAY_PACKAGE_MARK = "_ray_pkg_"
"""Ray unpacks a job's working_dir into `.../runtime_resources/working_dir_files/_ray_pkg_<hash>/`:
anything written there vanishes with Ray's temp folder."""


URI_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")
"""Schemes pyarrow.fs.FileSystem.from_uri opens (pyarrow 25)."""


def in_ray_job() -> bool:
    """True in a `ray job submit` driver (Ray sets RAY_JOB_CONFIG_JSON_ENV_VAR for it) or anywhere
    whose working directory is an unpacked job package."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")) or RAY_PACKAGE_MARK in os.getcwd()


def storage_root(path: str, key: str = "run.storage_path") -> str:
    """`run.storage_path` as every consumer uses it: a URI is kept as written (its scheme checked
    by pyarrow); a local path is made absolute. Inside a Ray job a relative path, or one inside the
    job's unpacked package, raises: results would land in Ray's temp folder and vanish."""
    path = str(path)
    if is_uri(path):
        scheme = path.split("://", 1)[0].lower()
        if scheme not in URI_SCHEMES:  # checked without contacting the storage (no credentials needed)
            raise ValueError(f"{key}={path}: not a URI pyarrow can open (scheme '{scheme}'); use one of "
                             f"{', '.join(s + '://' for s in URI_SCHEMES)} or a local path")
        return path
    absolute = os.path.abspath(os.path.expanduser(path))
    if in_ray_job() and (not os.path.isabs(os.path.expanduser(path)) or RAY_PACKAGE_MARK in absolute):
        raise ValueError(f"{key}={path}: inside a Ray job this resolves to {absolute}, Ray's temporary "
                         f"package folder, which is deleted with the job; set {key} to shared storage "
                         f"(s3://bucket/prefix, gs://..., or an NFS mount path present on every node)")
    return absolute


def local_path(path: str) -> str | None:
    """The local folder of a local path or `file://` URI; None for remote storage."""
    path = str(path)
    if not is_uri(path):
        return os.path.abspath(os.path.expanduser(path))
    if path.lower().startswith("file://"):  # parsed, not opened: from_uri would contact remote stores
        return pafs.FileSystem.from_uri(path)[1]
    return None


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or URI."""
    path = str(path)
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def join(root: str, *parts: str) -> str:
    """`root/part/...` for a URI (posix separators) or a local path."""
    root = str(root)
    if not is_uri(root):
        return os.path.join(root, *parts)
    return "/".join([root.rstrip("/"), *(str(p).strip("/") for p in parts)])


def parent(path: str) -> str:
    """The folder holding `path` (a URI or a local path)."""
    path = str(path)
    if not is_uri(path):
        return os.path.dirname(os.path.abspath(path))
    return path.rstrip("/").rsplit("/", 1)[0]


def file_type(path: str) -> pafs.FileType:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type


def is_file(path: str) -> bool:
    return file_type(path) == pafs.FileType.File


def is_dir(path: str) -> bool:
    return file_type(path) == pafs.FileType.Directory


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_bytes(path: str, data: bytes) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0] if "/" in p else p, recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def list_files(folder: str, suffix: str = "") -> list[str]:
    """Every file below `folder` whose name ends with `suffix`, sorted, spelt like `folder`
    (a URI keeps its scheme and host, so the results can be passed on as they are)."""
    fs, p = filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    base = str(folder).rstrip("/")
    return sorted(base + i.path[len(p.rstrip("/")):] for i in infos
                  if i.type == pafs.FileType.File and i.path.endswith(suffix))


def delete_dir(path: str) -> None:
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def upload_dir(local_dir: str | Path, dest: str) -> None:
    """Copy a local folder's contents into `dest` (a URI or local path)."""
    fs, p = filesystem(dest)
    fs.create_dir(p, recursive=True)
    pafs.copy_files(str(local_dir), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@contextmanager
def local_copy(folder: str) -> Iterator[str]:
    """`folder` as a local folder: itself when local, else a temporary download (deleted on exit)."""
    local = local_path(folder)
    if local is not None:
        yield local
        return
    fs, p = filesystem(folder)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{folder}: no such folder")
    tmp = tempfile.mkdtemp(prefix="ple-adatt-")
    try:
        pafs.copy_files(p, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged(dest: str) -> Iterator[Path]:
    """A local folder to write `dest`'s files into: `dest` itself when local (created), else a
    temporary folder uploaded to `dest` when the block ends without an error."""
    local = local_path(dest)
    if local is not None:
        Path(local).mkdir(parents=True, exist_ok=True)
        yield Path(local)
        return
    tmp = tempfile.mkdtemp(prefix="ple-adatt-")
    try:
        yield Path(tmp)
        upload_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
