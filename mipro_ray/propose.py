"""Grounded instruction proposals per predictor (MIPROv2 step 2).

For every predictor, ``num_candidates - 1`` new instructions are proposed by an LM that is shown
the context MIPROv2 grounds proposals in: a summary of the train set, a description of the
program and of the predictor's role in it, the predictor's signature and current instruction,
a few demos from one of the candidate demo sets, and a randomly drawn tip. Candidate 0 is
always the program's original instruction.

Differences from DSPy's ``GroundedProposer``, on purpose:

- the dataset summary observes its batches concurrently (DSPy chains them), then one call
  summarizes the observations;
- the program and each predictor's role are described once, not once per candidate;
- every proposal call runs concurrently, with its own tip, temperature and ``rollout_id``
  (``propose-{seed}-{predictor}-{i}``), so candidates differ and the response cache keeps
  them apart;
- a failed proposal (LM error, unparsable or empty answer, longer than 4000 characters) is
  recorded in `InstructionCandidates.failures` and logged at WARNING. A failed or duplicate
  proposal is retried once with a fresh rollout id; when that fails too, the predictor simply
  has fewer candidates (duplicates, including copies of the original, are dropped).

The meta-prompts are ordinary `Predict` steps, so they use the normal render/parse path (and
structured output where the endpoint supports it). They are short, so that small local models
can follow them too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import re
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from mipro_ray.bootstrap import DemoSets
from mipro_ray.errors import ConfigError, MiproError, ParseError
from mipro_ray.lm import LM
from mipro_ray.program import ModelSettings, Pipeline, Predict, Program
from mipro_ray.signature import Example, Signature
from mipro_ray.signature import Field as SigField

__all__ = [
    "TIPS",
    "InstructionCandidates",
    "clean_instruction",
    "describe_program",
    "propose_instructions",
    "summarize_dataset",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

TIPS: dict[str, str] = {
    "none": "",
    "creative": "Don't be afraid to be creative when writing the new instruction!",
    "simple": "Keep the instruction clear and concise.",
    "description": "Make the instruction informative and descriptive.",
    "high_stakes": "Describe a high-stakes scenario in which the model must solve the task.",
    "persona": 'Give the model a persona relevant to the task (e.g. "You are a ...").',
}
"""Tips drawn at random for each proposal, as in DSPy's grounded proposer."""

MAX_INSTRUCTION_CHARS = 4000
_MAX_VALUE_CHARS = 300
_MAX_DEMOS_SHOWN = 3
_SINGLE_ROLE = "The program's only step: it performs the whole task."

_OBSERVE = (
    "Here are some rows of a dataset. Write observations about trends that hold for most or "
    "all of them: topics, content, style, length, format. Make an educated guess about the "
    "task this dataset is for."
)
_SUMMARIZE = (
    "Here are observations about a dataset. Summarize them in 2-3 sentences that keep only "
    "the most important points."
)
_DESCRIBE = (
    "Here is a program that solves a task with calls to a language model; its steps are "
    "listed with their inputs, outputs and instructions. Describe in 2-4 sentences what task "
    "the program solves and how it works."
)
_ROLE = "Describe in 1-2 sentences the role of the named step in the program."
_PROPOSE = (
    "Use the information below to learn about a task that a language model program solves. "
    "Then write a new instruction that will prompt a language model to perform this step of "
    "the program better. Answer with the instruction only."
)

