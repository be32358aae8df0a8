"""cluster.yaml must be a valid Ray cluster-launcher config (Ray's own schema + its defaults pass)."""
from pathlib import Path

import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_validates_against_ray_autoscaler_schema():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(fillout_defaults(raw))  # fillout_defaults adds what `ray up` adds (e.g. cluster_synced_files)
    assert raw["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    node_types = raw["available_node_types"]
    assert node_types[raw["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in node_types.values())
    assert any("pip install" in c and "-e /home/ray/ple-adatt" in c for c in raw["setup_commands"])
