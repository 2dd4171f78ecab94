"""Programs: predictors, multi-step traces, JSON state round trip, Ax export."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pydantic import JsonValue

from mipro_ray import (
    LM,
    LMConfig,
    ModelSettings,
    Pipeline,
    Predict,
    Program,
    ProgramError,
    Signature,
    load_program,
)
from mipro_ray.errors import ParseError
from mipro_ray.signature import Prediction
from mipro_ray.testing import FakeLLMServer, FakeRequest


def _answer(request: FakeRequest) -> str:
    last = request.messages[-1]["content"]
    system = request.messages[0]["content"]
    if "hint:" in system.split("Answer with")[-1]:
        return "hint: think about " + last.split(":", 1)[1].strip()
    return "answer: 42"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder=_answer, supports_response_format=False) as srv:
        yield srv


@pytest.fixture
def lm(server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> LM:
    return LM(
        LMConfig(
            model="fake",
            base_url=server.base_url,
            api_key_env=None,
            cache=False,
            structured_output="off",
        )
    )


class TwoStep(Program):
    """A user-defined multi-step program, as in DSPy modules."""

    def __init__(self) -> None:
        self.signature = Signature.parse("question -> answer")
        self.hint = Predict("question -> hint", instruction="Give a hint.")
        self.solve = Predict("question, hint -> answer", instruction="Answer using the hint.")

    async def forward(self, **inputs: JsonValue) -> Prediction:
        hint = await self.hint(question=inputs["question"])
        return await self.solve(question=inputs["question"], hint=hint["hint"])


async def test_multi_step_program_records_a_trace_of_every_predictor(lm: LM) -> None:
    program = TwoStep()
    assert list(program.named_predictors()) == ["hint", "solve"]
    result = await program.run({"question": "what?"}, lm=lm)
    assert result.prediction == {"answer": "42"}
    assert [s.predictor for s in result.trace] == ["hint", "solve"]
    assert result.trace[0].outputs == {"hint": "think about what?"}
    assert result.trace[1].inputs == {"question": "what?", "hint": "think about what?"}
    assert result.trace[1].prompt_tokens > 0


async def test_pipeline_chains_steps_and_sends_demos_as_prior_turns(
    lm: LM, server: FakeLLMServer
) -> None:
    pipeline = Pipeline.from_signatures("question -> hint", "question, hint -> answer")
    assert str(pipeline.signature) == "question -> answer"
    pipeline.steps["step1"].demos = [{"question": "q0", "hint": "h0", "answer": "a0"}]
    result = await pipeline.run({"question": "why?"}, lm=lm)
    assert result.prediction == {"answer": "42"}
    second = server.received[-1].messages
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == "answer: a0"


def test_state_round_trips_through_json_losslessly(tmp_path: object) -> None:
    pipeline = Pipeline.from_signatures(
        'question:string "the question" -> answer:class "yes, no"', instructions=["Be brief."]
    )
    step = pipeline.steps["predict"]
    step.demos = [{"question": "is it?", "answer": "yes"}]
    step.settings = ModelSettings(temperature=0.3, top_p=0.9, max_tokens=20)
    text = pipeline.to_json()
    loaded = load_program(text)
    assert loaded.state() == pipeline.state()
    assert json.loads(loaded.to_json()) == json.loads(text)


def test_user_program_reloads_from_its_import_path() -> None:
    program = TwoStep()
    program.solve.instruction = "Optimized instruction."
    program.hint.demos = [{"question": "q", "hint": "h"}]
    loaded = load_program(program.to_json())
    assert isinstance(loaded, TwoStep)
    assert loaded.solve.instruction == "Optimized instruction."
    assert loaded.hint.demos == [{"question": "q", "hint": "h"}]


def test_loading_a_state_with_another_signature_is_refused() -> None:
    program = TwoStep()
    state = program.state().model_copy(
        update={
            "predictors": {
                **program.state().predictors,
                "hint": program.hint.state().model_copy(update={"signature": "question -> clue"}),
            }
        }
    )
    with pytest.raises(ProgramError, match="signature"):
        program.load_state(state)


def test_ax_export_carries_instruction_demos_and_model_config() -> None:
    pipeline = Pipeline.from_signatures("question -> answer", instructions=["Answer well."])
    step = pipeline.steps["predict"]
    step.demos = [{"question": "q", "answer": "a"}]
    step.settings = ModelSettings(temperature=0.5, top_p=0.8)
    ax = pipeline.to_ax(best_score=0.9)
    assert ax["instruction"] == "Answer well."
    assert ax["demos"] == [{"programId": "predict", "traces": [{"question": "q", "answer": "a"}]}]
    assert ax["modelConfig"] == {"temperature": 0.5, "topP": 0.8}
    assert ax["bestScore"] == 0.9


async def test_predict_outside_a_run_says_how_to_run_it() -> None:
    with pytest.raises(ProgramError, match=r"program\.run"):
        await Predict("question -> answer")(question="x")


async def test_unparseable_answer_is_a_typed_error(server: FakeLLMServer, lm: LM) -> None:
    program = Pipeline.from_signatures('question -> answer:class "yes, no"')
    with pytest.raises(ParseError):
        await program.run({"question": "x"}, lm=lm)
