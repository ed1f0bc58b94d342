"""What generation and annotation share: LLM engines, their Ray pool and the resumable shards.

Public pieces:

- `engine.EngineSpec`, `engine.SamplingSpec`, `engine.Completion`: what to load, how to sample,
  what comes back; `engine.VLLMEngine` (CUDA or CPU) and `engine.TransformersEngine` behind one
  interface; `engine.spec_from_config` (a stage config's engine settings), `engine.generator_label`
  (the name a model is recorded under);
- `pool.EnginePool` / `pool.run_prompts`: engines as Ray actors, any list of prompts in,
  completions out in order; named and detached pools (`synrank engines`);
- `seeds.stable_int`: per-request seeds that are the same in every process and run;
- `shards`: outputs written shard by shard (`part-NNNNN.parquet`), and which shards a rerun skips.

Nothing here imports a stage: `synrank.generate` and `synrank.annotate` are its users.
"""
