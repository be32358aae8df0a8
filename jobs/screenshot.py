"""Screenshot an HTML report or a web page (the MLflow UI) in headless Chromium (needs `chromium` on PATH).

    python jobs/screenshot.py runs/<study>/report/report.html docs/img/report.png
    python jobs/screenshot.py "http://127.0.0.1:5000/#/experiments/1/runs/<run_id>" docs/img/mlflow_run.png \
        --size 1440x1100 --wait-ms 15000 --no-trim
--wait-ms gives a JavaScript page (MLflow) virtual time to draw; a report needs none (it is static).
"""
import argparse

from ple_adatt.cli import fail
from ple_adatt.report.screenshot import screenshot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", help="HTML file or http(s) URL")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--size", default="1280x3000", help="window WIDTHxHEIGHT in pixels (default 1280x3000)")
    p.add_argument("--wait-ms", type=int, default=None, help="virtual time for scripts before the shot")
    p.add_argument("--no-trim", action="store_true", help="keep the blank band below a short page")
    args = p.parse_args()
    try:
        width, height = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        fail(ValueError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 1280x3000"))
    try:
        print(screenshot(args.target, args.out, width, height, args.wait_ms, trim=not args.no_trim))
    except RuntimeError as e:
        fail(e)


if __name__ == "__main__":
    main()
