"""Build pipeline: checkpoint -> optimized, validated engine -> Triton model repository."""