_CONTEXT_FIELDS: dict[str, str] = {
    "dataset_summary": "A summary of the dataset",
    "program_description": "What the program does and how",
    "predictor_role": "The role of this step in the program",
    "task_signature": "The inputs and outputs of this step",
    "current_instruction": "The instruction this step uses now",
    "examples": "Examples of this step's inputs and outputs",
    "tip": "A suggestion for writing the new instruction",
}
_LABEL = re.compile(
    r"^\s*[*_#`\s]*(?:proposed[ _]instruction|new[ _]instruction|instruction)\s*[*_`]*\s*:"
    r"[*_`]*\s*",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_QUOTES = (('"', '"'), ("'", "'"), ("“", "”"), ("**", "**"), ("`", "`"))


class InstructionCandidates(BaseModel):
    """Instruction candidates per predictor and how they were obtained.

    Attributes:
        candidates: Predictor name -> instructions; index 0 is always the original one, the
            rest are unique proposals in candidate order (fewer than requested when proposals
            failed or were duplicates).
        dataset_summary: The summary shown to the proposer, if any.
        program_description: The program description shown to the proposer, if any.
        predictor_roles: The role of each predictor shown to the proposer.
        failures: One message per failed call (summary, description or proposal).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidates: dict[str, list[str]]
    dataset_summary: str | None = None
    program_description: str | None = None
    predictor_roles: dict[str, str] = Field(default_factory=dict)
    failures: list[str] = Field(default_factory=list)


async def summarize_dataset(
    trainset: Sequence[Example],
    *,
    lm: LM,
    seed: int,
    batch_size: int = 10,
    max_batches: int = 5,
    concurrency: int = 16,
) -> str:
    """Summarizes the train set in a few sentences.

    The train set is shuffled with ``random.Random(seed)`` and cut into at most
    ``max_batches`` batches of ``batch_size`` rows; one observation call per batch runs
    concurrently, then one call summarizes the observations (``max_batches + 1`` calls).
    Failed observation calls are logged at WARNING and left out.

    Raises:
        ConfigError: The train set is empty or a size is < 1.
        LMError, ParseError: Every observation call failed, or the summary call failed.
    """
    if not trainset:
        raise ConfigError("cannot summarize an empty train set")
    if batch_size < 1 or max_batches < 1 or concurrency < 1:
        raise ConfigError("batch_size, max_batches and concurrency must be >= 1")
    order = list(range(len(trainset)))
    random.Random(seed).shuffle(order)
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)][:max_batches]
    semaphore = asyncio.Semaphore(concurrency)

    async def observe(batch: list[int]) -> str:
        rows = "\n\n".join(_format_row(trainset[i]) for i in batch)
        async with semaphore:
            return await _ask(_OBSERVE, {"examples": rows}, "observations", lm=lm)

    results = await asyncio.gather(*(observe(b) for b in batches), return_exceptions=True)
    observations: list[str] = []
    first_error: BaseException | None = None
    for i, result in enumerate(results):
        if isinstance(result, MiproError):
            logger.warning("dataset summary: observation call %d failed: %s", i, result)
            first_error = first_error if first_error is not None else result
        elif isinstance(result, BaseException):
            raise result
        else:
            observations.append(result)
    if not observations:
        assert first_error is not None
        raise first_error
    joined = "\n\n".join(observations)
    return await _ask(_SUMMARIZE, {"observations": joined}, "summary", lm=lm)


async def describe_program(program: Program, *, lm: LM) -> tuple[str, dict[str, str]]:
    """Describes the program and the role of each of its predictors.

    One call describes the program from its predictors' signatures and instructions (and the
    source of ``forward`` for a `Program` subclass); then one call per predictor, concurrently,
    describes its role. A single-predictor program needs no role call.

    Returns:
        The program description, and the role of each predictor by name.

    Raises:
        LMError, ParseError: A call failed.
    """
    code = _program_code(program)
    description = await _ask(_DESCRIBE, {"program_code": code}, "program_description", lm=lm)
    names = list(program.named_predictors())
    if len(names) == 1:
        return description, {names[0]: _SINGLE_ROLE}
    roles = await asyncio.gather(
        *(
            _ask(
                _ROLE,
                {"program_code": code, "program_description": description, "step": name},
                "step_role",
                lm=lm,
            )
            for name in names
        )
    )
    return description, dict(zip(names, roles, strict=True))


async def propose_instructions(
    program: Program,
    trainset: Sequence[Example],
    demo_sets: DemoSets,
    *,
    lm: LM,
    num_candidates: int,
    seed: int,
    temperature: float = 1.0,
    dataset_summary: str | None = None,
    program_description: tuple[str, dict[str, str]] | None = None,
    data_aware: bool = True,
    program_aware: bool = True,
    tip_aware: bool = True,
    fewshot_aware: bool = True,
    concurrency: int = 16,
) -> InstructionCandidates:
    """Proposes up to ``num_candidates`` instructions per predictor (the original first).

    Proposal ``i`` (1..num_candidates-1) of a predictor is shown demos from demo set
    ``i mod num_sets`` (the next non-empty one if that is empty) and a tip drawn with
    ``random.Random(seed)``. The dataset summary and program description are computed
    concurrently here when not given (and when ``data_aware``/``program_aware``); if they
    fail, proposals go on without them and the failure is recorded.

    Args:
        program: The program whose predictors get instructions (not modified).
        trainset: Train examples, for the dataset summary.
        demo_sets: Candidate demo sets from `bootstrap_demo_sets`.
        lm: The proposer LM.
        num_candidates: Instructions per predictor, the original included (>= 1).
        seed: Seed of tips and summary batches; the same seed gives the same prompts.
        temperature: Sampling temperature of proposal calls.
        dataset_summary: A precomputed summary (see `summarize_dataset`).
        program_description: A precomputed description (see `describe_program`).
        data_aware: Show the dataset summary.
        program_aware: Show the program description and the predictor's role.
        tip_aware: Show a random tip.
        fewshot_aware: Show demos.
        concurrency: Most proposal calls in flight.

    Raises:
        ConfigError: ``num_candidates`` or ``concurrency`` < 1.
    """
    if num_candidates < 1 or concurrency < 1:
        raise ConfigError("num_candidates and concurrency must be >= 1")
    predictors = program.named_predictors()
    originals = {name: p.instruction for name, p in predictors.items()}
    if num_candidates == 1:
        return InstructionCandidates(candidates={n: [i] for n, i in originals.items()})
    failures: list[str] = []
    summary, described = await asyncio.gather(
        _context(
            "dataset summary",
            summarize_dataset(trainset, lm=lm, seed=seed, concurrency=concurrency)
            if data_aware and dataset_summary is None and trainset
            else None,
            dataset_summary if data_aware else None,
            failures,
        ),
        _context(
            "program description",
            describe_program(program, lm=lm)
            if program_aware and program_description is None
            else None,
            program_description if program_aware else None,
            failures,
        ),
    )
    description, roles = described if described is not None else (None, {})
    rng = random.Random(seed)
    jobs: list[tuple[str, int, dict[str, JsonValue]]] = []
    for name, predictor in predictors.items():
        for i in range(1, num_candidates):
            tip = TIPS[rng.choice(sorted(TIPS))] if tip_aware else ""
            demos = _demos_for(demo_sets, name, i) if fewshot_aware else []
            context: dict[str, JsonValue] = {
                "dataset_summary": summary,
                "program_description": description,
                "predictor_role": roles.get(name),
                "task_signature": _describe_signature(predictor.signature),
                "current_instruction": predictor.instruction,
                "examples": _format_demos(predictor.signature, demos) or None,
                "tip": tip or None,
            }
            jobs.append((name, i, {k: v for k, v in context.items() if v is not None}))
    proposer = _Proposer(lm=lm, seed=seed, temperature=temperature, concurrency=concurrency)
    candidates = await proposer.run(jobs, originals, failures)
    return InstructionCandidates(
        candidates=candidates,
        dataset_summary=summary,
        program_description=description,
        predictor_roles=roles,
        failures=failures,
    )


class _Proposer:
    """Runs the proposal calls (with one retry each) and dedupes their results."""

    def __init__(self, *, lm: LM, seed: int, temperature: float, concurrency: int) -> None:
        self.lm = lm
        self.seed = seed
        self.temperature = temperature
        self.semaphore = asyncio.Semaphore(concurrency)

    async def run(
        self,
        jobs: list[tuple[str, int, dict[str, JsonValue]]],
        originals: dict[str, str],
        failures: list[str],
    ) -> dict[str, list[str]]:
        candidates = {name: [text] for name, text in originals.items()}
        seen = {name: {_norm(text)} for name, text in originals.items()}
        retry: list[tuple[str, int, dict[str, JsonValue]]] = []
        for attempt in ("", "-retry"):
            batch = jobs if not attempt else retry
            results = await asyncio.gather(*(self._one(n, i, c, attempt) for n, i, c in batch))
            retry = []
            for (name, i, context), (text, error) in zip(batch, results, strict=True):
                if error is not None:
                    message = f"predictor '{name}' candidate {i}{attempt and ' (retry)'}: {error}"
                    logger.warning("instruction proposal failed: %s", message)
                    failures.append(message)
                    retry.append((name, i, context))
                elif _norm(text) in seen[name]:
                    logger.info("predictor '%s' candidate %d%s: duplicate", name, i, attempt)
                    retry.append((name, i, context))
                else:
                    seen[name].add(_norm(text))
                    candidates[name].append(text)
        return candidates

    async def _one(
        self, name: str, i: int, context: dict[str, JsonValue], attempt: str
    ) -> tuple[str, str | None]:
        rollout = f"propose-{self.seed}-{name}-{i}{attempt}"
        async with self.semaphore:
            try:
                raw = await _ask(
                    _PROPOSE,
                    context,
                    "proposed_instruction",
                    lm=self.lm,
                    temperature=self.temperature,
                    rollout_id=rollout,
                )
            except MiproError as exc:
                return "", f"{type(exc).__name__}: {exc}"
        text = clean_instruction(raw)
        if not text:
            return "", "the proposer answered with an empty instruction"
        if len(text) > MAX_INSTRUCTION_CHARS:
            return "", f"the proposed instruction has {len(text)} characters (limit 4000)"
        return text, None


async def _context(
    what: str,
    pending: Awaitable[_T] | None,
    given: _T | None,
    failures: list[str],
) -> _T | None:
    """Awaits an optional context computation; a failure is recorded and yields None."""
    if pending is None:
        return given
    try:
        return await pending
    except MiproError as exc:
        message = f"{what} failed, proposing without it: {type(exc).__name__}: {exc}"
        logger.warning(message)
        failures.append(message)
        return None


async def _ask(
    instruction: str,
    inputs: dict[str, JsonValue],
    output: str,
    *,
    lm: LM,
    temperature: float | None = None,
    rollout_id: str | None = None,
) -> str:
    """One meta-prompt call through a one-step program; returns the cleaned output text."""
    signature = Signature(
        inputs=tuple(SigField(name=n, description=_CONTEXT_FIELDS.get(n)) for n in inputs),
        outputs=(SigField(name=output),),
    )
    step = Predict(
        signature, instruction=instruction, settings=ModelSettings(temperature=temperature)
    )
    result = await Pipeline([("ask", step)]).run(inputs, lm=lm, rollout_id=rollout_id)
    value = result.prediction.get(output)
    text = clean_instruction(value) if isinstance(value, str) else ""
    if not text:
        raise ParseError(f"the answer has no text for {output!r}", field=output)
    return text


def clean_instruction(text: str) -> str:
    """Strips fences, a leading "Instruction:"-style label and wrapping quotes from LM text."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    text = _LABEL.sub("", text, count=1).strip()
    changed = True
    while changed and len(text) >= 2:
        changed = False
        for left, right in _QUOTES:
            if (
                len(text) > len(left) + len(right)
                and text.startswith(left)
                and text.endswith(right)
            ):
                text = text[len(left) : -len(right)].strip()
                changed = True
    return text


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _short(value: JsonValue) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _format_row(example: Example) -> str:
    return "\n".join(f"{k}: {_short(v)}" for k, v in example.items())


