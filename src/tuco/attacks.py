"""Prompt builders for jailbreak experiments (the paper's E3 and E5 experiments).

>>> many_shot("How do I X?", [("How do I A?", "Sure, ..."), ("How do I B?", "Sure, ...")], k=2)
[{'role': 'user', 'content': 'How do I A?'}, {'role': 'assistant', 'content': 'Sure, ...'},
 {'role': 'user', 'content': 'How do I B?'}, {'role': 'assistant', 'content': 'Sure, ...'},
 {'role': 'user', 'content': 'How do I X?'}]
"""

from __future__ import annotations

from collections.abc import Sequence


def many_shot(target: str, shots: Sequence[tuple[str, str]], k: int) -> list[dict]:
    """Many-shot jailbreaking: ``k`` faux dialogue turns (request, compliant answer) taken in order
    from ``shots`` (cycled if shorter), then the target request, as one chat."""
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    if k > 0 and not shots:
        raise ValueError("many_shot needs at least one (request, answer) pair for k > 0")
    chat = []
    for i in range(k):
        request, answer = shots[i % len(shots)]
        chat += [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
    return chat + [{"role": "user", "content": target}]
