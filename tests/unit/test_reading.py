"""The footer-reader pool of Ray Data's parquet reads is sized to the split (no Ray started here)."""
from ple_adatt.data.reading import MAX_FOOTER_ACTORS, footer_actors


def test_one_footer_reader_per_batch_of_ten_files_capped_at_rays_default():
    assert [footer_actors(n) for n in (1, 2, 10, 11, 25, 10_000)] == [1, 1, 1, 2, 3, MAX_FOOTER_ACTORS]