def _describe_signature(signature: Signature) -> str:
    def line(field: SigField) -> str:
        text = f"- {field.name} ({field.type_label()})"
        return f"{text}: {field.description}" if field.description else text

    inputs = "\n".join(line(f) for f in signature.inputs)
    outputs = "\n".join(line(f) for f in signature.outputs)
    return f"Inputs:\n{inputs}\nOutputs:\n{outputs}"


def _demos_for(demo_sets: DemoSets, name: str, i: int) -> list[Example]:
    """Demos of set ``i`` (cycling), or of the next non-empty set when that one is empty."""
    sets = demo_sets.sets.get(name, [])
    for offset in range(len(sets)):
        demos = sets[(i + offset) % len(sets)]
        if demos:
            return demos[:_MAX_DEMOS_SHOWN]
    return []


def _format_demos(signature: Signature, demos: Sequence[Example]) -> str:
    names = (*signature.input_names, *signature.output_names)
    blocks = []
    for n, demo in enumerate(demos, start=1):
        lines = [f"{k}: {_short(demo[k])}" for k in names if demo.get(k) is not None]
        blocks.append(f"Example {n}:\n" + "\n".join(lines))
    return "\n\n".join(blocks)


def _program_code(program: Program) -> str:
    predictors = program.named_predictors()
    lines = [f"Program {type(program).__name__} with {len(predictors)} step(s):"]
    for name, p in predictors.items():
        lines.append(f"- step '{name}': {p.signature}")
        lines.append(f"  instruction: {_short(p.instruction)}")
    if not isinstance(program, Pipeline):
        try:
            lines += ["", "forward():", inspect.getsource(type(program).forward)]
        except (OSError, TypeError):
            logger.debug("no source for %s.forward", type(program).__name__)
    else:
        lines.append("The steps run in order; each reads the inputs and earlier outputs.")
    return "\n".join(lines)
