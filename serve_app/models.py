"""HTTP bodies of the Ax optimizer-service protocol (``../shared/AX_PROTOCOL.md``).

Field names and shapes follow the protocol exactly, so Ax's ``AxMiPRO`` works unchanged.
Validators give one specific 422 message per invalid spec. The library (``mipro_ray``) has no
models for this protocol yet; when it does, these should re-export them.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

ParamValue = str | int | float | bool
"""A parameter value as it crosses the wire (categorical choices may be any of these)."""

SamplerName = Literal["TPESampler", "RandomSampler", "CmaEsSampler"]
PrunerName = Literal["MedianPruner", "SuccessiveHalvingPruner", "HyperbandPruner"]


class ParameterType(str, Enum):
    """Kind of a search-space parameter."""

    FLOAT = "float"
    INT = "int"
    CATEGORICAL = "categorical"


class Direction(str, Enum):
    """Optimization direction of the objective."""

    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


class JobStatus(str, Enum):
    """Lifecycle of a job: pending -> running -> completed | failed | cancelled.

    ``running`` starts at the first suggest; ``failed`` means the request's ``timeout``
    elapsed before ``n_trials`` were told (``error`` says so). The last three are final: a
    job's status never changes after reaching one of them.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ParameterSpec(BaseModel):
    """One parameter of the search space.

    ``float``/``int`` need ``low`` <= ``high`` (and ``low`` > 0 with ``log``); ``categorical``
    needs a non-empty ``choices`` list.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=256)]
    type: ParameterType
    low: float | None = None
    high: float | None = None
    choices: list[ParamValue] | None = None
    step: Annotated[float | None, Field(gt=0)] = None
    log: bool = False

    @model_validator(mode="after")
    def _check_shape(self) -> ParameterSpec:
        where = f"parameter '{self.name}' ({self.type.value})"
        if self.type is ParameterType.CATEGORICAL:
            if not self.choices:
                raise ValueError(f"{where} needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{where} needs both 'low' and 'high' bounds")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"{where} needs finite bounds")
        if self.low > self.high:
            raise ValueError(f"{where} has low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"{where} uses log scale, so low must be > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError(f"{where} cannot combine 'log' with 'step'")
        if self.type is ParameterType.INT:
            for bound in (self.low, self.high, self.step):
                if bound is not None and not float(bound).is_integer():
                    raise ValueError(f"{where} needs integer low/high/step (got {bound})")
        return self


class Objective(BaseModel):
    """The objective being optimized."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "score"
    direction: Direction = Direction.MINIMIZE


class OptimizationRequest(BaseModel):
    """Body of ``POST /optimize``: creates a study and a job that tracks the client's trials.

    Attributes:
        timeout: Seconds the client has for its ``n_trials``, counted from the job's start
            (its first suggest, when it becomes ``running``), not from ``POST /optimize``, so
            a client that creates its study early does not lose time; this matches Optuna's
            ``optimize(timeout=...)``, which counts from the start of the optimization. After
            it, suggest answers 409 and the job is ``failed`` unless all ``n_trials`` were
            told in time; trials suggested earlier can still be evaluated. None: no limit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    study_name: Annotated[str | None, Field(min_length=1, max_length=256)] = None
    parameters: list[ParameterSpec]
    objective: Objective
    n_trials: Annotated[int, Field(ge=1, le=10000)] = 100
    timeout: Annotated[
        float | None,
        Field(
            gt=0,
            description="seconds from the first suggest after which no more trials are "
            "suggested and an unfinished job fails",
        ),
    ] = None
    sampler: SamplerName = "TPESampler"
    pruner: PrunerName | None = "MedianPruner"
    metadata: dict[str, JsonValue] | None = None

    @field_validator("parameters")
    @classmethod
    def _check_parameters(cls, value: list[ParameterSpec]) -> list[ParameterSpec]:
        if not value:
            raise ValueError("'parameters' must list at least one parameter")
        names = [spec.name for spec in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate parameter names: {', '.join(duplicates)}")
        return value

    @field_validator("study_name")
    @classmethod
    def _check_study_name(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or value.strip() != value):
            raise ValueError("study_name must not contain '/' or surrounding whitespace")
        return value

    @property
    def seed(self) -> int | None:
        """``metadata.seed`` when it is an integer, else None."""
        seed = (self.metadata or {}).get("seed")
        if seed is None:
            return None
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"metadata.seed must be an integer (got {seed!r})")
        return seed

    @model_validator(mode="after")
    def _check_seed(self) -> OptimizationRequest:
        _ = self.seed
        return self


class JobResponse(BaseModel):
    """Answer of ``POST /optimize``."""

    job_id: str
    study_name: str
    status: JobStatus
    created_at: datetime


class Progress(BaseModel):
    """How far the client got: trials told out of ``n_trials``, and the best value so far."""

    n_trials: int
    finished: int = Field(description="trials told by the client (complete + pruned)")
    complete: int
    pruned: int
    failed: int = Field(description="trials marked FAIL (e.g. never evaluated: stale)")
    running: int
    fraction: float
    best_value: float | None = None
    best_trial: int | None = None
    updated_at: datetime | None = None


class TrialOut(BaseModel):
    """One trial of a study."""

    number: int
    value: float | None = None
    params: dict[str, ParamValue]
    state: str
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None
    duration: float | None = None


class OptimizationResult(BaseModel):
    """Answer of ``GET /studies/{name}/results``; best fields are null with no finished trial."""

    study_name: str
    best_trial: TrialOut | None = None
    best_value: float | None = None
    best_params: dict[str, ParamValue] | None = None
    trials: list[TrialOut]
    n_trials: int
    direction: Direction


class JobStatusResponse(BaseModel):
    """Answer of ``GET /jobs/{id}``."""

    job_id: str
    study_name: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    progress: Progress | None = None
    error: str | None = None
    result: OptimizationResult | None = None


class SuggestResponse(BaseModel):
    """Answer of ``POST /studies/{name}/suggest``: every parameter is present."""

    trial_number: int
    params: dict[str, ParamValue]


class EvaluationRequest(BaseModel):
    """Body of ``POST /studies/{name}/evaluate``: tells the value of one suggested trial."""

    model_config = ConfigDict(extra="ignore")

    study_name: str | None = None
    trial_number: Annotated[int, Field(ge=0)]
    value: float
    intermediate_values: dict[int, float] | None = None

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: float) -> float:
        if math.isnan(value):
            raise ValueError("value must be a number, not NaN")
        return value


class EvaluationResponse(BaseModel):
    """Answer of ``evaluate``: the state the trial ended in.

    ``state`` is ``PRUNED`` when intermediate values were given and the study's pruner decided
    to stop the trial; it is then stored as pruned (with its last intermediate value), like the
    original service did. The status code stays 200, because the value was accepted.
    """

    message: str
    study_name: str
    trial_number: int
    state: Literal["COMPLETE", "PRUNED"]
    pruned: bool


class Message(BaseModel):
    """A plain acknowledgement."""

    message: str


class Health(BaseModel):
    """Answer of ``GET /health``."""

    status: Literal["healthy"] = "healthy"
    timestamp: datetime
