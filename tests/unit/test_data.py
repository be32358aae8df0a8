import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ple_adatt.config.loading import load_dataset
from ple_adatt.data.files import DataError, check_dataset
from ple_adatt.data.preprocess import Packer, PreprocessState, fit_preprocessing


def _copy(tiny_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset.parent, root)
    return root


def _edit_spec(root, fn):
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    fn(spec)
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return load_dataset(root / "dataset.yaml")


def test_check_dataset_counts_rows(tiny_dataset):
    assert check_dataset(load_dataset(tiny_dataset)) == {"train": 600, "val": 200}


def test_missing_label_column_names_task_and_column(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    spec = _edit_spec(root, lambda s: s["tasks"][0].update(label="y_nope"))
    with pytest.raises(DataError, match=r"column 'y_nope' \(label of task 'click'\) is missing"):
        check_dataset(spec)


def test_wrong_label_dtype(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    spec = _edit_spec(root, lambda s: s["tasks"][1].update(label="c0"))  # strings for a multiclass task
    with pytest.raises(DataError, match=r"column 'c0' \(label of multiclass task 'stage'\) has type string, expected integers"):
        check_dataset(spec)


def test_multiclass_label_out_of_range(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    spec = _edit_spec(root, lambda s: s["tasks"][1].update(num_classes=2))
    with pytest.raises(DataError, match=r"label 'y_stage' of task 'stage' has values in \[0, 2\], expected integers in \[0, 1\]"):
        check_dataset(spec)


def test_path_matching_no_files_and_unreadable_file(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    spec = _edit_spec(root, lambda s: s["splits"].update(val="nothing_here/*.parquet"))
    with pytest.raises(DataError, match=r"splits.val: .*nothing_here.* matches no parquet files"):
        check_dataset(spec)
    (root / "train" / "part-9.parquet").write_text("not parquet")
    spec = _edit_spec(root, lambda s: s["splits"].update(val="val/"))
    with pytest.raises(DataError, match=r"cannot read parquet file .*part-9.parquet"):
        check_dataset(spec)


def test_empty_split(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    t = pq.read_table(root / "val" / "part-0.parquet").slice(0, 0)
    shutil.rmtree(root / "val")
    (root / "val").mkdir()
    pq.write_table(t, root / "val" / "empty.parquet")
    with pytest.raises(DataError, match="splits.val: 1 file\\(s\\) but 0 rows"):
        check_dataset(load_dataset(root / "dataset.yaml"))


def test_all_problems_reported_together(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    spec = _edit_spec(root, lambda s: (s["tasks"][0].update(label="a"), s["groups"]["num"].update(columns=["x0", "zz"])))
    with pytest.raises(DataError) as e:
        check_dataset(spec)
    assert any("'a'" in p for p in e.value.problems) and any("'zz'" in p for p in e.value.problems)


def test_preprocessing_uses_train_split_only_and_roundtrips(tiny_dataset):
    spec = load_dataset(tiny_dataset)
    st = fit_preprocessing(spec, batch_rows=97)  # odd batch size: streaming must not change the result
    train = pa.concat_tables(pq.read_table(f) for f in sorted((tiny_dataset.parent / "train").glob("*.parquet")))
    x = np.stack([train.column(c).to_numpy() for c in ["x0", "x1", "x2"]], 1)
    np.testing.assert_allclose(st.mean["num"], x.mean(0), atol=1e-6)
    np.testing.assert_allclose(st.std["num"], x.std(0), rtol=1e-5)
    assert st.train_rows == 600
    assert st.cardinalities("cat") == [5, 6]
    assert PreprocessState.from_dict(json.loads(json.dumps(st.to_dict()))) == st


def test_packer_shapes_masks_and_unseen_categories(tiny_dataset):
    spec = load_dataset(tiny_dataset)
    st = fit_preprocessing(spec)
    table = pq.read_table(tiny_dataset.parent / "val" / "part-0.parquet")
    table = table.set_column(table.schema.get_field_index("c0"), "c0", pa.array(["zzz"] * table.num_rows))
    out = Packer(spec, st, ["click", "stage", "value"], with_oracles=True)(table)
    n = table.num_rows
    assert out["feat/num"].shape == (n, 3) and out["feat/num"].dtype == np.float32
    assert out["feat/seq"].shape == (n, 5, 2)
    assert out["cat/cat"].shape == (n, 2) and (out["cat/cat"][:, 0] == 0).all()  # unseen -> 0
    assert (out["cat/cat"][:, 1] > 0).all()
    assert out["label/stage"].dtype == np.int64 and out["label/click"].dtype == np.float32
    assert out["mask/click"].sum() < n and out["mask/stage"].all()  # nulls in y_click are masked
    assert "oracle/click" in out


def test_log1p_numeric_group(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    spec = _edit_spec(root, lambda s: s["groups"]["num"].update(log1p=True))
    st = fit_preprocessing(spec)
    train = pa.concat_tables(pq.read_table(f) for f in sorted((root / "train").glob("*.parquet")))
    x = train.column("x0").to_numpy()
    np.testing.assert_allclose(st.mean["num"][0], (np.sign(x) * np.log1p(np.abs(x))).mean(), atol=1e-6)
