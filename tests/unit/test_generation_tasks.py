"""Generation as Ray tasks (data/synthetic._write_ray): each task runs `_chunk_files` for its chunk. Run
here without Ray, in reverse order (as tasks on more CPUs may finish): the files hold the same rows
as the single-process writer, and rerunning a chunk writes the same bytes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ple_adatt.data import synthetic as S

SMALL = {"gmm_fit_rows": 2000, "calibration_rows": 4096}


def _read_all(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])


def test_chunk_tasks_write_the_rows_of_the_single_process_writer(tmp_path):
    cfg = S.GeneratorConfig.model_validate(SMALL)
    rows, chunk_rows = 3 * S.BLOCK_ROWS + 900, S.BLOCK_ROWS  # 4 chunks; splits straddle chunks
    S.generate(cfg, rows=rows, out_dir=tmp_path / "ref")
    sizes = S.split_sizes(rows, cfg.splits)
    bounds, start = {}, 0
    for split, n in sizes.items():
        bounds[split], start = (start, start + n), start + n
        (tmp_path / "tasks" / split).mkdir(parents=True)
    gen = S._Generator(cfg, cfg.seed, sizes["train"])
    n_blocks = -(-rows // S.BLOCK_ROWS)
    written = [S._chunk_files(gen, c, range(c, c + 1), bounds, rows, str(tmp_path / "tasks"), chunk_rows)
               for c in reversed(range(n_blocks))]
    assert sum(sum(w.values()) for w in written) == rows
    for split in sizes:
        assert _read_all(tmp_path / "tasks" / split).equals(_read_all(tmp_path / "ref" / split)), split
    first = tmp_path / "tasks" / "train" / "part-00000.parquet"
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    S._chunk_files(gen, 0, range(0, 1), bounds, rows, str(tmp_path / "tasks"), chunk_rows)
    assert hashlib.sha256(first.read_bytes()).hexdigest() == digest
