"""Data: sources in the original's formats, ToyWorld, tokenization, unrolling, batching."""
