"""Issue 18's hostile and unlucky inputs through the job CLIs (tests/hostile_cases.py): each exits
with its code and a one-line message, before Ray starts, losing nothing. In-process (the same
`run_job(main)` entry the scripts use), plus one case as a real subprocess."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hostile_cases import build_cases, check, run_case  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return build_cases(tmp_path_factory.mktemp("hostile"))


def test_every_case_fails_cleanly_before_ray(cases):
    import ray

    problems = {}
    for c in cases:
        code, first, text = run_case(c, in_process=True)
        bad = check(c, code, first, text)
        if bad:
            problems[f"{c.issue} {c.name}"] = bad + [text[-600:]]
    assert not problems, problems
    assert not ray.is_initialized()


def test_one_case_as_a_subprocess(cases):
    """The console path: a fresh interpreter, `python jobs/evaluate.py ...` on the pickled payload."""
    case = cases[0]
    code, first, text = run_case(case, in_process=False)
    assert check(case, code, first, text) == [], text[-2000:]
