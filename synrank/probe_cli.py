"""`synrank probe`: level fidelity of a generation folder by an LLM judge.

    synrank probe --generated DIR [--model M] [--limit N] [--out DIR] [--queries PATH] [--overwrite]
                  [--config FILE] [--address ADDR] [annotate.KEY=VALUE ...]

Grades every passage of a `synrank generate` folder against its own query with the annotation judge
(`synrank.fidelity_probe`), on the scale the passages were generated on, and writes OUT/_probe.json
(default OUT: GENERATED/_probe). `--config` and the overrides configure the judge as for
`synrank annotate` (an `annotate:` section or keys, `annotate.` prefix optional); rerunning resumes.
"""

from __future__ import annotations

import argparse

from synrank.config import add_config_options


def register(subparsers: argparse._SubParsersAction) -> None:
    probe = subparsers.add_parser(
        "probe", help="level fidelity of generated passages by an LLM judge (judged grade vs intended level)",
        description="Judge every passage of a `synrank generate` folder against its own query with the annotation "
        "judge (choice decoding, strict parsing, retries; resumable in OUT) on the generation's scale, and write "
        "OUT/_probe.json: per level the judged-grade distribution, mean judged grade, exact and within-one "
        "agreement; overall Spearman and Cohen's kappa; the generation report's MiniLM Spearman beside them.")
    probe.add_argument("--generated", required=True, metavar="DIR", help="a synrank generate output folder")
    probe.add_argument("--model", help="judge model (default: the config's annotate.model, 'default' = SmolLM2-135M)")
    probe.add_argument("--limit", type=int, dest="probe_limit", metavar="N", help="only the first N queries")
    probe.add_argument("--out", dest="probe_out", metavar="DIR", help="judgments and _probe.json (default: GENERATED/_probe)")
    probe.add_argument("--queries", dest="probe_queries", metavar="PATH",
                       help="query texts (default: the queries path in GENERATED/_report.json)")
    probe.add_argument("--overwrite", action="store_true", help="discard the judgments OUT holds and start over")
    add_config_options(probe)
    probe.set_defaults(handler=_probe)


def _probe(args: argparse.Namespace) -> int:
    from synrank.annotate.cli import annotate_config
    from synrank.fidelity_probe import PROBE_FILE, format_summary, probe
    from synrank.storage import join

    cfg, address = annotate_config(args)
    out = args.probe_out or join(args.generated.rstrip("/"), "_probe")
    summary = probe(args.generated, out, cfg=cfg, address=address, queries=args.probe_queries,
                    limit=args.probe_limit, overwrite=args.overwrite or cfg.overwrite)
    print(format_summary(summary))
    print(f"wrote {join(out, PROBE_FILE)}")
    return 0
