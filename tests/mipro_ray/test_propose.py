"""Tests of grounded instruction proposals against the fake LLM server (no Ray)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator

import pytest

from mipro_ray.bootstrap import DemoSets
from mipro_ray.lm import LM, LMConfig
from mipro_ray.program import Pipeline, Program
from mipro_ray.propose import (
    TIPS,
    InstructionCandidates,
    clean_instruction,
    describe_program,
    propose_instructions,
    summarize_dataset,
)
from mipro_ray.signature import Example
from mipro_ray.testing import FakeLLMServer, FakeRequest

TRAIN: list[Example] = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(25)]
SUMMARY = "SUMMARY: short quiz questions with one-word answers."
ORIGINAL = "Answer the question."


def kind(request: FakeRequest) -> str:
    system = request.messages[0]["content"]
    for marker, name in (
        ("Write observations", "observe"),
        ("Summarize them", "summary"),
        ("Describe in 2-4 sentences", "describe"),
        ("role of the named step", "role"),
        ("new instruction", "propose"),
    ):
        if marker in system:
            return name
    return "task"


def prompt(request: FakeRequest) -> str:
    return request.messages[-1]["content"]


def responder(request: FakeRequest) -> str:
    which = kind(request)
    if which == "observe":
        return "observations: The rows are quiz questions."
    if which == "summary":
        return f"summary: {SUMMARY}"
    if which == "describe":
        return "program_description: The program answers quiz questions."
    if which == "role":
        return "step_role: This step writes a hint."
    if which == "propose":
        if "FAIL-ME" in prompt(request):
            return ""
        digest = hashlib.sha256(prompt(request).encode()).hexdigest()[:8]
        return f'proposed_instruction: "Answer the quiz question precisely ({digest})."'
    raise AssertionError(f"unexpected request: {request.messages}")


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder=responder, latency_s=0.05) as srv:
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


def program() -> Program:
    return Pipeline.from_signatures("question -> answer", instructions=[ORIGINAL])


def demo_sets(name: str = "predict", *, fail_set: int | None = None) -> DemoSets:
    """Six sets with distinct demos; set ``fail_set`` holds a demo the responder refuses."""
    sets: list[list[Example]] = [[]]
    for s in range(1, 6):
        question = "FAIL-ME" if s == fail_set else f"q{s}"
        sets.append([{"question": question, "answer": f"a{s}"}])
    return DemoSets(sets={name: sets}, n_attempted=0, n_successful=0)


def proposals(server: FakeLLMServer) -> list[FakeRequest]:
    return [r for r in server.received if kind(r) == "propose"]


async def test_candidates_original_first_and_distinct(server: FakeLLMServer, lm: LM) -> None:
    result = await propose_instructions(
        program(), TRAIN, demo_sets(), lm=lm, num_candidates=5, seed=3
    )
    candidates = result.candidates["predict"]
    assert candidates[0] == ORIGINAL
    assert len(candidates) == 5 and len(set(candidates)) == 5
    assert all(c.startswith("Answer the quiz question precisely") for c in candidates[1:])
    assert result.failures == []
    assert result.dataset_summary == SUMMARY
    assert result.program_description == "The program answers quiz questions."


async def test_proposal_prompts_are_grounded(server: FakeLLMServer, lm: LM) -> None:
    await propose_instructions(program(), TRAIN, demo_sets(), lm=lm, num_candidates=5, seed=3)
    sent = proposals(server)
    assert len(sent) == 4
    tips = {v for v in TIPS.values() if v}
    for request in sent:
        text = prompt(request)
        assert f"dataset_summary: {SUMMARY}" in text
        assert "program_description: The program answers quiz questions." in text
        assert f"current_instruction: {ORIGINAL}" in text
        assert "- question (string)" in text
        assert "Example 1:\nquestion: q" in text
        assert request.temperature == 1.0
        tip_lines = [ln for ln in text.splitlines() if ln.startswith("tip: ")]
        assert all(ln.removeprefix("tip: ") in tips for ln in tip_lines)
    # Candidate i is shown demo set i.
    assert [prompt(r).count("question: q") for r in sent] == [1, 1, 1, 1]
    shown = sorted(prompt(r).split("Example 1:\nquestion: ")[1][:2] for r in sent)
    assert shown == ["q1", "q2", "q3", "q4"]
    assert any("tip: " in prompt(r) for r in sent)


async def test_calls_are_concurrent(server: FakeLLMServer, lm: LM) -> None:
    await propose_instructions(program(), TRAIN, demo_sets(), lm=lm, num_candidates=6, seed=3)
    assert server.peak_in_flight >= 5


async def test_failed_proposals_are_reported(server: FakeLLMServer, lm: LM) -> None:
    result = await propose_instructions(
        program(), TRAIN, demo_sets(fail_set=2), lm=lm, num_candidates=5, seed=3
    )
    candidates = result.candidates["predict"]
    assert len(candidates) == 4 and candidates[0] == ORIGINAL
    assert len(result.failures) == 2  # the call and its retry
    assert "predictor 'predict' candidate 2" in result.failures[0]
    assert "ParseError" in result.failures[0]
    assert "(retry)" in result.failures[1]


async def test_failed_summary_is_reported_and_proposals_go_on() -> None:
    def no_summary(request: FakeRequest) -> str:
        return "" if kind(request) in ("observe", "summary") else responder(request)

    with FakeLLMServer(responder=no_summary, latency_s=0.01) as server:
        config = LMConfig(
            model="fake", base_url=server.base_url, api_key_env=None, cache=False, max_retries=0
        )
        lm = LM(config)
        result = await propose_instructions(
            program(), TRAIN, demo_sets(), lm=lm, num_candidates=3, seed=3
        )
        await lm.aclose()
        assert result.dataset_summary is None
        assert len(result.failures) == 1 and "dataset summary failed" in result.failures[0]
        assert len(result.candidates["predict"]) == 3
        assert all("dataset_summary" not in prompt(r) for r in proposals(server))


async def test_same_seed_same_candidates(server: FakeLLMServer, lm: LM) -> None:
    first = await propose_instructions(
        program(), TRAIN, demo_sets(), lm=lm, num_candidates=5, seed=3
    )
    second = await propose_instructions(
        program(), TRAIN, demo_sets(), lm=lm, num_candidates=5, seed=3
    )
    assert first == second


async def test_given_context_is_not_recomputed(server: FakeLLMServer, lm: LM) -> None:
    result = await propose_instructions(
        program(),
        TRAIN,
        demo_sets(),
        lm=lm,
        num_candidates=4,
        seed=0,
        dataset_summary="given summary",
        program_description=("given description", {"predict": "the only step"}),
    )
    assert server.requests == 3 == len(proposals(server))
    assert result.dataset_summary == "given summary"
    assert all("predictor_role: the only step" in prompt(r) for r in proposals(server))


async def test_one_candidate_makes_no_call(server: FakeLLMServer, lm: LM) -> None:
    result = await propose_instructions(
        program(), TRAIN, demo_sets(), lm=lm, num_candidates=1, seed=0
    )
    assert result == InstructionCandidates(candidates={"predict": [ORIGINAL]})
    assert server.requests == 0


async def test_summarize_dataset_observes_batches_concurrently(
    server: FakeLLMServer, lm: LM
) -> None:
    summary = await summarize_dataset(TRAIN, lm=lm, seed=1, batch_size=10, max_batches=5)
    assert summary == SUMMARY
    observed = [r for r in server.received if kind(r) == "observe"]
    assert len(observed) == 3  # 25 rows in batches of 10
    assert server.peak_in_flight >= 3
    rows = sorted(ln for r in observed for ln in prompt(r).splitlines() if "question: q" in ln)
    assert len(rows) == 25


async def test_describe_multi_step_program(server: FakeLLMServer, lm: LM) -> None:
    pipe = Pipeline.from_signatures("question -> hint", "question, hint -> answer")
    description, roles = await describe_program(pipe, lm=lm)
    assert description == "The program answers quiz questions."
    assert roles == {
        "step0": "This step writes a hint.",
        "step1": "This step writes a hint.",
    }
    described = next(r for r in server.received if kind(r) == "describe")
    assert "question -> hint" in prompt(described)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("```\nDo it well.\n```", "Do it well."),
        ('Proposed Instruction: "Do it well."', "Do it well."),
        ("**Instruction:** Do it well.", "Do it well."),
        ("“Do it well.”", "Do it well."),
        ("Instructions matter: do it.", "Instructions matter: do it."),
    ],
)
def test_clean_instruction(raw: str, clean: str) -> None:
    assert clean_instruction(raw) == clean
