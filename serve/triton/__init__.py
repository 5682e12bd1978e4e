"""Python-backend model files copied into the Triton model repository."""
