"""LLM programs: `Predict` steps, multi-step `Program`s, traces, JSON state and the Ax export.

A `Predict` is one LLM call: a signature, an instruction, few-shot demos and model settings.
A `Program` holds one or more named predictors; subclass it and write ``forward`` (as in DSPy
modules) to call them in any order, or use `Pipeline` for a chain declared from signatures.
``Program.run`` executes ``forward`` with an LM and records a trace of every predictor call, which
the optimizer uses to bootstrap demos for every predictor from one successful run.

The optimizable state (instruction, demos, settings per predictor) is a pydantic
`ProgramState`: it serializes to JSON losslessly and can be exported for an Ax program.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from mipro_ray.errors import ProgramError
from mipro_ray.lm import LM, LMRequest
from mipro_ray.prompt import parse_answer, render_messages, response_schema
from mipro_ray.signature import Example, Prediction, Signature
from mipro_ray.signature import Field as SigField

_P = TypeVar("_P", bound="Program")


class ModelSettings(BaseModel):
    """Sampling settings of one predictor; ``None`` leaves the endpoint's default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)


class PredictState(BaseModel):
    """The optimizable state of one predictor, as saved in JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signature: str
    instruction: str
    demos: list[Example] = Field(default_factory=list)
    settings: ModelSettings = Field(default_factory=ModelSettings)


class ProgramState(BaseModel):
    """The whole optimizable state of a program.

    Attributes:
        program: ``"pipeline"`` for a `Pipeline`, else the ``"module:QualName"`` of the
            `Program` subclass (re-created with its no-argument constructor on load).
        predictors: Predictor states by name, in the program's order.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    predictors: dict[str, PredictState]


class TraceStep(BaseModel):
    """One predictor call recorded while a program ran."""

    model_config = ConfigDict(frozen=True)

    predictor: str
    inputs: Example
    outputs: Prediction
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False


class RunResult(BaseModel):
    """What one program run produced: the prediction and the trace of predictor calls."""

    model_config = ConfigDict(frozen=True)

    prediction: Prediction
    trace: list[TraceStep]


@dataclass
class _RunContext:
    lm: LM
    rollout_id: str | int | None
    trace: list[TraceStep] = field(default_factory=list)


_CURRENT_RUN: ContextVar[_RunContext | None] = ContextVar("mipro_ray_run", default=None)


def default_instruction(signature: Signature) -> str:
    """The instruction used when none is given: the task description or one built from fields."""
    if signature.description:
        return signature.description
    ins = ", ".join(f"`{n}`" for n in signature.input_names)
    outs = ", ".join(f"`{n}`" for n in signature.output_names)
    return f"Given the fields {ins}, produce the fields {outs}."


class Predict:
    """One LLM call: signature + instruction + demos + model settings.

    Call it (``await step(question=...)``) inside a `Program`'s ``forward``; the LM comes from
    the enclosing `Program.run`.
    """

    def __init__(
        self,
        signature: Signature | str,
        *,
        instruction: str | None = None,
        demos: Sequence[Example] = (),
        settings: ModelSettings | None = None,
    ) -> None:
        """Creates a predictor.

        Args:
            signature: A `Signature` or an Ax signature string.
            instruction: The task instruction; defaults to the signature's description.
            demos: Few-shot examples holding input and output fields.
            settings: Sampling settings.
        """
        self.signature = (
            signature if isinstance(signature, Signature) else Signature.parse(signature)
        )
        self.instruction = (
            instruction if instruction is not None else default_instruction(self.signature)
        )
        self.demos: list[Example] = [dict(d) for d in demos]
        self.settings = settings if settings is not None else ModelSettings()
        self.name = ""

    def state(self) -> PredictState:
        """Returns this predictor's optimizable state."""
        return PredictState(
            signature=str(self.signature),
            instruction=self.instruction,
            demos=[dict(d) for d in self.demos],
            settings=self.settings,
        )

    def load_state(self, state: PredictState) -> None:
        """Applies a saved state; the signature must match this predictor's."""
        loaded = Signature.parse(state.signature)
        if loaded != self.signature:
            raise ProgramError(
                f"predictor '{self.name}' has signature '{self.signature}' but the saved state "
                f"has '{state.signature}'; load a state saved from the same program"
            )
        self.instruction = state.instruction
        self.demos = [dict(d) for d in state.demos]
        self.settings = state.settings

    async def __call__(self, **inputs: JsonValue) -> Prediction:
        """Runs the LLM call with the current run's LM and records it in the trace.

        Raises:
            ProgramError: when called outside `Program.run`.
            ParseError: when the answer does not fit the output fields.
            LMError: when the LM call fails after its retries.
        """
        ctx = _CURRENT_RUN.get()
        if ctx is None:
            raise ProgramError(
                f"predictor '{self.name or self.signature}' was called outside Program.run(); "
                "run programs with `await program.run(inputs, lm=lm)`"
            )
        lm = ctx.lm
        structured = (
            lm.config.structured_output != "off" and lm.supports_structured_output is not False
        )
        messages = render_messages(
            self.signature,
            instruction=self.instruction,
            demos=self.demos,
            inputs=dict(inputs),
            structured=structured,
        )
        request = LMRequest(
            messages=tuple(messages),
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            max_tokens=self.settings.max_tokens,
            response_format=response_schema(self.signature) if structured else None,
            rollout_id=ctx.rollout_id,
        )
        response = await lm.complete(request)
        prediction = parse_answer(self.signature, response.text)
        ctx.trace.append(
            TraceStep(
                predictor=self.name,
                inputs=dict(inputs),
                outputs=prediction,
                prompt_tokens=response.prompt_tokens,
                completion_tokens=response.completion_tokens,
                latency_s=response.latency_s,
                cached=response.cached,
            )
        )
        return prediction


