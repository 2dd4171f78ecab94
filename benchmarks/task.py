"""The synthetic classification task of the benchmarks, its accuracy model and its oracle.

Each example is an inventory *item* such as ``ITEM KQZ-40917``; its label is one of `LABELS`,
fixed by a hidden rule (the digit sum of the number, modulo 4). The simulated LLM knows the
rule but follows it only as well as the prompt lets it: the probability that it answers a task
call correctly is a deterministic function of the prompt's *configuration* (its instruction
text and the (item, label) demos placed before the input):

``p = clip(BASE_ACCURACY + keyword effects + DEMO_GAIN[correct demos] - penalty * wrong demos)``

- Keyword effects: hidden phrases in the instruction (case-insensitive) add or remove
  accuracy; "digit sum" is the strong hint, "first letter" misleads (see `KEYWORDS`).
- Demos: correct demos help with diminishing, then slightly negative returns; demos whose
  label is wrong cost `WRONG_DEMO_PENALTY` each.

Whether one call is right is decided by a uniform draw keyed by (configuration, item), so a
given prompt always gets the same answer, and the expected accuracy of a configuration over
items is exactly ``p``: `oracle_accuracy` returns it without sampling.

The module is stdlib-only so that both the library venv and the DSPy benchmark venv import it.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BASE_ACCURACY",
    "BASE_INSTRUCTION",
    "DEMO_GAIN",
    "ITEM_RE",
    "KEYWORDS",
    "LABELS",
    "WRONG_DEMO_PENALTY",
    "Demo",
    "Keyword",
    "Splits",
    "answer_label",
    "config_key",
    "dataset_observations",
    "demos_in_text",
    "make_splits",
    "normalize_instruction",
    "oracle_accuracy",
    "program_description",
    "propose_instruction",
    "true_label",
    "unit_draw",
]

LABELS: tuple[str, ...] = ("amber", "birch", "cobalt", "dune")
"""The class labels, in the order the hidden rule indexes them."""

BASE_INSTRUCTION = "Classify the item into one of the four labels."
"""The unoptimized program's instruction (no keyword of `KEYWORDS`)."""

ITEM_RE = re.compile(r"\bITEM [A-Z]{3}-\d{5}\b")
"""Matches an item code anywhere in a prompt."""

_LABEL_RE = re.compile(r"\b(" + "|".join(LABELS) + r")\b", re.IGNORECASE)

Demo = tuple[str, str]
"""One few-shot demo as (item, label) — the label as shown in the prompt, right or wrong."""


@dataclass(frozen=True)
class Keyword:
    """A hidden instruction phrase and its additive effect on the probability of a right answer.

    Attributes:
        phrase: Lower-case phrase searched in the whitespace-normalized, lower-cased instruction.
        effect: Added to the accuracy when the phrase occurs (negative for misleading phrases).
        sentence: A sentence containing the phrase, used by the simulated proposer.
        proposal_rate: Probability that one simulated proposal includes ``sentence``.
    """

    phrase: str
    effect: float
    sentence: str
    proposal_rate: float


KEYWORDS: tuple[Keyword, ...] = (
    Keyword(
        "digit sum",
        0.22,
        "Compute the digit sum of the five-digit number in the item code.",
        0.35,
    ),
    Keyword(
        "modulo 4",
        0.10,
        "Take that value modulo 4 and map 0, 1, 2, 3 to amber, birch, cobalt, dune.",
        0.30,
    ),
    Keyword("ignore the letters", 0.06, "You can ignore the letters of the code.", 0.30),
    Keyword("step by step", 0.03, "Work step by step before you answer.", 0.30),
    Keyword("first letter", -0.12, "The first letter of the code is the key signal.", 0.20),
    Keyword("guess", -0.06, "If in doubt, make a quick guess.", 0.20),
)
"""Hidden phrases: the "good keywords" the optimizer should find, and two misleading ones."""

BASE_ACCURACY = 0.30
"""Accuracy of a prompt with no keyword and no demo (chance is 0.25)."""

DEMO_GAIN: tuple[float, ...] = (0.0, 0.10, 0.17, 0.21, 0.23, 0.22, 0.20, 0.18, 0.16)
"""Gain by number of correct demos; the last value holds for longer demo lists."""

WRONG_DEMO_PENALTY = 0.08
"""Accuracy lost per demo whose label is wrong."""

_MIN_ACCURACY, _MAX_ACCURACY = 0.05, 0.97

_OPENINGS = (
    "Classify the inventory item into one of the labels amber, birch, cobalt or dune.",
    "You are a warehouse clerk: assign each item code the correct label.",
    "Read the item code carefully and output its label.",
    "Given an item code, decide which of the four labels it belongs to.",
)
_CLOSINGS = (
    "Answer with the label only.",
    "Reply with exactly one of the four labels.",
    "Be precise.",
    "",
)


def true_label(item: str) -> str:
    """The correct label of ``item`` (``"ITEM ABC-12345"``) under the hidden rule.

    Raises:
        ValueError: If ``item`` contains no item code.
    """
    match = ITEM_RE.search(item)
    if match is None:
        raise ValueError(f"not an item code: {item!r}")
    digits = match.group(0)[-5:]
    return LABELS[sum(int(d) for d in digits) % len(LABELS)]


