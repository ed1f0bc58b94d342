"""Graded synthetic passage generation (Paper A's training data) and the LLM engines on Ray.

Public pieces:

- `pipeline.generate(GenerateConfig, ...)`: the `synrank generate` run (Ray Data, resumable shards);
- `pool.EnginePool` / `pool.run_prompts`: LLM engines as Ray actors, any list of prompts in,
  completions out in order - shared with the annotation stage;
- `engine.EngineSpec`, `engine.SamplingSpec`, `engine.Completion`: what to load, how to sample,
  what comes back; `engine.VLLMEngine` (CUDA or CPU) and `engine.TransformersEngine`;
- `prompts.level_prompt`, `parse.parse_passage`, `swap.swap_partners`, `report.build_report`.
"""
