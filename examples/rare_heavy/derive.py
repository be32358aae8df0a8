"""examples/rare_heavy: add a heavy-tailed regression target to a generated synthetic dataset (acceptance, issue 17):
y_heavy = exp(mu(x) + eps), mu = 0.8 * standardised ltv oracle, eps ~ N(0, 0.75^2) -> lognormal, std ~ 2;
oracle_heavy = E[y|x] = exp(mu + 0.75^2/2). Writes <root>/dataset_heavy.yaml with tasks churn + heavy."""
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

root = Path(sys.argv[1])
rng = np.random.default_rng(7)
m = s = None
for split in ("train", "val", "test"):
    for f in sorted((root / split).glob("*.parquet")):
        t = pq.read_table(f)
        t = t.drop_columns([c for c in ("y_heavy", "oracle_heavy") if c in t.column_names])
        o = t.column("oracle_ltv").to_numpy(zero_copy_only=False)
        if m is None:
            m, s = float(o.mean()), float(o.std())
        mu = 0.8 * (o - m) / s
        t = t.append_column("y_heavy", pa.array(np.exp(mu + 0.75 * rng.normal(size=len(o))), pa.float32()))
        t = t.append_column("oracle_heavy", pa.array(np.exp(mu + 0.75 ** 2 / 2), pa.float32()))
        pq.write_table(t, f)
spec = yaml.safe_load((root / "dataset.yaml").read_text())
spec["name"] = "synthetic_rare_heavy"
keep = [t for t in spec["tasks"] if t["name"] == "churn"]
keep.append({"name": "heavy", "type": "regression", "label": "y_heavy", "group": "lifecycle",
             "hmm_mode": "lifecycle", "oracle": "oracle_heavy"})
spec["tasks"] = keep
(root / "dataset_heavy.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
print(root / "dataset_heavy.yaml")
