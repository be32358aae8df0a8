#!/usr/bin/env bash
# A real full disk, by hand (docs/results.md "Full disk"): a 4 MB tmpfs, nearly filled, as run.storage_path.
# Needs root or user namespaces:  unshare -rm bash tests/full_disk.sh   (or sudo unshare -m bash ...)
# 1. the default run.min_free_mb refuses the run; 2. with the check off, MLflow's store creation hits
# the full disk: one error naming the disk, no half-built mlflow.db left; 3. space freed: the rerun
# creates a complete store (the train job would start Ray next).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/platform
PY=${PY:-.venv/bin/python}
W=$(mktemp -d); M=$W/mnt; mkdir -p "$M"
mount -t tmpfs -o size=4m tmpfs "$M"
DATA=$($PY -c "import sys; sys.path.insert(0,'tests'); from tiny_data import write_tiny_dataset; print(write_tiny_dataset('$W/tiny', rows=300))")
head -c 3900000 /dev/zero > "$M/filler"; df -k "$M" | tail -1
echo "--- 1: default run.min_free_mb on a nearly full disk"
$PY jobs/train.py --config configs/smoke/tiny.yaml dataset="$DATA" run.storage_path="$M/runs"; echo "exit=$?"
echo "--- 2: run.min_free_mb=0: the disk fills while MLflow creates its store"
$PY jobs/train.py --config configs/smoke/tiny.yaml dataset="$DATA" run.storage_path="$M/runs" run.min_free_mb=0 2>&1 \
  | grep -v "INFO"; echo "exit=${PIPESTATUS[0]}"
ls -A "$M/runs"; echo "(files left in runs/: none expected)"
echo "--- 3: space freed; the rerun's store"
rm "$M/filler"
$PY -c "from ple_adatt.tracking.mlflow_tracking import resolve_tracking_uri as r; print(r(None, '$M/runs'))" 2>&1 | grep -v INFO
$PY -c "from ple_adatt.tracking.store import incomplete_store as i; print('incomplete:', i('$M/runs/mlflow.db'))"
umount "$M"; rm -rf "$W"
