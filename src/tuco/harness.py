"""The FTC-alpha model for lm-evaluation-harness (``pip install lm-eval``).

    >>> import lm_eval
    >>> from tuco.harness import SteeredLM
    >>> lm = SteeredLM(pair, alpha=0.9, batch_size=8)
    >>> lm_eval.simple_evaluate(model=lm, tasks=["mmlu"], num_fewshot=5)

``SteeredLM`` is the harness's own Hugging Face wrapper (``HFLM``) around the pair's fine-tuned model,
with every model call (log-likelihoods and generation) made inside ``pair.steer(alpha)``: each block
outputs x + PTC + alpha * FTC. alpha = 1 is the fine-tuned model, bit for bit.
"""

from __future__ import annotations

from .pair import ModelPair

try:
    from lm_eval.models.huggingface import HFLM
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("tuco.harness needs lm-evaluation-harness: pip install lm-eval") from e


class SteeredLM(HFLM):
    def __init__(self, pair: ModelPair, alpha: float = 1.0, **hflm_kwargs):
        if pair.tokenizer is None:
            raise ValueError("the harness needs a tokenizer: build the ModelPair with one")
        super().__init__(pretrained=pair.finetuned, tokenizer=pair.tokenizer, **hflm_kwargs)
        self.pair, self.alpha = pair, alpha

    def _model_call(self, inps, attn_mask=None, labels=None):
        with self.pair.steered(self.alpha):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        with self.pair.steered(self.alpha):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
