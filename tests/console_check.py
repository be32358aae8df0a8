"""What a training job's console must look like (issue 19): short, nothing printed twice, no Ray
internals. A plain function so the job-run integration test can apply it to the output it captured."""
from __future__ import annotations

import re

MAX_LINES = 40
RAY_INTERNAL = ("Reporting training result", "Progress bars disabled", "execution finished",
                "Creating initial MLflow database tables", "Downloading artifacts")
# Not listed: Ray 2.60's TrainController logs one C++ error line about its PreemptionWatcher actor
# ("has constructor arguments in the object store and max_restarts > 0") that no setting silences
# short of hiding every core-worker error; it counts towards MAX_LINES.
_PREFIX = re.compile(r"^(\x1b\[\d+m)?\((\w+) pid=\d+(, ip=[\d.]+)?\)(\x1b\[0m)? ")


def console_problems(text: str, max_lines: int = MAX_LINES) -> list[str]:
    """Problems with a job's console output (empty list: fine). A line repeated verbatim (after
    dropping Ray's `(Actor pid=..)` prefix) counts as printed twice; blank lines are ignored."""
    lines = [_PREFIX.sub("", ln) for ln in text.splitlines() if ln.strip()]
    problems = []
    if len(lines) > max_lines:
        problems.append(f"{len(lines)} lines > {max_lines}")
    seen: set[str] = set()
    for ln in lines:
        if ln in seen and ln.startswith("[ple-adatt]"):
            problems.append(f"printed twice: {ln[:120]}")
        seen.add(ln)
        problems += [f"Ray/MLflow internal line: {ln[:120]}" for pat in RAY_INTERNAL if pat in ln]
    return problems