class Program:
    """A program of one or more named predictors.

    Subclass it, assign `Predict` attributes in ``__init__`` (a no-argument constructor lets
    saved programs be re-created), and implement ``async def forward(self, **inputs)``. The
    program's ``signature`` (inputs it needs, outputs it returns) defaults to that of its only
    predictor; multi-step programs set it explicitly.
    """

    signature: Signature

    async def forward(self, **inputs: JsonValue) -> Prediction:
        """Computes the program's outputs from its inputs by calling predictors."""
        raise NotImplementedError(f"{type(self).__name__} must implement async forward()")

    def named_predictors(self) -> dict[str, Predict]:
        """Returns every predictor by attribute name (lists/dicts as ``name.key``), in order."""
        found: dict[str, Predict] = {}
        for attr, value in vars(self).items():
            if isinstance(value, Predict):
                found[attr] = value
            elif isinstance(value, list | tuple):
                for i, item in enumerate(value):
                    if isinstance(item, Predict):
                        found[f"{attr}.{i}"] = item
            elif isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(item, Predict):
                        found[f"{attr}.{key}"] = item
        for name, predictor in found.items():
            predictor.name = name
        return found

    def program_signature(self) -> Signature:
        """The program's overall signature (inputs it needs, outputs it returns)."""
        explicit = getattr(self, "signature", None)
        if isinstance(explicit, Signature):
            return explicit
        predictors = self.named_predictors()
        if len(predictors) == 1:
            return next(iter(predictors.values())).signature
        raise ProgramError(
            f"{type(self).__name__} has {len(predictors)} predictors; set `self.signature` to "
            "the program's overall signature (its inputs and final outputs)"
        )

    async def run(
        self, inputs: Mapping[str, JsonValue], *, lm: LM, rollout_id: str | int | None = None
    ) -> RunResult:
        """Runs ``forward`` on the inputs with ``lm`` and returns the prediction and trace.

        Args:
            inputs: Values of the program's input fields (extra keys are ignored).
            lm: The LM every predictor calls.
            rollout_id: Passed to every LM request; a new id forces fresh (uncached) samples.
        """
        self.named_predictors()
        names = self.program_signature().input_names
        ctx = _RunContext(lm=lm, rollout_id=rollout_id)
        token = _CURRENT_RUN.set(ctx)
        try:
            prediction = await self.forward(**{k: inputs[k] for k in names if k in inputs})
        finally:
            _CURRENT_RUN.reset(token)
        return RunResult(prediction=prediction, trace=ctx.trace)

    def state(self) -> ProgramState:
        """Returns the whole optimizable state."""
        return ProgramState(
            program=self._kind(),
            predictors={name: p.state() for name, p in self.named_predictors().items()},
        )

    def load_state(self, state: ProgramState) -> None:
        """Applies a saved state; predictor names and signatures must match."""
        predictors = self.named_predictors()
        if set(predictors) != set(state.predictors):
            raise ProgramError(
                f"the saved state has predictors {sorted(state.predictors)} but "
                f"{type(self).__name__} has {sorted(predictors)}"
            )
        for name, predictor in predictors.items():
            predictor.load_state(state.predictors[name])

    def copy(self: _P) -> _P:
        """Returns an independent deep copy (predictors included)."""
        return copy.deepcopy(self)

    def to_json(self) -> str:
        """Serializes the program's state to JSON (see `load_program`)."""
        return self.state().model_dump_json(indent=2)

    def save(self, path: str | Path) -> None:
        """Writes `to_json` to a local file."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def to_ax(self, *, best_score: float | None = None) -> dict[str, JsonValue]:
        """Exports the optimized state in the shape of Ax's optimized-program JSON.

        The top-level ``instruction``/``demos``/``modelConfig`` describe the first predictor
        (what a single-step Ax program applies); ``predictors`` holds every predictor.
        """
        predictors = self.named_predictors()
        per: dict[str, JsonValue] = {name: _ax_predictor(p) for name, p in predictors.items()}
        first = next(iter(predictors.values()))
        return {
            "version": "2.0",
            "optimizerType": "MiPRO",
            "bestScore": best_score,
            "instruction": first.instruction,
            "demos": [
                {"programId": name, "traces": [dict(d) for d in p.demos]}
                for name, p in predictors.items()
                if p.demos
            ],
            "modelConfig": _ax_model_config(first.settings),
            "predictors": per,
        }

    def _kind(self) -> str:
        cls = type(self)
        return f"{cls.__module__}:{cls.__qualname__}"


class Pipeline(Program):
    """A chain of predictors: each step reads the example's inputs and earlier steps' outputs.

    The program's outputs are the last step's outputs.
    """

    def __init__(self, steps: Sequence[tuple[str, Predict]] | Mapping[str, Predict]) -> None:
        """Creates a pipeline from named steps.

        Raises:
            ProgramError: if there is no step, a name repeats, or a step needs a field that
                neither the program inputs nor an earlier step provide.
        """
        items = list(steps.items()) if isinstance(steps, Mapping) else list(steps)
        if not items:
            raise ProgramError("a Pipeline needs at least one step")
        names = [n for n, _ in items]
        if len(set(names)) != len(names):
            raise ProgramError(f"Pipeline step names must be unique, got {names}")
        self.steps: dict[str, Predict] = dict(items)
        self.signature = _chain_signature([p.signature for p in self.steps.values()])

    @classmethod
    def from_signatures(
        cls, *signatures: Signature | str, instructions: Sequence[str | None] = ()
    ) -> Pipeline:
        """Builds a pipeline of steps ``step0``, ``step1``, ... (a single step is ``predict``)."""
        if len(signatures) == 1:
            names = ["predict"]
        else:
            names = [f"step{i}" for i in range(len(signatures))]
        steps = []
        for i, sig in enumerate(signatures):
            instruction = instructions[i] if i < len(instructions) else None
            steps.append((names[i], Predict(sig, instruction=instruction)))
        return cls(steps)

    def named_predictors(self) -> dict[str, Predict]:
        """The steps, by step name."""
        for name, predictor in self.steps.items():
            predictor.name = name
        return dict(self.steps)

    async def forward(self, **inputs: JsonValue) -> Prediction:
        """Runs the steps in order, feeding each the fields it names."""
        values: dict[str, JsonValue] = dict(inputs)
        last: Prediction = {}
        for step in self.steps.values():
            args = {k: values[k] for k in step.signature.input_names if k in values}
            last = await step(**args)
            values.update(last)
        return last

    def _kind(self) -> str:
        return "pipeline"


def _chain_signature(signatures: Sequence[Signature]) -> Signature:
    produced: set[str] = set()
    inputs: list[SigField] = []
    for sig in signatures:
        for f in sig.inputs:
            if f.name not in produced and f.name not in {i.name for i in inputs}:
                inputs.append(f)
        produced.update(sig.output_names)
    last = signatures[-1]
    outputs = tuple(f for f in last.outputs if f.name not in {i.name for i in inputs})
    return Signature(inputs=tuple(inputs), outputs=outputs, description=signatures[0].description)


def _ax_model_config(settings: ModelSettings) -> dict[str, JsonValue]:
    config: dict[str, JsonValue] = {}
    if settings.temperature is not None:
        config["temperature"] = settings.temperature
    if settings.top_p is not None:
        config["topP"] = settings.top_p
    if settings.max_tokens is not None:
        config["maxTokens"] = settings.max_tokens
    return config


def _ax_predictor(p: Predict) -> dict[str, JsonValue]:
    return {
        "signature": str(p.signature),
        "instruction": p.instruction,
        "demos": [dict(d) for d in p.demos],
        "modelConfig": _ax_model_config(p.settings),
    }


def load_program(source: str | Path | ProgramState) -> Program:
    """Re-creates a program from its saved state (a `ProgramState`, JSON text or a file path).

    A `Pipeline` is rebuilt from the signatures in the state; a `Program` subclass is imported
    from its ``module:QualName`` and constructed without arguments, then the state is applied.

    Raises:
        ProgramError: if the JSON is invalid or the class cannot be imported or constructed.
    """
    state = _coerce_state(source)
    if state.program == "pipeline":
        steps = [
            (
                name,
                Predict(s.signature, instruction=s.instruction, demos=s.demos, settings=s.settings),
            )
            for name, s in state.predictors.items()
        ]
        return Pipeline(steps)
    module_name, _, qualname = state.program.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ProgramError(
            f"cannot import program class '{state.program}': {exc}; make its module importable"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, Program)):
        raise ProgramError(f"'{state.program}' is not a mipro_ray.Program subclass")
    try:
        program = obj()
    except TypeError as exc:
        raise ProgramError(
            f"cannot construct '{state.program}' without arguments ({exc}); build it yourself "
            "and call program.load_state(state)"
        ) from exc
    program.load_state(state)
    return program


def _coerce_state(source: str | Path | ProgramState) -> ProgramState:
    if isinstance(source, ProgramState):
        return source
    text = str(source)
    if isinstance(source, Path) or not text.lstrip().startswith("{"):
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProgramError(f"cannot read program file '{source}': {exc}") from exc
    try:
        return ProgramState.model_validate(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ProgramError(f"invalid program JSON: {exc}") from exc
