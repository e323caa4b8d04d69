"""Model sources: the seeded tiny model, local HF folders, the cached GGUF conversion, device choice."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from gtp_pipeline.core.config.config_errors import ConfigurationError
from gtp_pipeline.core.training import models
from gtp_pipeline.core.training.models import ModelSourceError, TinyModelConfig


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
    with pytest.raises(ConfigurationError, match="is not a folder"):
        models.hf_folder_model(tmp_path / "nowhere")
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
    direct = AutoModelForCausalLM.from_pretrained(  # trust_remote_code=False: never a folder's own code
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


EVIL_CODE = "import pathlib; pathlib.Path({sentinel!r}).write_text('the folder ran its code')\n"


def write_folder_with_its_own_code(folder, sentinel, model_type):
    """A model folder whose config points transformers at Python files in the folder (auto_map)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    config.update(
        model_type=model_type,
        auto_map={"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (folder / name).write_text(EVIL_CODE.format(sentinel=str(sentinel)))


def test_a_folder_that_needs_its_own_code_is_refused_without_a_prompt_and_its_code_never_runs(tmp_path):
    sentinel = tmp_path / "ran.txt"
    write_folder_with_its_own_code(tmp_path / "m", sentinel, model_type="evil_lm")
    code = f"from gtp_pipeline.core.training.models import hf_folder_model; hf_folder_model({str(tmp_path / 'm')!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "ModelFolderError" in done.stderr and "never runs code shipped in a model folder" in done.stderr
    assert "evil_lm" in done.stderr and "[y/N]" not in done.stdout + done.stderr
    assert not sentinel.exists()


def test_a_folder_transformers_implements_loads_with_transformers_code_despite_auto_map(tmp_path):
    sentinel = tmp_path / "ran.txt"
    tiny = models.tiny_model()
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    write_folder_with_its_own_code(tmp_path / "m", sentinel, model_type="llama")
    loaded = models.hf_folder_model(tmp_path / "m")
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and not sentinel.exists()
