"""Tests of demo-set bootstrapping against the fake LLM server (no Ray)."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from pydantic import JsonValue

from mipro_ray.bootstrap import DemoSets, bootstrap_demo_sets
from mipro_ray.errors import LMError
from mipro_ray.lm import LM, LMConfig
from mipro_ray.metrics import exact_match
from mipro_ray.program import Pipeline, Predict, Program
from mipro_ray.signature import Example, Prediction
from mipro_ray.testing import FakeLLMServer, FakeRequest

N_TRAIN = 30
TRAIN: list[Example] = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(N_TRAIN)]
SEED = 7


def passes(i: int) -> bool:
    """The fake teacher answers example i correctly unless i is a multiple of 3."""
    return i % 3 != 0


def _index(request: FakeRequest) -> int:
    last = request.messages[-1]["content"]
    match = re.search(r"question: q(\d+)", last)
    assert match is not None, last
    return int(match.group(1))


def responder(request: FakeRequest) -> str:
    """Answers the one-step program, or either step of the two-step pipeline."""
    i = _index(request)
    outputs = request.messages[0]["content"].split("Output fields:")[1]
    if "- hint" in outputs:  # the first pipeline step is asked for a hint
        return f"hint: h{i}"
    return f"answer: {'a' if passes(i) else 'wrong'}{i}"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder=responder, latency_s=0.02) as srv:
        yield srv


@pytest.fixture
async def lm(server: FakeLLMServer) -> AsyncIterator[LM]:
    client = LM(
        LMConfig(
            model="fake", base_url=server.base_url, api_key_env=None, cache=False, max_retries=0
        )
    )
    yield client
    await client.aclose()


def single() -> Program:
    return Pipeline.from_signatures("question -> answer")


def two_step() -> Program:
    return Pipeline.from_signatures("question -> hint", "question, hint -> answer")


async def build(program: Program, lm: LM, **kwargs: int) -> DemoSets:
    args: dict[str, int] = {
        "num_sets": 6,
        "max_bootstrapped_demos": 4,
        "max_labeled_demos": 5,
        "seed": SEED,
    }
    args.update(kwargs)
    return await bootstrap_demo_sets(program, TRAIN, metric=exact_match, lm=lm, **args)


def expected_runs(num_sets: int, max_boot: int) -> set[int]:
    """Examples a sequential pass over every bootstrapped set would run (the documented plan)."""
    needed: set[int] = set()
    for s in range(2, num_sets):
        order = list(range(N_TRAIN))
        k = max_boot
        if s > 2:
            rng = random.Random(SEED + s)
            rng.shuffle(order)
            k = rng.randint(1, max_boot)
        found = 0
        for i in order:
            if found >= k:
                break
            needed.add(i)
            found += passes(i)
    return needed


def answers(demos: list[Example]) -> list[JsonValue]:
    return [d["answer"] for d in demos]


async def test_single_step_sets(server: FakeLLMServer, lm: LM) -> None:
    result = await build(single(), lm)
    sets = result.sets["predict"]
    assert len(sets) == 6
    assert sets[0] == []
    labeled_order = list(range(N_TRAIN))
    random.Random(SEED).shuffle(labeled_order)
    assert sets[1] == [TRAIN[i] for i in labeled_order[:5]]
    # Set 2: the first 4 passing examples in train order (1, 2, 4, 5), then labeled 0.
    assert answers(sets[2]) == ["a1", "a2", "a4", "a5", "a0"]
    for demos in sets[2:]:
        assert len(demos) == 5  # max(k, max_labeled), as k <= 4 < 5
        assert all(d["answer"] == f"a{str(d['question'])[1:]}" for d in demos)
    assert result.n_successful >= 4
    assert result.errors == {}


async def test_only_passing_traces_become_demos(server: FakeLLMServer, lm: LM) -> None:
    result = await build(single(), lm, max_labeled_demos=0)
    for s, demos in enumerate(result.sets["predict"]):
        assert "wrong" not in str(demos)
        questions = [int(str(d["question"])[1:]) for d in demos]
        assert all(passes(i) for i in questions)
        if s >= 3:
            assert 1 <= len(demos) <= 4


async def test_each_example_runs_at_most_once_and_no_call_is_wasted(
    server: FakeLLMServer, lm: LM
) -> None:
    result = await build(single(), lm)
    asked = [_index(r) for r in server.received]
    assert len(asked) == len(set(asked))
    assert set(asked) == expected_runs(6, 4)
    assert result.n_attempted == server.requests == len(asked)
    assert result.n_successful == sum(passes(i) for i in asked)


async def test_runs_are_concurrent(server: FakeLLMServer, lm: LM) -> None:
    await build(single(), lm, num_sets=8)
    assert server.peak_in_flight > 1


async def test_concurrency_limit_is_respected(server: FakeLLMServer, lm: LM) -> None:
    await build(single(), lm, num_sets=8, concurrency=2)
    assert server.peak_in_flight == 2


async def test_multi_step_yields_demos_for_each_predictor_from_one_trace(
    server: FakeLLMServer, lm: LM
) -> None:
    result = await build(two_step(), lm)
    hint_sets, answer_sets = result.sets["step0"], result.sets["step1"]
    # Train rows have no 'hint': no labeled demo fits either step, so set 1 is empty too.
    assert hint_sets[1] == [] and answer_sets[1] == []
    assert [d["question"] for d in answer_sets[2]] == ["q1", "q2", "q4", "q5"]
    for hints, answers_ in zip(hint_sets[2:], answer_sets[2:], strict=True):
        assert 1 <= len(hints) == len(answers_) <= 4
        for h, a in zip(hints, answers_, strict=True):
            i = str(h["question"])[1:]
            assert h == {"question": f"q{i}", "hint": f"h{i}"}
            assert a == {"question": f"q{i}", "hint": f"h{i}", "answer": f"a{i}"}
    assert server.requests == 2 * result.n_attempted


async def test_same_seed_same_sets(server: FakeLLMServer, lm: LM) -> None:
    first = await build(two_step(), lm)
    second = await build(two_step(), lm)
    assert first.sets == second.sets
    other = await build(two_step(), lm, seed=SEED + 100)
    assert other.sets != first.sets


async def test_no_bootstrap_means_no_teacher_runs(server: FakeLLMServer, lm: LM) -> None:
    result = await build(single(), lm, max_bootstrapped_demos=0, max_labeled_demos=2)
    assert server.requests == 0 and result.n_attempted == 0
    sets = result.sets["predict"]
    assert sets[2] == [TRAIN[0], TRAIN[1]]
    assert all(len(s) == 2 for s in sets[1:])


class Flaky(Program):
    """A user program whose forward code raises on some inputs."""

    def __init__(self) -> None:
        self.predict = Predict("question -> answer")

    async def forward(self, **inputs: JsonValue) -> Prediction:
        if inputs["question"] in ("q1", "q2"):
            raise RuntimeError("user code failed")
        return await self.predict(**inputs)


async def test_failing_runs_are_counted_not_fatal(server: FakeLLMServer, lm: LM) -> None:
    def metric(example: Example, prediction: Prediction) -> bool:
        if example["question"] == "q4":
            raise ValueError("metric broke")
        return exact_match(example, prediction) == 1.0

    result = await bootstrap_demo_sets(
        Flaky(),
        TRAIN,
        metric=metric,
        lm=lm,
        num_sets=3,
        max_bootstrapped_demos=2,
        max_labeled_demos=0,
        seed=SEED,
    )
    assert result.errors == {"program": 2, "metric": 1}
    assert answers(result.sets["predict"][2]) == ["a5", "a7"]


@pytest.mark.parametrize("make", [single, two_step])
async def test_broken_teacher_raises(
    server: FakeLLMServer, lm: LM, make: Callable[[], Program]
) -> None:
    server.set_faults(failure_rate=1.0, failure_statuses=(500,))
    with pytest.raises(LMError, match=r"all \d+ teacher runs failed with LM errors"):
        await build(make(), lm)
    assert server.requests < N_TRAIN * 2


async def test_retry_rounds_sample_hot_and_recover_examples() -> None:
    def hot_only(request: FakeRequest) -> str:
        i = _index(request)
        right = passes(i) or request.temperature == 1.0
        return f"answer: {'a' if right else 'wrong'}{i}"

    with FakeLLMServer(responder=hot_only, latency_s=0.01) as server:
        lm = LM(
            LMConfig(
                model="fake", base_url=server.base_url, api_key_env=None, cache=False, max_retries=0
            )
        )
        result = await build(single(), lm, num_sets=3, max_labeled_demos=0, max_rounds=2)
        await lm.aclose()
    assert answers(result.sets["predict"][2]) == ["a0", "a1", "a2", "a3"]
    assert result.n_attempted == server.requests == 6  # 0 and 3 ran twice
