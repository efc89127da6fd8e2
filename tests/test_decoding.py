"""Generation that reports TuCo as it goes (tuco.decoding): exact against cache-free recomputation."""

import pytest
import torch
from conftest import PROMPTS, make_pair

from tuco import decoding
from tuco.sampling import Sampling

ARCHS = ["llama", "gemma3_text", "gpt2", "mistral", "lfm2", "mixtral"]


def reference_token_tucos(pair, prompt, token_ids, alpha):
    """TuCo where each generated token was chosen, from one cache-free forward over prompt + tokens."""
    ids = pair.encode([prompt])[0]
    result = pair.score([ids + token_ids[:-1]], alpha=alpha, per_token=True, fast=False)[0]
    return result.tuco_tokens[len(ids) - 1 :]


@pytest.mark.parametrize("alpha", [1.0, 0.6])
@pytest.mark.parametrize("arch", ARCHS)
def test_token_tuco_equals_cache_free_recomputation(arch, alpha, tok):
    pair = make_pair(arch, tok)
    generations = pair.generate_with_tuco(PROMPTS, alpha, max_new_tokens=6, batch_size=4)
    prompt_scores = pair.score(PROMPTS, alpha=alpha)
    texts = pair.generate(PROMPTS, alpha, max_new_tokens=6, do_sample=False)
    for prompt, gen, score, text in zip(PROMPTS, generations, prompt_scores, texts, strict=True):
        assert len(gen.token_ids) == len(gen.tokens_tuco) and gen.token_ids
        assert gen.finish_reason == ("length" if len(gen.token_ids) == 6 else "stop")  # 6 or end of sequence
        reference = reference_token_tucos(pair, prompt, gen.token_ids, alpha)
        assert gen.tokens_tuco == pytest.approx(reference, abs=1e-5)
        assert gen.prompt_tuco == pytest.approx(score.tuco, abs=1e-5) == gen.tokens_tuco[0]
        assert gen.text == text  # the FTC-alpha model's own greedy generation
        assert gen.prompt_tokens == len(pair.encode([prompt])[0])


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_prompt_monitor_gives_the_same_tokens_and_prompt_tuco(alpha, tok):
    pair = make_pair("gemma3_text", tok)
    full = pair.generate_with_tuco(PROMPTS, alpha, max_new_tokens=5)
    light = pair.generate_with_tuco(PROMPTS, alpha, max_new_tokens=5, monitor="prompt")
    for a, b in zip(full, light, strict=True):
        assert a.token_ids == b.token_ids and b.tokens_tuco is None
        assert a.prompt_tuco == pytest.approx(b.prompt_tuco, abs=1e-5)


def test_prompt_monitor_at_alpha_one_skips_the_pt_blocks_while_decoding(tok):
    pair = make_pair("llama", tok)
    calls = []
    handles = [b.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[1])) for b in pair.pt_blocks]
    try:
        pair.generate_with_tuco(["Hello"], monitor="prompt", max_new_tokens=4)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == pair.num_layers  # once each, in the prefill: none while decoding


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "lfm2"])
def test_a_result_does_not_depend_on_its_batch(arch, tok):
    """Rows finish at different steps (own budgets, one sampled with its own seed) and leave the batch."""
    pair = make_pair(arch, tok)
    ids = pair.encode(PROMPTS)
    settings = [
        Sampling(max_new_tokens=2),
        Sampling(max_new_tokens=7, temperature=1.0, seed=3),
        Sampling(max_new_tokens=4),
        Sampling(max_new_tokens=5, temperature=0.8, top_p=0.9, top_k=20, seed=1),
    ]
    batched = {}
    for events in decoding.decode(pair, ids, settings, alpha=0.8):
        for e in events:
            batched.setdefault(e.index, []).append((e.token_id, e.tuco))
    for i, (row, sampling) in enumerate(zip(ids, settings, strict=True)):
        alone = [
            (e.token_id, e.tuco) for es in decoding.decode(pair, [row], [sampling], alpha=0.8) for e in es
        ]
        assert [t for t, _ in batched[i]] == [t for t, _ in alone]
        assert [u for _, u in batched[i]] == pytest.approx([u for _, u in alone], abs=1e-5)
        assert 0 < len(alone) <= sampling.max_new_tokens


