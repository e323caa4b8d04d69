"""ComputeResource: which torch device the heavy stages use (auto: CUDA when present, else CPU)."""

import importlib.util

import dagster as dg


class ComputeResource(dg.ConfigurableResource):
    """The device for gradients, training and evaluation. Never mutated: `resolved_device()` returns the choice."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1"
    torch_threads: int = 0  # 0 keeps torch's default (one per core)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        if importlib.util.find_spec("torch") is None:
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def configure_torch(self) -> str:
        """Apply the thread setting and return the device string; call at the top of a torch-heavy asset."""
        import torch

        if self.torch_threads > 0:
            torch.set_num_threads(self.torch_threads)
        return self.resolved_device()
