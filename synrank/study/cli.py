"""`synrank study`: run (or resume) a study, and rebuild its report.

    synrank study --config FILE [--fresh] [--retry-failed] [--no-report] [--address ADDR] [KEY=VALUE ...]
    synrank study report DIR [report.KEY=VALUE ...]

Overrides are dotted keys of the StudyConfig (``space.seeds=[0,1,2] base.train.max_steps=40
study_dir=runs/s2``). Running a study whose ``study_dir`` already holds one resumes it: finished
trials are kept and only the rest run. ``--fresh`` starts a new Tune experiment in the same
directory (trials whose results are complete are still not trained again).
"""

from __future__ import annotations

import argparse
import sys

from synrank.config import add_config_options


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="Ray Tune study: objectives x relevance levels x label sources, with a significance report",
        description="Run a Ray Tune study whose trials build training groups, train with Ray Train and evaluate "
        "on the dev and test collections, then write a report (Markdown, CSV, PNG plots) of every "
        "configuration's mean and 95% interval over seeds and its significance against a baseline. "
        "`synrank study report DIR` rebuilds the report of a study directory.",
        epilog="examples:\n  synrank study --config jobs/configs/study-tiny.yaml\n"
               "  synrank study --config jobs/configs/study-cranfield.yaml space.losses=[infonce]\n"
               "  synrank study report runs/study-tiny",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("words", nargs="*", metavar="report DIR",
                   help="'report DIR': (re)write the report of the study in DIR; KEY=VALUE: config overrides")
    p.add_argument("--fresh", action="store_true",
                   help="start a new Tune experiment in study_dir instead of resuming (completed trials are reused; "
                        "those trained under another base config are trained again)")
    p.add_argument("--retry-failed", dest="retry_failed", action="store_true",
                   help="when resuming, start the failed trials over (default: they stay failed)")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write the report at the end")
    add_config_options(p)
    p.set_defaults(handler=_study)


def _study(args: argparse.Namespace) -> int:
    words = [w for w in args.words if "=" not in w]
    overrides = [w for w in args.words if "=" in w] + list(args.overrides or [])
    if words:
        if words[0] != "report" or len(words) != 2:
            print("synrank study: expected `synrank study --config FILE [KEY=VALUE ...]` or "
                  "`synrank study report DIR`", file=sys.stderr)
            return 2
        return _report(words[1], args.config, overrides)
    if not args.config:
        print("synrank study: --config FILE is required (see jobs/configs/study-*.yaml)", file=sys.stderr)
        return 2
    from synrank.study.load import load_study
    from synrank.study.driver import run_study

    study = load_study(args.config, overrides)
    result = run_study(study, address=args.address, fresh=args.fresh, retry_failed=args.retry_failed,
                       write_report=args.report)
    print(f"study {study.name}: {result.count('completed')} completed, {result.count('failed')} failed, "
          f"{result.count('stopped')} stopped early ({result.new_trials} trained now, "
          f"{'resumed' if result.restored else 'new experiment'}) in {result.seconds:.0f} s")
    for t in result.trials:
        if t.status == "failed":
            print(f"  failed: {t.trial_id}: {(t.error or '').strip().splitlines()[0] if t.error else ''}")
    if result.count("failed"):
        print("  (errors in <study_dir>/trials/<trial>/error.txt; rerun with --retry-failed to try them again)")
    if result.report:
        print(f"report: {result.report['markdown']}\n        {result.report['csv']}")
    return 0 if result.count("completed") else 1


def _report(study_dir: str, config: str | None, overrides: list[str]) -> int:
    from synrank.study.report import write_report

    from synrank.study.report import load_saved_study
    from synrank.study.store import StudyStore

    if config:
        from synrank.study.load import load_study

        study = load_study(config, overrides)
    else:  # the study as it was run, with e.g. report.baseline changed by overrides
        study = load_saved_study(StudyStore(study_dir), overrides)
    paths = write_report(study_dir, study)
    print(f"report: {paths['markdown']}\n        {paths['csv']}")
    for key, path in paths.items():
        if key.startswith("plot:"):
            print(f"        {path}")
    return 0
