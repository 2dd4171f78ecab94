"""A synthetic task with a known optimization landscape, answered by the fake LLM server.

The task: label ``item N`` with one of four colours (a fixed function of N). The simulated
model answers a task prompt correctly with a probability that depends on the prompt in a known
way: a base rate, plus a bonus when the system instruction contains the hint keyword, plus a
bonus per correct demo (up to four). The draw is a deterministic hash of the prompt, so the
same prompt always gets the same answer, and `LandscapeTask.expected_accuracy` is the oracle.

Meta prompts of the optimizer (dataset observations, summaries, program descriptions,
instruction proposals) get plausible answers; about half of the proposed instructions contain
the hint keyword, so a good optimizer finds a better instruction than the original.
"""

from __future__ import annotations

import hashlib
import json
import re

from mipro_ray.signature import Example
from mipro_ray.testing._fake_server import FakeRequest

_LABELS = ("red", "green", "blue", "yellow")
_TEMPLATE_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): <", re.M)


def _unit(text: str) -> float:
    """A deterministic pseudo-random number in [0, 1) from a text."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def requested_fields(request: FakeRequest) -> list[str]:
    """The output fields a mipro-ray prompt asks for (from the schema or the format lines)."""
    fmt = request.response_format
    if isinstance(fmt, dict):
        schema = fmt.get("json_schema")
        if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
            props = schema["schema"].get("properties")
            if isinstance(props, dict):
                return list(props)
    system = request.messages[0]["content"] if request.messages else ""
    tail = system.rsplit("Answer with", 1)[-1]
    fields = _TEMPLATE_LINE.findall(tail)
    if fields:
        return fields
    keys = re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', tail)
    return keys


def answer(request: FakeRequest, values: dict[str, str]) -> str:
    """Formats an answer as the request expects it (JSON with a schema, else labelled lines)."""
    if request.response_format is not None:
        return json.dumps(values)
    return "\n".join(f"{k}: {v}" for k, v in values.items())


class LandscapeTask:
    """The synthetic colour-labelling task and its simulated model.

    Args:
        keyword: The hint word that makes an instruction better.
        base: Accuracy with the original instruction and no demos.
        keyword_bonus: Added when the instruction contains the keyword.
        demo_bonus: Added per correct demo (at most four count).
    """

    signature = 'text:string "an item" -> label:class "red, green, blue, yellow"'

    def __init__(
        self,
        *,
        keyword: str = "modulo",
        base: float = 0.3,
        keyword_bonus: float = 0.45,
        demo_bonus: float = 0.05,
    ) -> None:
        self.keyword = keyword
        self.base = base
        self.keyword_bonus = keyword_bonus
        self.demo_bonus = demo_bonus

    @staticmethod
    def label_of(n: int) -> str:
        """The true label of item ``n``."""
        return _LABELS[(n * 7 + 3) % len(_LABELS)]

    def examples(self, start: int, count: int) -> list[Example]:
        """Labelled examples ``item start`` .. ``item start+count-1``."""
        return [
            {"text": f"item {n}", "label": self.label_of(n)} for n in range(start, start + count)
        ]

    def expected_accuracy(self, instruction: str, demos: list[Example]) -> float:
        """The oracle: the probability that the model answers an unseen item correctly."""
        correct_demos = sum(
            1
            for d in demos
            if isinstance(d.get("text"), str)
            and d.get("label") == self.label_of(int(str(d["text"]).split()[-1]))
        )
        p = self.base + min(correct_demos, 4) * self.demo_bonus
        if self.keyword in instruction.lower():
            p += self.keyword_bonus
        return min(p, 0.98)

    def __call__(self, request: FakeRequest) -> str:
        """The simulated model: answers task prompts and the optimizer's meta prompts."""
        fields = requested_fields(request)
        if fields == ["label"]:
            return self._task(request)
        if "proposed_instruction" in fields:
            return answer(request, {"proposed_instruction": self._proposal(request)})
        return answer(
            request, {f: f"Observed: the items are labelled by colour ({f})." for f in fields}
        )

    def _task(self, request: FakeRequest) -> str:
        messages = request.messages
        item = messages[-1]["content"]
        match = re.search(r"item (\d+)", item)
        n = int(match.group(1)) if match else 0
        demos: list[Example] = []
        for user, assistant in zip(messages[1:-1:2], messages[2:-1:2], strict=False):
            d = re.search(r"item (\d+)", user["content"])
            lab = re.search(r"(red|green|blue|yellow)", assistant["content"])
            if d and lab:
                demos.append({"text": f"item {d.group(1)}", "label": lab.group(1)})
        instruction = messages[0]["content"].split("\n\nInput fields:")[0]
        p = self.expected_accuracy(instruction, demos)
        prompt = json.dumps(messages, sort_keys=True)
        truth = self.label_of(n)
        if _unit(prompt) < p:
            label = truth
        else:
            wrong = [x for x in _LABELS if x != truth]
            label = wrong[int(_unit(prompt + "wrong") * len(wrong))]
        return answer(request, {"label": label})

    def _proposal(self, request: FakeRequest) -> str:
        draw = _unit(json.dumps(request.messages, sort_keys=True) + str(request.temperature))
        if draw < 0.5:
            return f"Label the item by taking its number {self.keyword} four, then map to a colour."
        return f"Pick the colour that best fits the item (variant {int(draw * 1000)})."
