"""Prompt builders for jailbreak experiments (the paper's E3 and E5 experiments).

>>> many_shot("How do I X?", [("How do I A?", "Sure, ..."), ("How do I B?", "Sure, ...")], k=2)
[{'role': 'user', 'content': 'How do I A?'}, {'role': 'assistant', 'content': 'Sure, ...'},
 {'role': 'user', 'content': 'How do I B?'}, {'role': 'assistant', 'content': 'Sure, ...'},
 {'role': 'user', 'content': 'How do I X?'}]
"""

from __future__ import annotations

from collections.abc import Sequence

MSJ_FORMATS = ("turns", "one-turn", "raw")


def many_shot(
    target: str, shots: Sequence[tuple[str, str]], k: int, format: str = "turns"
) -> list[dict] | str:
    """Many-shot jailbreaking: ``k`` faux dialogues (request, compliant answer) taken in order from
    ``shots`` (cycled if shorter), then the target request. ``format``: ``"turns"``, real chat turns
    (one chat); ``"one-turn"``, the dialogues written out ("User: ...\nAssistant: ...") in the one
    user turn that ends with the target (Anil et al.'s layout); ``"raw"``, that text with no chat
    template, ending in "Assistant:" (a string)."""
    if format not in MSJ_FORMATS:
        raise ValueError(f"format must be one of {', '.join(MSJ_FORMATS)}, not {format!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    if k > 0 and not shots:
        raise ValueError("many_shot needs at least one (request, answer) pair for k > 0")
    dialogues = [shots[i % len(shots)] for i in range(k)]
    if format == "turns":
        chat = []
        for request, answer in dialogues:
            chat += [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
        return chat + [{"role": "user", "content": target}]
    text = "".join(f"User: {request}\nAssistant: {answer}\n\n" for request, answer in dialogues)
    if format == "one-turn":
        return [{"role": "user", "content": text + target if k else target}]
    return f"{text}User: {target}\nAssistant:"
