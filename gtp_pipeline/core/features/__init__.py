"""Gradient features: per-example LoRA gradients, their projection (CPU and Triton), featurizing into stores, and trajectories over checkpoints read back from them."""
