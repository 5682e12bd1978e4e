"""The LM build: a causal-LM checkpoint (Hugging Face directory or .gguf) -> candidate engines (runtime x precision)
-> perplexity and greedy agreement against fp32 -> the fastest within budget as an LM bundle (engineforge.lm)."""