def test_seeds_repeat_and_differ(tok):
    pair = make_pair("llama", tok)

    def sample(seed):
        return pair.generate_with_tuco(["Hi"], max_new_tokens=12, temperature=1.5, seed=seed)[0].token_ids

    assert sample(1) == sample(1) and sample(1) != sample(2)


def test_stream_events_concatenate_to_the_text(tok):
    pair = make_pair("llama", tok)
    events = list(pair.stream_with_tuco(PROMPTS, 0.9, max_new_tokens=5, batch_size=3))
    generations = pair.generate_with_tuco(PROMPTS, 0.9, max_new_tokens=5, batch_size=3)
    for i, gen in enumerate(generations):
        mine = [e for e in events if e.index == i]
        assert "".join(e.text for e in mine) == gen.text
        assert [e.tuco for e in mine] == gen.tokens_tuco
        assert mine[0].prompt_tuco == gen.prompt_tuco and all(e.prompt_tuco is None for e in mine[1:])
        assert mine[-1].finish_reason in ("length", "stop") and all(
            e.finish_reason is None for e in mine[:-1]
        )


def test_stop_strings_cut_the_text_and_are_never_sent(tok):
    pair = make_pair("llama", tok)
    greedy = pair.generate_with_tuco(["Hello"], max_new_tokens=12)[0]
    assert len(greedy.text) >= 6  # the byte tokenizer: one character per token
    stop = greedy.text[3:6]
    cut = greedy.text.index(stop)
    events = list(pair.stream_with_tuco(["Hello"], max_new_tokens=12, stop=[stop, "\x00never"]))
    assert "".join(e.text for e in events) == greedy.text[:cut]
    assert events[-1].finish_reason == "stop" and len(events) == cut + len(stop)


def test_end_of_sequence_stops(tok):
    pair = make_pair("llama", tok)
    greedy = pair.generate_with_tuco(["Hello"], max_new_tokens=8)[0]
    config = pair.finetuned.generation_config
    before = config.eos_token_id
    config.eos_token_id = [greedy.token_ids[2]]
    try:
        gen = pair.generate_with_tuco(["Hello"], max_new_tokens=8)[0]
    finally:
        config.eos_token_id = before
    stop_at = greedy.token_ids.index(greedy.token_ids[2]) + 1
    assert gen.token_ids == greedy.token_ids[:stop_at] and gen.finish_reason == "stop"


def test_cancelled_rows_stop_and_leave_the_others_alone(tok):
    pair = make_pair("llama", tok)
    ids = pair.encode(PROMPTS)
    settings = [Sampling(max_new_tokens=6)] * len(ids)

    def tokens(steps):
        return [[e.token_id for es in steps for e in es if e.index == i] for i in range(len(ids))]

    whole = tokens(list(decoding.decode(pair, ids, settings)))
    steps: list = []
    for events in decoding.decode(pair, ids, settings, cancelled=lambda i: i == 1 and len(steps) >= 2):
        steps.append(events)
    cut = tokens(steps)
    assert cut[1] == whole[1][:2] and [cut[i] for i in (0, 2, 3)] == [whole[i] for i in (0, 2, 3)]


def test_adapter_mode(tok):
    from peft import LoraConfig, get_peft_model

    from tuco import ModelPair
    from tuco.testing import tiny_model

    base = tiny_model("llama")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.3)
    pair = ModelPair(finetuned=peft_model, tokenizer=tok)
    gen = pair.generate_with_tuco(["Hello there"], 0.5, max_new_tokens=4)[0]
    reference = reference_token_tucos(pair, "Hello there", gen.token_ids, 0.5)
    assert gen.tokens_tuco == pytest.approx(reference, abs=1e-5) and max(gen.tokens_tuco) > 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"temperature": -1.0}, "temperature must be at least 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_k": -2}, "top_k must be at least 0"),
        ({"stop": [""]}, "stop must be non-empty strings"),
        ({"seed": -1}, "seed must be at least 0"),
        ({"monitor": "all"}, "monitor must be one of 'tokens', 'prompt'"),
        ({"max_new_tokens": 10_000}, "more than the model's context of 2048 positions less the 10000 new"),
    ],
)
def test_bad_settings_are_refused(options, message, tok):
    pair = make_pair("llama", tok)
    with pytest.raises(ValueError) as error:
        pair.generate_with_tuco(["Hello"], **options)
    assert message in str(error.value)
