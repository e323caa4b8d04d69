"""Model sources: the seeded tiny model, local HF folders, the cached GGUF conversion, device choice."""

import os
import time

import pytest
import torch

from gtp_pipeline.core import models
from gtp_pipeline.core.models import ModelSourceError, TinyModelConfig


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second OpenMP thread only adds barrier stalls, badly so on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_tiny_model_is_seeded_and_its_id_tracks_the_weights():
    a, b = models.tiny_model(), models.tiny_model()
    c = models.tiny_model(TinyModelConfig(seed=1))
    ids = torch.tensor([[5, 9, 200, 3]])
    assert a.model_id == b.model_id != c.model_id
    assert torch.equal(logits(a.model, ids), logits(b.model, ids))
    assert not torch.equal(logits(a.model, ids), logits(c.model, ids))
    assert a.model.config.vocab_size == len(a.tokenizer) == 384
    assert not a.model.training


def test_tiny_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.tiny_model()
    assert torch.equal(torch.rand(3), expected)


def test_tiny_tokenizer_needs_no_files_and_round_trips_bytes():
    tok = models.tiny_tokenizer()
    text = "Grüße, 世界!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and tok.decode(ids) == text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_pick_device_auto_is_cpu_without_a_gpu_and_cuda_is_refused():
    assert models.pick_device("auto") == torch.device("cpu")
    assert models.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelSourceError, match="cuda"):
        models.pick_device("cuda")


def test_hf_folder_reload_gives_the_same_logits_and_a_stable_id(tmp_path):
    tiny = models.tiny_model()
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    first, second = models.hf_folder_model(tmp_path / "m"), models.hf_folder_model(tmp_path / "m")
    ids = torch.tensor([[1, 50, 60, 70]])
    assert torch.equal(logits(first.model, ids), logits(tiny.model, ids))
    assert first.model_id == second.model_id and first.model_id.startswith("m-")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_missing_folder_and_unknown_source_fail_clearly(tmp_path):
    with pytest.raises(ModelSourceError, match="config.json"):
        models.hf_folder_model(tmp_path)
    with pytest.raises(ModelSourceError, match="unknown model source"):
        models.load_model("hub")


@pytest.mark.slow
def test_gguf_conversion_is_cached_and_reloads_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    gguf = models.smollm2_gguf_path()
    folder = models.convert_gguf(gguf, tmp_path)
    assert folder == models.converted_folder(gguf, tmp_path) and models.is_converted(gguf, tmp_path)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # the temp folder was renamed away

    t = time.perf_counter()
    loaded = models.gguf_model(gguf, tmp_path)  # cached: no second conversion
    assert time.perf_counter() - t < 15
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
    ).eval()
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    torch.testing.assert_close(logits(loaded.model, ids), logits(direct, ids), rtol=0, atol=1e-5)
    assert loaded.model_id == folder.name and loaded.tokenizer.chat_template


@pytest.mark.cuda
def test_tiny_model_gives_the_same_logits_on_cuda():
    tiny = models.tiny_model()
    ids = torch.tensor([[1, 50, 60, 70]])
    cpu = logits(tiny.model, ids)
    gpu = logits(tiny.model.to(models.pick_device("cuda")), ids.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)
