"""Search bookkeeping without Ray: full-evaluation cadence, budgets, patience, resume state."""

from __future__ import annotations

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from mipro_ray import Pipeline, Usage
from mipro_ray.search import (
    Candidates,
    MiproSearcher,
    SearchPlan,
    SearchState,
    TrialOutcome,
    TrialRecord,
    apply_params,
    baseline_choices,
    baseline_params,
    covering_start,
    minibatch_indices,
    param_key,
    search_space,
)


def _record(
    number: int, score: float | None, params: dict[str, int | float], **kw: object
) -> TrialRecord:
    fields: dict[str, object] = {
        "number": number,
        "kind": "minibatch",
        "params": params,
        "score": score,
        "state": "complete" if score is not None else "failed",
    }
    fields.update(kw)
    return TrialRecord.model_validate(fields)


def _state(plan: SearchPlan, records: list[TrialRecord] | None = None) -> SearchState:
    return SearchState(plan, records=records or [], usage_before=Usage(), on_record=lambda r: None)


PLAN = SearchPlan(num_trials=10, full_eval_steps=2, baseline={"p__instruction": 0, "p__demos": 0})


def test_every_full_eval_step_queues_the_best_unevaluated_config() -> None:
    state = _state(PLAN)
    state.add(_record(1, 0.4, {"p__instruction": 1, "p__demos": 0}))
    assert not state.pending_full
    state.add(_record(2, 0.7, {"p__instruction": 2, "p__demos": 1}))
    assert list(state.pending_full) == [{"p__instruction": 2, "p__demos": 1}]
    state.pending_full.popleft()  # now running
    state.add(_record(3, 0.9, {"p__instruction": 2, "p__demos": 1}))
    state.add(_record(4, 0.5, {"p__instruction": 3, "p__demos": 1}))
    # the 0.8-mean config is running already: the next best unevaluated one is chosen
    assert list(state.pending_full) == [{"p__instruction": 3, "p__demos": 1}]


def test_failed_trials_never_count_as_scores() -> None:
    state = _state(PLAN)
    state.add(_record(1, None, {"p__instruction": 1, "p__demos": 0}, error="boom"))
    state.add(_record(2, None, {"p__instruction": 2, "p__demos": 0}, error="boom"))
    assert not state.pending_full  # nothing scored, nothing to evaluate fully


def test_call_budget_stops_hard_and_patience_stops_soft() -> None:
    budget = PLAN.model_copy(update={"max_calls": 50})
    state = _state(budget)
    state.add(_record(1, 0.5, {"p__instruction": 1, "p__demos": 0}, calls=30))
    assert state.stop_reason is None
    state.add(_record(2, 0.5, {"p__instruction": 2, "p__demos": 0}, calls=30, cache_hits=5))
    assert state.stop_reason == "budget: 55 LLM calls reached max_calls=50" and state.hard_stop

    patient = _state(PLAN.model_copy(update={"patience": 2}))
    patient.add(_record(1, 0.5, {"p__instruction": 1, "p__demos": 0}))
    patient.add(_record(2, 0.4, {"p__instruction": 2, "p__demos": 0}))
    assert patient.stop_reason is None
    patient.add(_record(3, 0.3, {"p__instruction": 3, "p__demos": 0}))
    assert patient.stop_reason == "no improvement in 2 trials (patience)"
    assert not patient.hard_stop


def test_resumed_state_continues_numbering_and_counts() -> None:
    earlier = [
        _record(0, 0.2, {"p__instruction": 0, "p__demos": 0}, kind="baseline"),
        _record(1, 0.5, {"p__instruction": 1, "p__demos": 0}),
        _record(2, 0.6, {"p__instruction": 2, "p__demos": 0}),
    ]
    state = _state(PLAN, earlier)
    assert state.baseline_done()
    assert state.minibatch_done() == 2
    assert state.next_number == 3


def test_minibatches_are_seeded_and_differ_between_trials() -> None:
    a = minibatch_indices(100, 25, seed=0, number=1)
    assert a == minibatch_indices(100, 25, seed=0, number=1)
    assert a != minibatch_indices(100, 25, seed=0, number=2)
    assert len(set(a)) == 25
    assert minibatch_indices(10, 25, seed=0, number=1) == list(range(10))


def test_apply_params_sets_instruction_demos_and_temperature() -> None:
    program = Pipeline.from_signatures("question -> answer", instructions=["original"])
    candidates = Candidates(
        instructions={"predict": ["original", "better"]},
        demo_sets={"predict": [[], [{"question": "q", "answer": "a"}]]},
    )
    chosen = apply_params(
        program,
        candidates,
        {"predict__instruction": 1, "predict__demos": 1, "predict__temperature": 0.7},
    )
    step = chosen.named_predictors()["predict"]
    assert (step.instruction, step.demos, step.settings.temperature) == (
        "better",
        [{"question": "q", "answer": "a"}],
        0.7,
    )
    assert program.named_predictors()["predict"].instruction == "original"  # a copy


