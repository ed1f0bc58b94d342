"""Graded synthetic passage generation (Paper A's training data), on the LLM engines of `synrank.llm`.

Public pieces:

- `pipeline.generate(GenerateConfig, ...)`: the `synrank generate` run (Ray Data, resumable shards);
- `layout`: the files of its output folder (`part_path`, `errors_path`, `stats_path`, `ERRORS`);
- `prompts.level_prompt`, `parse.parse_passage`, `swap.swap_partners`, `report.build_report`.

The engines, their Ray pool (`synrank.llm.pool.EnginePool`) and the shard-and-resume helpers
(`synrank.llm.shards`) live in `synrank.llm`, shared with the annotation stage.
"""
