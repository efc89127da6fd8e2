"""Per-prompt results from a recorded forward pass: the ratios, the norms, and the dict form."""

import math

import pytest
import torch
from conftest import PROMPTS, make_pair

from tuco import Decomposition, inputs
from tuco.results import TucoResult, from_record


@torch.no_grad()
def test_from_record_matches_the_recorded_sums(tok):
    pair = make_pair("llama", tok)
    batch = inputs.pad(pair.encode(PROMPTS), 0, "right")
    last = inputs.last_index(batch["attention_mask"])
    with Decomposition(pair.ft_blocks, pair.pt_blocks) as dec:
        rec = dec.record(last, per_token=True)
        pair.finetuned(**batch)
    results = from_record(rec, batch["attention_mask"])
    assert len(results) == len(PROMPTS)
    for b, r in enumerate(results):
        p, f = rec.ptc_sum[b].abs().sum().item(), rec.ftc_sum[b].abs().sum().item()
        assert r.tuco == pytest.approx(f / (p + f), rel=1e-6) and r.preco == pytest.approx(1 - r.tuco)
        assert (r.ptc_norm, r.ftc_norm) == pytest.approx((p, f), rel=1e-6)
        assert r.n_tokens == int(batch["attention_mask"][b].sum())
        assert len(r.ptc_layers) == len(r.beta) == pair.num_layers
        assert r.beta[-1] == pytest.approx(r.tuco, rel=1e-6)  # the cumulative ratio ends at TuCo
        assert len(r.tuco_tokens) == r.n_tokens and r.tuco_tokens[-1] == pytest.approx(r.tuco, rel=1e-5)


def test_a_result_is_a_plain_dict_and_back():
    r = TucoResult(
        tuco=0.25, ptc_norm=3.0, ftc_norm=1.0, ptc_layers=[1.0], ftc_layers=[0.5], beta=[0.25], n_tokens=4
    )
    d = r.to_dict()
    assert d["tuco"] == 0.25 and d["norm"] == "l1" and d["tuco_tokens"] is None
    assert TucoResult(**d) == r
    assert not any(isinstance(v, float) and math.isnan(v) for v in d.values())


def test_an_empty_record_is_refused():
    from tuco.decompose import Record

    with pytest.raises(ValueError, match="holds no forward pass"):
        from_record(Record(torch.tensor([0])), torch.ones(1, 1))