def test_covering_start_tries_every_instruction_and_demo_set_once_before_tpe() -> None:
    space = search_space(
        Candidates(
            instructions={"a": [f"i{k}" for k in range(6)], "b": ["x", "y", "z"]},
            demo_sets={"a": [[]] * 4, "b": [[]] * 2},
        ),
        (0.0, 1.5),
    )
    baseline = baseline_params(["a", "b"], temperature=0.7)
    points = covering_start(space, baseline=baseline, max_points=10, seed=3)

    assert len(points) == 6  # the largest number of choices
    assert sorted(p["a__instruction"] for p in points) == list(range(6))
    for name, size in (("a__demos", 4), ("b__instruction", 3), ("b__demos", 2)):
        assert set(p[name] for p in points) == set(range(size))
    temperatures = sorted(float(p["a__temperature"]) for p in points)
    assert all(0.0 <= t <= 1.5 for t in temperatures)
    assert [int(t // 0.25) for t in temperatures] == list(range(6))  # one per stratum
    assert all(param_key(p) != param_key(baseline) for p in points)
    assert points == covering_start(space, baseline=baseline, max_points=10, seed=3)
    assert points != covering_start(space, baseline=baseline, max_points=10, seed=4)
    assert len(covering_start(space, baseline=baseline, max_points=2, seed=3)) == 2


def _searcher_with_candidates() -> tuple[MiproSearcher, SearchState]:
    program = Pipeline.from_signatures("question -> answer", instructions=["Answer."])
    (name,) = program.named_predictors()
    plan = SearchPlan(
        num_trials=4, full_eval_steps=2, baseline={f"{name}__instruction": 0, f"{name}__demos": 0}
    )
    state = _state(plan)
    searcher = MiproSearcher(
        state=state, baseline=baseline_choices(program), baseline_shards=2, model="m"
    )
    return searcher, state


def test_driver_lanes_take_minibatch_trials_until_a_trial_actor_starts() -> None:
    searcher, state = _searcher_with_candidates()
    (name,) = {k.split("__")[0] for k in state.plan.baseline}
    # Before the candidates exist a lane waits, and the baseline's shards are Tune's only:
    # they are what starts the trial actors.
    assert searcher.claim("driver-0-0") == "wait"
    shards = [searcher.suggest("tune-1"), searcher.suggest("tune-2")]
    assert [s["kind"] for s in shards if isinstance(s, dict)] == ["baseline", "baseline"]
    assert searcher.claim("driver-0-1") == "wait"

    candidates = Candidates(
        instructions={name: ["Answer.", "Answer briefly.", "Think, then answer."]},
        demo_sets={name: [[], [{"question": "q", "answer": "a"}]]},
    )
    searcher.provide(
        candidates, OptunaSearch(space=search_space(candidates, None), metric="score", mode="max")
    )
    claimed = searcher.claim("driver-0-2")
    assert isinstance(claimed, dict) and claimed["kind"] == "minibatch"
    assert claimed["number"] == shards[0]["number"] + 1  # numbered with Tune's trials
    outcome = TrialOutcome(
        score=0.6,
        failed=False,
        error=None,
        n_examples=5,
        calls=5,
        cache_hits=0,
        http_requests=5,
        prompt_tokens=50,
        completion_tokens=5,
        cost_usd=0.0,
        duration_s=1.0,
        latencies_s=[0.1] * 5,
    )
    searcher.on_trial_complete("driver-0-2", outcome.model_dump())
    (record,) = state.records
    assert (record.kind, record.number, record.score, record.calls) == (
        "minibatch",
        claimed["number"],
        0.6,
        5,
    )

    searcher.note_actor_started()  # from now on Tune's actors take every trial
    assert searcher.claim("driver-0-3") == Searcher.FINISHED
    nxt = searcher.suggest("tune-3")
    assert isinstance(nxt, dict) and nxt["kind"] == "minibatch"
    assert nxt["number"] == record.number + 1


def test_the_baseline_is_trial_zero_even_when_a_lane_starts_a_trial_first() -> None:
    searcher, state = _searcher_with_candidates()
    (name,) = {k.split("__")[0] for k in state.plan.baseline}
    candidates = Candidates(
        instructions={name: ["Answer.", "Answer briefly."]}, demo_sets={name: [[], []]}
    )
    searcher.provide(
        candidates, OptunaSearch(space=search_space(candidates, None), metric="score", mode="max")
    )
    first = searcher.claim("driver-0-0")  # the candidates were ready before Tune asked
    shard = searcher.suggest("tune-1")
    assert isinstance(first, dict) and isinstance(shard, dict)
    assert (first["kind"], shard["kind"]) == ("minibatch", "baseline")
    assert (shard["number"], first["number"]) == (0, 1)
    assert searcher.suggest("tune-2")["number"] == 0  # type: ignore[index]  # its 2nd shard


def test_a_stopped_driver_trial_leaves_no_record_so_a_resumed_run_runs_it_again() -> None:
    searcher, state = _searcher_with_candidates()
    (name,) = {k.split("__")[0] for k in state.plan.baseline}
    candidates = Candidates(
        instructions={name: ["Answer.", "Answer briefly."]}, demo_sets={name: [[], []]}
    )
    inner = OptunaSearch(space=search_space(candidates, None), metric="score", mode="max")
    searcher.provide(candidates, inner)
    claimed = searcher.claim("driver-0-0")
    assert isinstance(claimed, dict)
    stopped = TrialOutcome(
        score=0.0,
        failed=True,
        error="stopped: cancelled",
        n_examples=5,
        calls=2,
        cache_hits=0,
        http_requests=2,
        prompt_tokens=20,
        completion_tokens=2,
        cost_usd=0.0,
        duration_s=0.1,
    )
    searcher.drop("driver-0-0", stopped)
    assert state.records == [] and state.minibatch_done() == 0
    assert [t.state.name for t in inner._ot_study.trials] == ["FAIL"]  # Optuna was told
