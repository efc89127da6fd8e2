"""``tuco.pair_base``: the pair's state and primitive operations, enough for the modules below ModelPair."""

import contextlib
import copy

import pytest
from conftest import PROMPTS, make_pair

from tuco import baselines, decoding, inputs
from tuco.decompose import Decomposition, pt_blocks_needed
from tuco.pair_base import PairBase
from tuco.sampling import Sampling
from tuco.testing import perturbed_copy, tiny_model


def test_the_one_rule_for_which_pt_blocks_run():
    assert pt_blocks_needed(1.0, "nothing") == "none"
    assert pt_blocks_needed(1.0, "last") == "last"
    assert pt_blocks_needed(1.0, "all") == "all"
    assert {pt_blocks_needed(0.5, r) for r in ("nothing", "last", "all")} == {"all"}
    with pytest.raises(ValueError, match="reads must be"):
        pt_blocks_needed(1.0, "some")


def test_steered_follows_the_rule(tok):
    pair = make_pair("llama", tok)
    assert isinstance(pair.steered(1.0), contextlib.nullcontext)
    last = pair.steered(1.0, "last")
    assert isinstance(last, Decomposition) and last.last_only
    steered = pair.steered(0.5, "last")
    assert isinstance(steered, Decomposition) and not steered.last_only and steered.alpha == 0.5


def test_a_plain_base_is_enough_for_decoding_and_the_baselines(tok):
    pt = tiny_model("llama")
    base = PairBase(pt, perturbed_copy(pt, scale=0.3), tok)
    full = make_pair("llama", tok)
    ids = base.encode(PROMPTS)
    events = [e for step in decoding.decode(base, ids, [Sampling(max_new_tokens=3)] * len(ids)) for e in step]
    same = [e for step in full.decode(ids, [Sampling(max_new_tokens=3)] * len(ids)) for e in step]
    assert [(e.index, e.token_id) for e in events] == [(e.index, e.token_id) for e in same]
    batch = inputs.pad(ids, base.pad_id, "left")
    assert len(baselines.output_contribution_of(base)(batch)) == len(ids)


def test_the_context_is_the_smaller_of_the_config_s_and_the_tokenizer_s(tok):
    pair = make_pair("llama", tok)
    config = pair.finetuned.config.max_position_embeddings
    assert pair.context_length == config and pair.room(10) == config - 10
    short = copy.copy(tok)
    short.model_max_length = 40
    limited = PairBase(pair.pretrained, pair.finetuned, short)
    assert limited.context_length == 40
    with pytest.raises(ValueError, match="more than the model's context of 40"):
        limited.check_prompts([[5] * 38], reserve=3)


def test_state_comes_from_the_constructor(tok):
    pt = tiny_model("llama")

    def fmt(chat):
        return chat[-1]["content"]

    base = PairBase(pt, perturbed_copy(pt), tok, prompt_format=fmt, dtype_reason="explicit")
    assert base.prompt_format is fmt and base.dtype_reason == "explicit" and base.padding == {}
    assert base.encode([[{"role": "user", "content": "Hi"}]]) == base.encode(["Hi"])
