"""``tuco.sampling``: one vocabulary of sampling settings, translated once for each decoder."""

import pytest
import torch
from conftest import PROMPTS, make_pair
from transformers import GenerationConfig

from tuco.sampling import Sampling


def test_of_model_is_greedy_without_do_sample_and_the_model_s_own_settings_with_it():
    config = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9)
    greedy = Sampling.of_model(config, False, temperature=1.5, max_new_tokens=7, seed=2)
    assert (greedy.temperature, greedy.max_new_tokens, greedy.seed) == (0.0, 7, 2)
    sampled = Sampling.of_model(config, True, top_k=None)
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (
        0.6,
        0.9,
        50,
    )  # top-k: transformers' default
    given = Sampling.of_model(config, True, temperature=1.2, top_k=5)
    assert (given.temperature, given.top_p, given.top_k) == (1.2, 0.9, 5)


def test_generate_kwargs_translate_each_setting():
    assert Sampling(max_new_tokens=3).generate_kwargs() == {"max_new_tokens": 3, "do_sample": False}
    kwargs = Sampling(max_new_tokens=3, temperature=0.7, top_p=0.8, top_k=4, stop="!").generate_kwargs("tok")
    assert kwargs == {
        "max_new_tokens": 3,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 4,
        "stop_strings": ["!"],
        "tokenizer": "tok",
    }


@pytest.mark.parametrize(
    "field, value, words",
    [("temperature", -1, "at least 0"), ("top_p", 0, "(0, 1]"), ("max_new_tokens", 0, "max_new_tokens")],
)
def test_bad_settings_are_refused(field, value, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("]", r"\]")):
        Sampling(**{field: value})


def test_both_decoders_read_the_same_settings_the_same_way(tok):
    pair = make_pair("llama", tok)
    plain = pair.generate(PROMPTS, max_new_tokens=6, temperature=0)
    assert plain == pair.generate(PROMPTS, max_new_tokens=6, do_sample=False)  # generate's own words
    assert plain == [g.text for g in pair.generate_with_tuco(PROMPTS, max_new_tokens=6, temperature=0)]
    with pytest.raises(ValueError, match="torch.manual_seed"):
        pair.generate(PROMPTS, max_new_tokens=2, temperature=1.0, seed=1)


def test_next_token_keeps_top_k_and_top_p():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert Sampling(temperature=1.0, top_k=1).next_token(logits, 1, gen) == 1
    picks = {Sampling(temperature=1.0, top_p=0.5).next_token(logits, 1, gen) for _ in range(50)}
    assert picks <= {1, 2}
    assert Sampling().next_token(logits, 3, None) == 3  # greedy: the batched argmax given


def test_the_sampler_survives_extreme_settings():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([3e38, -3e38, 1.0, 0.0])  # finite, but they overflow when divided naively
    assert Sampling(temperature=0.001).next_token(logits, 0, gen) == 0
    assert Sampling(temperature=1.0, top_p=5e-324).next_token(torch.tensor([0.1, 2.0, 0.3]), 1, gen) == 1
