"""``tuco.kvrows``: dynamic KV caches joined and trimmed row-wise, sliding-window layers included."""

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer, StaticCache

from tuco import kvrows


def cache(rows: int, length: int, seed: int, window: int = 5):
    """A cache of one full and one sliding-window (``window``) layer, ``length`` columns of random keys."""
    gen = torch.Generator().manual_seed(seed)
    made = DynamicCache()
    made.layers = [DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=window)]
    for i, layer in enumerate(made.layers):
        keys = torch.randn(rows, 2, length, 4, generator=gen)
        layer.update(keys, keys + 1, i)
    return made


def test_join_pads_the_shorter_on_the_left_and_keeps_every_row():
    a, b = cache(2, 3, seed=0), cache(1, 7, seed=1)
    a_full, a_window = a.layers[0].keys.clone(), a.layers[1].keys.clone()
    b_full, b_window = b.layers[0].keys.clone(), b.layers[1].keys.clone()
    kvrows.join(a, b)
    full, window = a.layers
    assert full.keys.shape == full.values.shape == (3, 2, 7, 4)
    assert torch.equal(full.keys[:2, :, 4:], a_full) and not full.keys[:2, :, :4].any()
    assert torch.equal(full.keys[2:], b_full)
    # the sliding layer stores its last window - 1 = 4 columns and counts all 7
    assert window.keys.shape == (3, 2, 4, 4) and window.cumulative_length == 7 == kvrows.length(window)
    assert torch.equal(window.keys[:2, :, 1:], a_window) and not window.keys[:2, :, :1].any()
    assert torch.equal(window.keys[2:], b_window)
    assert a.get_seq_length() == 7


def test_join_masks_and_padding_columns():
    a = torch.tensor([[0, 1, 1], [1, 1, 1]])
    b = torch.tensor([[0, 0, 0, 1, 1]])
    mask = kvrows.join_masks(a, b)
    assert mask.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert kvrows.padding_columns(mask) == 2
    assert kvrows.padding_columns(mask[[0, 2]]) == 3


def test_trim_drops_leading_columns_in_both_kinds_of_layer():
    c = cache(2, 9, seed=2)
    full_before, window_before = c.layers[0].keys.clone(), c.layers[1].keys.clone()
    kvrows.trim(c, 3)
    assert torch.equal(c.layers[0].keys, full_before[:, :, 3:])
    assert c.layers[1].cumulative_length == 6 and torch.equal(c.layers[1].keys, window_before)  # still 4 kept
    kvrows.trim(c, 4)  # 2 columns left: the sliding layer keeps them alone
    assert c.layers[0].keys.shape[-2] == 2 and c.layers[1].keys.shape[-2] == 2
    assert c.layers[1].cumulative_length == 2 and torch.equal(c.layers[1].keys, window_before[:, :, -2:])


def test_only_dynamic_caches_are_joinable(tok):
    from conftest import make_pair

    assert kvrows.joinable(cache(1, 2, seed=0))
    assert not kvrows.joinable(None) and not kvrows.joinable(DynamicCache())  # no layers yet
    config = make_pair("llama", tok).finetuned.config
    assert not kvrows.joinable(StaticCache(config=config, max_cache_len=8))


def test_a_layer_with_tokens_does_not_join_one_without():
    a, b = cache(1, 2, seed=0), cache(1, 2, seed=1)
    b.layers[0] = DynamicLayer()
    with pytest.raises(ValueError, match="holds none"):
        kvrows.join(a, b)