@dataclass(frozen=True)
class Splits:
    """Disjoint train, validation and test examples (``{"item": ..., "label": ...}`` rows)."""

    train: list[dict[str, str]]
    val: list[dict[str, str]]
    test: list[dict[str, str]]


def make_splits(*, seed: int, n_train: int, n_val: int, n_test: int) -> Splits:
    """Draws distinct items from ``seed`` and cuts them into disjoint splits.

    The same arguments give the same splits on every machine and in both venvs.
    """
    rng = random.Random(f"mipro-bench-items:{seed}")
    total = n_train + n_val + n_test
    items: list[str] = []
    seen: set[str] = set()
    while len(items) < total:
        letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(3))
        item = f"ITEM {letters}-{rng.randrange(100000):05d}"
        if item not in seen:
            seen.add(item)
            items.append(item)
    rows = [{"item": item, "label": true_label(item)} for item in items]
    return Splits(
        train=rows[:n_train],
        val=rows[n_train : n_train + n_val],
        test=rows[n_train + n_val :],
    )


def normalize_instruction(text: str) -> str:
    """Collapses whitespace runs so that prompt renderers' indentation does not matter."""
    return " ".join(text.split())


def oracle_accuracy(instruction: str, demos: Sequence[Demo]) -> float:
    """The true expected accuracy of a program configuration, without sampling.

    Args:
        instruction: The instruction text of the (single) predictor.
        demos: Its few-shot demos as (item, shown label) pairs, in prompt order.

    Returns:
        The probability that the simulated LLM answers a fresh item correctly.
    """
    text = normalize_instruction(instruction).lower()
    p = BASE_ACCURACY + sum(k.effect for k in KEYWORDS if k.phrase in text)
    correct = sum(1 for item, label in demos if label.lower() == true_label(item))
    wrong = len(demos) - correct
    p += DEMO_GAIN[min(correct, len(DEMO_GAIN) - 1)] - WRONG_DEMO_PENALTY * wrong
    return min(_MAX_ACCURACY, max(_MIN_ACCURACY, p))


def config_key(instruction: str, demos: Sequence[Demo]) -> str:
    """A stable key of a configuration: the same for every prompt format that renders it."""
    parts = [normalize_instruction(instruction)]
    parts += [f"{item}={label.lower()}" for item, label in demos]
    return "\x1f".join(parts)


def unit_draw(*parts: str) -> float:
    """A deterministic uniform draw in [0, 1) from the given strings."""
    digest = hashlib.sha256("\x1e".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def answer_label(instruction: str, demos: Sequence[Demo], item: str) -> str:
    """The simulated LLM's answer to ``item`` under a configuration (deterministic).

    Right with probability `oracle_accuracy`; otherwise one of the wrong labels, also drawn
    deterministically.
    """
    truth = true_label(item)
    key = config_key(instruction, demos)
    if unit_draw(key, item) < oracle_accuracy(instruction, demos):
        return truth
    wrong = [label for label in LABELS if label != truth]
    return wrong[int(unit_draw(key, item, "wrong") * len(wrong))]


def demos_in_text(text: str) -> tuple[list[Demo], str | None]:
    """Finds the demos and the input item in a rendered conversation, whatever its format.

    Every item code but the last is a demo, labelled by the first label word between it and
    the next item code; the last item code is the input.

    Returns:
        The demos (items without a label word are left out) and the input item, if any.
    """
    matches = list(ITEM_RE.finditer(text))
    if not matches:
        return [], None
    demos: list[Demo] = []
    for here, nxt in itertools.pairwise(matches):
        label = _LABEL_RE.search(text, here.end(), nxt.start())
        if label is not None:
            demos.append((here.group(0), label.group(1).lower()))
    return demos, matches[-1].group(0)


def propose_instruction(seed_text: str) -> str:
    """A simulated instruction proposal, deterministic in ``seed_text`` (prompt + sampling).

    Each sentence of `KEYWORDS` is included with its ``proposal_rate``, between an opening
    and a closing drawn from fixed lists, so different prompts or temperatures give different
    candidates of different true quality.
    """
    rng = random.Random(hashlib.sha256(seed_text.encode()).hexdigest())
    parts = [rng.choice(_OPENINGS)]
    parts += [k.sentence for k in KEYWORDS if rng.random() < k.proposal_rate]
    parts.append(rng.choice(_CLOSINGS))
    return " ".join(p for p in parts if p)


def dataset_observations(seed_text: str) -> str:
    """A simulated description of the dataset (deterministic in ``seed_text``)."""
    rng = random.Random(hashlib.sha256(seed_text.encode()).hexdigest())
    notes = [
        "Each example is an inventory item code: three capital letters, a dash and five digits.",
        f"Every item is labelled with one of {', '.join(LABELS)}; the labels look balanced.",
        "The letters vary freely; the digits may carry the signal.",
        "This looks like a rule-based classification task.",
    ]
    rng.shuffle(notes)
    return " ".join(notes[: rng.randint(2, len(notes))])


def program_description(seed_text: str) -> str:
    """A simulated description of the program or of one module (deterministic in ``seed_text``)."""
    rng = random.Random(hashlib.sha256(seed_text.encode()).hexdigest())
    return rng.choice(
        (
            "The program classifies an inventory item code into one of four labels "
            "with a single language model call.",
            "A one-step classifier: it reads an item code and predicts its label.",
        )
    )
