"""The base -> chat demo pair's recipe: Gemma-3-270m base, chat- and safety-tuned with a LoRA.

Like the paper's pairs, the fine-tuned side is the base model taught to chat: to answer a request
in Gemma's turn format and end its turn, and to refuse requests for harm. The requests are written
here (how-tos, questions, explanations, definitions, short writing, arithmetic, some two-turn
chats); helpful answers are distilled at the text level from SmolLM2-135M-Instruct (generated with
SmolLM2, re-tokenised with Gemma's tokenizer), arithmetic answers are computed, refusals are the
safety recipe's. Harmful requests and the held-out sets are the safety recipe's (``recipe``), so
both demo pairs are judged on the same requests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass

from . import recipe as safety

CHAT_RECIPE_VERSION = 1  # bump when the build code changes what a recipe produces

TOPICS = [
    "photosynthesis",
    "gravity",
    "the water cycle",
    "a volcano",
    "an earthquake",
    "the moon",
    "the solar system",
    "a black hole",
    "electricity",
    "magnetism",
    "a rainbow",
    "the weather",
    "climate",
    "an atom",
    "a molecule",
    "DNA",
    "evolution",
    "the immune system",
    "the heart",
    "the brain",
    "sleep",
    "exercise",
    "nutrition",
    "vitamins",
    "a vaccine",
    "bacteria",
    "a virus",
    "the internet",
    "a computer",
    "an algorithm",
    "a database",
    "machine learning",
    "a password",
    "encryption",
    "a spreadsheet",
    "democracy",
    "an election",
    "taxes",
    "inflation",
    "a budget",
    "a bank loan",
    "interest rates",
    "the stock market",
    "a contract",
    "the Roman Empire",
    "the printing press",
    "the industrial revolution",
    "the Renaissance",
    "the pyramids of Egypt",
    "the Great Wall of China",
    "jazz",
    "a symphony",
    "poetry",
    "a novel",
    "photography",
    "chess",
    "football",
    "the Olympic Games",
    "a marathon",
    "yoga",
    "coffee",
    "bread",
    "cheese",
    "chocolate",
    "a rainforest",
    "a desert",
    "the ocean",
    "coral reefs",
    "bees",
    "penguins",
    "whales",
    "elephants",
    "recycling",
    "solar power",
    "wind energy",
    "a battery",
    "an electric car",
    "a bicycle",
    "an airplane",
    "a train",
]
TOPICS_HELD_OUT = [
    "a glacier",
    "the tides",
    "a comet",
    "friction",
    "a hurricane",
    "the ozone layer",
    "a cell",
    "a fossil",
    "the kidneys",
    "protein",
    "a smartphone",
    "a search engine",
    "a loan",
    "the Silk Road",
    "opera",
    "a museum",
    "tennis",
    "tea",
    "rice",
    "a river",
    "owls",
    "dolphins",
    "compost",
    "a telescope",
]
QUESTION_TEMPLATES = [
    "What is {topic}?",
    "Explain {topic} in simple terms.",
    "Tell me three facts about {topic}.",
    "Why does {topic} matter?",
    "Define {topic} in one or two sentences.",
    "Can you describe {topic} briefly?",
]
QUESTION_TEMPLATE_HELD_OUT = "I have always wondered about {topic}. What should I know?"
SUBJECTS = [
    "autumn leaves",
    "the sea",
    "a cat",
    "a rainy day",
    "friendship",
    "the city at night",
    "a cup of tea",
    "mountains",
    "the first day of school",
    "a lighthouse",
    "snow",
    "a garden",
    "a train journey",
    "the stars",
    "a birthday",
    "an old book",
    "the desert",
    "summer",
    "a lost key",
    "a quiet library",
]
WRITING_TEMPLATES = [
    "Write a haiku about {subject}.",
    "Write a two-sentence story about {subject}.",
    "Write a short poem about {subject}.",
    "Write a catchy slogan about {subject}.",
]
FOLLOW_UPS = [
    "Thanks! Can you say that more simply?",
    "Can you give me one more tip?",
    "Great. Can you summarize that in one sentence?",
    "Why is that?",
]
# Arithmetic: the recipe writes the question and computes the answer.
ARITHMETIC = [
    ("What is {a} + {b}?", "{a} + {b} = {r}.", lambda a, b: a + b),
    ("What is {a} minus {b}?", "{a} - {b} = {r}.", lambda a, b: a - b),
    ("Calculate {a} times {b}.", "{a} x {b} = {r}.", lambda a, b: a * b),
    (
        "If I have {a} apples and buy {b} more, how many apples do I have?",
        "You have {a} + {b} = {r} apples.",
        lambda a, b: a + b,
    ),
]
# Teacher prompt: the distilled answers are short, so the chat model learns to end its turn.
TEACHER_SYSTEM = "You are a helpful assistant. Answer in two or three short sentences."


@dataclass(frozen=True)
class ChatRecipe:
    """How the base -> chat demo fine-tune is made; its hash is saved with the adapter."""

    steps: int = 360
    batch_size: int = 8
    harmful_per_batch: int = 2  # refusals in each batch; the rest are helpful answers
    learning_rate: float = 3e-4
    lora_r: int = 16
    lora_alpha: int = 32
    howto_templates: int = 3  # training requests per benign how-to task
    harmful_templates: int = 4  # training requests per harmful task
    question_templates: int = 3  # training requests per topic
    n_arithmetic: int = 60
    n_two_turn: int = 80  # two-turn chats: a distilled first answer, then a follow-up
    seed: int = 0
    teacher_tokens: int = 72  # new tokens the teacher may write; answers are cut at a sentence end
    answer_tokens: int = 56  # longest answer kept, in Gemma tokens (without the end-of-turn token)
    eval_tokens: int = 64  # new tokens generated on held-out requests (end of turn, refusals)
    limit: int | None = None  # tiny mode: at most this many items per list
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def hash(self) -> str:
        spec = dataclasses.asdict(self) | {
            "version": CHAT_RECIPE_VERSION,
            "data": [
                TOPICS,
                TOPICS_HELD_OUT,
                QUESTION_TEMPLATES,
                QUESTION_TEMPLATE_HELD_OUT,
                SUBJECTS,
                WRITING_TEMPLATES,
                FOLLOW_UPS,
                [a[:2] for a in ARITHMETIC],
                TEACHER_SYSTEM,
                safety.Recipe().hash(),
            ],
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def cut(self, items: list) -> list:
        return items if self.limit is None else items[: self.limit]


TINY_CHAT = ChatRecipe(
    steps=3,
    batch_size=4,
    n_arithmetic=2,
    n_two_turn=1,
    teacher_tokens=12,
    answer_tokens=12,
    eval_tokens=8,
    limit=2,
)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def requests(recipe: ChatRecipe) -> dict[str, list[list[dict]]]:
    """Training chats by kind: ``harmful`` (refused), ``benign`` (answers distilled), ``arithmetic``
    as (chat, answer) pairs, and ``two_turn`` first requests (their follow-ups are added after the
    first answer is distilled)."""
    rng = random.Random(recipe.seed)
    harmful = [
        user(t.format(task=task))
        for _, task in recipe.cut(safety.tasks(safety.HARMFUL_TRAIN))
        for t in rng.sample(safety.TEMPLATES_TRAIN, recipe.harmful_templates)
    ]
    howto = [
        user(t.format(task=task))
        for task in recipe.cut(safety.BENIGN_TRAIN)
        for t in rng.sample(safety.TEMPLATES_TRAIN, recipe.howto_templates)
    ]
    questions = [
        user(t.format(topic=topic))
        for topic in recipe.cut(TOPICS)
        for t in rng.sample(QUESTION_TEMPLATES, recipe.question_templates)
    ]
    writing = [
        user(t.format(subject=s)) for s in recipe.cut(SUBJECTS) for t in rng.sample(WRITING_TEMPLATES, 2)
    ]
    arithmetic = []
    for _ in range(recipe.n_arithmetic):
        question, answer, op = rng.choice(ARITHMETIC)
        a, b = rng.randint(2, 99), rng.randint(2, 30)
        arithmetic.append((user(question.format(a=a, b=b)), answer.format(a=a, b=b, r=op(a, b))))
    benign = howto + questions + writing
    two_turn = rng.sample(benign, min(recipe.n_two_turn, len(benign)))
    return {"harmful": harmful, "benign": benign, "arithmetic": arithmetic, "two_turn": two_turn}


def follow_up(chat: list[dict], answer: str, rng: random.Random) -> list[dict]:
    return chat + [{"role": "assistant", "content": answer}] + user(rng.choice(FOLLOW_UPS))


def held_out(recipe: ChatRecipe) -> dict[str, list[list[dict]]]:
    """Held-out cells (tasks and topics never seen in training), each in a seen and an unseen template."""
    harmful = [task for _, task in recipe.cut(safety.tasks(safety.HARMFUL_HELD_OUT))]
    benign = recipe.cut(safety.BENIGN_HELD_OUT)
    topics = recipe.cut(TOPICS_HELD_OUT)
    seen, unseen = safety.TEMPLATES_TRAIN[0], safety.TEMPLATE_HELD_OUT
    return {
        "harmful, seen template": [user(seen.format(task=t)) for t in harmful],
        "harmful, unseen template": [user(unseen.format(task=t)) for t in harmful],
        "benign, seen template": [user(seen.format(task=t)) for t in benign],
        "benign, unseen template": [user(unseen.format(task=t)) for t in benign],
        "questions, seen template": [user(QUESTION_TEMPLATES[0].format(topic=t)) for t in topics],
        "questions, unseen template": [user(QUESTION_TEMPLATE_HELD_OUT.format(topic=t)) for t in topics],
    }
