"""The pipeline's passes, one module each."""
