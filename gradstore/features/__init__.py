"""Model-side math, no storage: tokenisation and batching, model loading and the warmup,
per-example LoRA gradients, Adam preconditioning, projection, and the other per-example
features (embeddings, in-context utility, n-grams) that artifacts are made of."""
