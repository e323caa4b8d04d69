"""Models and the one LoRA recipe: loading (offline, no remote code), tokenizing, resumable training."""
