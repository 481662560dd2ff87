"""Human-readable summaries of analyses and pruning results."""
