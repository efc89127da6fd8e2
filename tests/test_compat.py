"""Every compatibility error fires, before any compute, naming the mismatching field."""

import pytest
import torch
from conftest import PROMPTS

from tuco import IncompatiblePairError, ModelPair
from tuco.testing import byte_tokenizer, tiny_model


@pytest.mark.parametrize(
    "field, pt_kwargs, ft_kwargs",
    [
        ("num_hidden_layers", {}, {"num_hidden_layers": 4}),
        ("hidden_size", {}, {"hidden_size": 32, "head_dim": 8}),
        ("num_attention_heads", {}, {"num_attention_heads": 2, "head_dim": 16}),
        ("num_key_value_heads", {}, {"num_key_value_heads": 4}),
        ("head_dim", {}, {"head_dim": 8}),
        ("rope_parameters", {}, {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
        ("hidden_act", {}, {"hidden_act": "gelu"}),
    ],
)
def test_architecture_mismatch_names_the_field(field, pt_kwargs, ft_kwargs, tok):
    pt, ft = tiny_model("llama", **pt_kwargs), tiny_model("llama", **ft_kwargs)
    with pytest.raises(IncompatiblePairError, match=f"differ in `{field}`"):
        ModelPair(pt, ft, tok)


def test_model_type_mismatch(tok):
    with pytest.raises(
        IncompatiblePairError, match="differ in `model_type`: pretrained='llama', finetuned='mistral'"
    ):
        ModelPair(tiny_model("llama"), tiny_model("mistral"), tok)


def test_positional_embedding_and_sliding_window_mismatch(tok):
    with pytest.raises(IncompatiblePairError, match="`sliding_window`"):
        ModelPair(tiny_model("mistral"), tiny_model("mistral", sliding_window=9), tok)
    with pytest.raises(IncompatiblePairError, match="`layer_types`"):
        ModelPair(
            tiny_model("gemma3_text"),
            tiny_model("gemma3_text", layer_types=["full_attention"] * 4),
            tok,
        )
    with pytest.raises(IncompatiblePairError, match="`rotary_pct`|`rope_parameters`"):
        ModelPair(
            tiny_model("gpt_neox"),
            tiny_model(
                "gpt_neox",
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
            ),
            tok,
        )


def test_dtype_mismatch(tok):
    with pytest.raises(IncompatiblePairError, match="differ in `dtype`.*same dtype"):
        ModelPair(tiny_model("llama"), tiny_model("llama").to(torch.bfloat16), tok)


def test_device_mismatch():
    from tuco import compat

    pt, ft = tiny_model("llama"), tiny_model("llama")
    pt_blocks = pt.model.layers.to("meta")
    with pytest.raises(IncompatiblePairError, match="differ in `device` at block 0"):
        compat.check_models(pt, ft, pt_blocks, ft.model.layers)


def test_tokenizer_mismatch_is_an_error_unless_asked(tok):
    from tokenizers import Tokenizer, processors

    other_backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    other_backend.post_processor = processors.TemplateProcessing(single="$A")  # no BOS
    other = tok.__class__(tokenizer_object=other_backend, eos_token="</s>", pad_token="<pad>")
    pt, ft = tiny_model("llama"), tiny_model("llama", seed=1)
    with pytest.raises(IncompatiblePairError, match="tokenizers differ.*use_finetuned_tokenizer=True"):
        ModelPair(pt, ft, tok, pretrained_tokenizer=other)
    pair = ModelPair(pt, ft, tok, pretrained_tokenizer=other, use_finetuned_tokenizer=True)
    assert any("fine-tuned tokenizer is used for both" in n for n in pair.notes)
    assert pair.score(PROMPTS[:1])[0].tuco > 0


def test_added_tokens_are_allowed_and_noted():
    tok = byte_tokenizer()
    ft_tok = byte_tokenizer()
    ft_tok.add_tokens(["<|special_one|>", "<|special_two|>"])
    pt, ft = tiny_model("llama", vocab_size=len(tok)), tiny_model("llama", seed=1, vocab_size=len(ft_tok))
    pair = ModelPair(pt, ft, ft_tok, pretrained_tokenizer=tok)
    assert any("vocabulary sizes differ" in n and "+2 tokens" in n for n in pair.notes)
    assert any("adds 2 tokens" in n for n in pair.notes)
    assert pair.score(["hi <|special_one|>"])[0].tuco > 0
    with pytest.raises(ValueError, match="pretrained vocabulary size"):
        pair.output_contribution(["hi <|special_one|>"])


def test_from_pretrained_checks_configs_before_loading_weights(tmp_path, tok):
    for name, model in (("pt", tiny_model("llama")), ("ft", tiny_model("llama", num_hidden_layers=2))):
        model.config.save_pretrained(tmp_path / name)  # configs only: no weights to load
        tok.save_pretrained(tmp_path / name)
    with pytest.raises(IncompatiblePairError, match="`num_hidden_layers`: pretrained=3, finetuned=2"):
        ModelPair.from_pretrained(str(tmp_path / "pt"), str(tmp_path / "ft"))
