"""Choosing examples: GTP and its joint variants, NNLS, the OMP and top-k/random baselines, the method registry, and statistics of a selection."""
