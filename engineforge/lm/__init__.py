"""Decoder LMs (causal language models): engines that generate tokens, the driver that streams them as text, the
quality measures (perplexity, greedy agreement) a build is judged by, and the runtimes that run them."""
