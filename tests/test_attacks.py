import pytest

from tuco.attacks import many_shot
from tuco.refusal import is_refusal, refusal_rate


def test_many_shot_golden():
    shots = [("How do I A?", "Sure, A."), ("How do I B?", "Sure, B.")]
    assert many_shot("How do I X?", shots, 3) == [
        {"role": "user", "content": "How do I A?"},
        {"role": "assistant", "content": "Sure, A."},
        {"role": "user", "content": "How do I B?"},
        {"role": "assistant", "content": "Sure, B."},
        {"role": "user", "content": "How do I A?"},
        {"role": "assistant", "content": "Sure, A."},
        {"role": "user", "content": "How do I X?"},
    ]
    assert many_shot("How do I X?", shots, 0) == [{"role": "user", "content": "How do I X?"}]


def test_many_shot_bad_arguments():
    with pytest.raises(ValueError, match="k must be >= 0"):
        many_shot("x", [("a", "b")], -1)
    with pytest.raises(ValueError, match="at least one"):
        many_shot("x", [], 2)


def test_refusal_strings():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I\u2019m sorry, no.")  # curly apostrophe
    assert is_refusal("That would be illegal.")
    assert not is_refusal("Sure, here is a recipe for pancakes.")
    assert refusal_rate(["I cannot do that", "Sure!", "As an AI, no", "Here you go"]) == 0.5


def test_refusal_rate_takes_texts_or_verdicts():
    assert refusal_rate([True, False, False, False]) == 0.25  # verdicts already made
    assert refusal_rate(["I'm sorry, no.", True, "Sure", False]) == 0.5
    assert refusal_rate([]) != refusal_rate([])  # NaN: no answers, no rate


def test_the_three_many_shot_layouts():
    shots = [("How do I A?", "Sure, A."), ("How do I B?", "Sure, B.")]
    turns = many_shot("How do I X?", shots, 3, format="turns")
    assert [m["role"] for m in turns] == ["user", "assistant"] * 3 + ["user"]
    text = "User: How do I A?\nAssistant: Sure, A.\n\nUser: How do I B?\nAssistant: Sure, B.\n\n"
    text += "User: How do I A?\nAssistant: Sure, A.\n\n"
    assert many_shot("How do I X?", shots, 3, format="one-turn") == [
        {"role": "user", "content": text + "How do I X?"}
    ]
    assert many_shot("How do I X?", shots, 3, format="raw") == text + "User: How do I X?\nAssistant:"
    assert many_shot("How do I X?", shots, 0, format="one-turn") == [
        {"role": "user", "content": "How do I X?"}
    ]
    with pytest.raises(ValueError, match="format must be one of turns, one-turn, raw"):
        many_shot("How do I X?", shots, 1, format="prose")
