"""cluster.yaml must be a valid Ray cluster-launcher config (Ray's own schema + its defaults pass),
and its rsync excludes must ship the whole package to the nodes."""
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

ROOT = Path(__file__).resolve().parents[2]


def _raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_ray_autoscaler_schema():
    raw = _raw()
    validate_config(fillout_defaults(raw))  # fillout_defaults adds what `ray up` adds (e.g. cluster_synced_files)
    assert raw["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    node_types = raw["available_node_types"]
    assert node_types[raw["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in node_types.values())
    assert any("pip install" in c and "-e \"/home/ray/ple-adatt\"" in c for c in raw["setup_commands"])
    for name, t in node_types.items():  # every node reads/writes S3 and boots the same driver AMI
        assert t["node_config"]["IamInstanceProfile"]["Name"], name
        assert t["node_config"]["ImageId"].startswith(("ami-", "resolve:ssm:")), name
    mlflow = " ".join(raw["head_setup_commands"])
    assert "--artifacts-destination s3://" in mlflow and "--default-artifact-root" not in mlflow
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)  # token auth on everywhere


def rsync_excluded(path: str, patterns: list[str]) -> bool:
    """rsync's --exclude rules for a file `path` relative to the transfer root: a pattern excludes the
    file or any folder above it; a leading '/' anchors it at the root, a trailing '/' matches folders
    only; an unanchored pattern matches the path's trailing components (a bare name: at any depth);
    '*' stays within one name, '**' crosses '/'."""
    parts = path.split("/")
    candidates = [("/".join(parts[:i]), i < len(parts)) for i in range(1, len(parts) + 1)]  # (path, is_dir)
    for pat in patterns:
        dir_only, anchored = pat.endswith("/"), pat.startswith("/")
        core = pat.strip("/")
        rx = re.escape(core).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rx = f"^{rx}$" if anchored else f"(^|/){rx}$"  # unanchored: the trailing components
        for cand, is_dir in candidates:
            if (is_dir or not dir_only) and re.search(rx, cand):
                return True
    return False


def test_rsync_matcher_follows_rsync_rules():
    assert rsync_excluded("platform/ple_adatt/data/files.py", ["data"])  # the old, unanchored bug
    assert not rsync_excluded("platform/ple_adatt/data/files.py", ["/data/"])
    assert rsync_excluded("data/synthetic/dataset.yaml", ["/data/"])
    assert rsync_excluded("a/b/__pycache__/x.pyc", ["**/__pycache__/"])
    assert not rsync_excluded("runs.py", ["/runs/"])  # a folder-only pattern never hits a file


def test_rsync_excludes_keep_every_file_of_the_package():
    try:
        files = subprocess.run(["git", "ls-files", "platform"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    patterns = _raw()["rsync_exclude"]
    assert len(files) > 50 and any(f.startswith("platform/ple_adatt/data/") for f in files)
    dropped = [f for f in files if rsync_excluded(f, patterns)]
    assert dropped == [], f"cluster.yaml rsync_exclude drops package files: {dropped[:10]}"
    for local_only in ("data/synthetic/train/part-0.parquet", ".venv/bin/python", "runs/mlflow.db"):
        assert rsync_excluded(local_only, patterns), local_only


def test_servers_listen_on_the_heads_loopback_unless_opted_in():
    """The MLflow server (no auth) and the dashboard bind 127.0.0.1; the opt-in is documented where
    it is made, and nothing binds 0.0.0.0."""
    raw = _raw()
    commands = raw["head_setup_commands"] + raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    mlflow = next(c for c in raw["head_setup_commands"] if "mlflow server" in c)
    assert "--host 127.0.0.1" in mlflow
    assert any("--dashboard-host=127.0.0.1" in c for c in raw["head_start_ray_commands"])
    assert not any("0.0.0.0" in c for c in commands)
    text = (ROOT / "cluster.yaml").read_text()
    assert "OPT-IN for multi-node tracking" in text and "ray attach cluster.yaml -p 5000" in text


def test_a_loopback_tracking_uri_is_refused_on_a_multi_machine_cluster():
    from ple_adatt.tracking.store import loopback_tracking_problem

    assert loopback_tracking_problem("http://127.0.0.1:5000", {"10.0.0.5", "10.0.0.9"}, "10.0.0.5").startswith(
        "tracking.uri=http://127.0.0.1:5000 is this machine's loopback, but the Ray cluster has nodes at ['10.0.0.9']")
    assert loopback_tracking_problem("http://127.0.0.1:5000", {"10.0.0.5"}, "10.0.0.5") is None  # one machine
    assert loopback_tracking_problem("http://10.0.0.5:5000", {"10.0.0.5", "10.0.0.9"}, "10.0.0.5") is None  # opted in
    assert loopback_tracking_problem("sqlite:////tmp/x.db", {"10.0.0.9"}, "10.0.0.5") is None
