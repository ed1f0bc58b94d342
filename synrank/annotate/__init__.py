"""LLM relevance annotation (`synrank annotate`): graded labels for real (query, passage) pairs.

Public pieces:

- `pipeline.annotate(AnnotateConfig, pool=None)`: candidates -> engine judge -> resumable sharded
  output (OUT/qrels.parquet, source=llm; the folder reads as qrels); `pipeline.judge_pairs` for
  any table of pairs, with any `Judge` (`FunctionJudge` for rule-based or API judges);
- `candidates.select_candidates`: BM25 or dense top-n, plus the human-judged passages;
- `prompts.build_prompt` (versioned), `parse.parse_grade` (strict, never raises);
- `engine.EngineJudge`: the judge on an `EnginePool` of `synrank.llm` (choice decoding);
- `merge.merge_qrels`: human + LLM qrels under a precedence, with a human-query fraction;
- `agreement.agreement` / `cohens_kappa`: confusion, weighted kappas, positive P/R, heatmap;
- `consistency.check_consistency` / `filter_synthetic`: judged grade vs intended level of
  synthetic passages, and the drop / relabel filter.
"""
