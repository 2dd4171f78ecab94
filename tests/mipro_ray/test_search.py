"""The search without Ray: full-evaluation cadence, budgets, patience, resume state, and the
driver's lanes (the trials it scores itself before any trial actor runs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from mipro_ray import LMConfig, Pipeline, Usage, resolve_metric
from mipro_ray.limiter import LocalLimiter
from mipro_ray.search import (
    Candidates,
    MiproSearcher,
    SearchPlan,
    SearchRun,
    SearchState,
    TrialOutcome,
    TrialRecord,
    TrialSpec,
    apply_params,
    baseline_choices,
    baseline_params,
    covering_start,
    minibatch_indices,
    param_key,
    search_space,
)
from mipro_ray.testing import FakeLLMServer, LandscapeTask


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


def _searcher_with_candidates(actors: int = 1) -> tuple[MiproSearcher, SearchState]:
    program = Pipeline.from_signatures("question -> answer", instructions=["Answer."])
    (name,) = program.named_predictors()
    plan = SearchPlan(
        num_trials=4, full_eval_steps=2, baseline={f"{name}__instruction": 0, f"{name}__demos": 0}
    )
    state = _state(plan)
    searcher = MiproSearcher(
        state=state, baseline=baseline_choices(program), model="m", actors=actors
    )
    return searcher, state


def _provide(searcher: MiproSearcher, state: SearchState) -> OptunaSearch:
    (name,) = {k.split("__")[0] for k in state.plan.baseline}
    candidates = Candidates(
        instructions={name: ["Answer.", "Answer briefly.", "Think, then answer."]},
        demo_sets={name: [[], [{"question": "q", "answer": "a"}]]},
    )
    inner = OptunaSearch(space=search_space(candidates, None), metric="score", mode="max")
    searcher.provide(candidates, inner)
    return inner


_OUTCOME = TrialOutcome(
    score=0.6,
    failed=False,
    error=None,
    n_examples=5,
    calls=5,
    http_requests=5,
    prompt_tokens=50,
    completion_tokens=5,
    duration_s=1.0,
    latencies_s=[0.1] * 5,
)
_WARMUP_RESULT = {"score": float("nan"), "warmup": 1}


def test_driver_lanes_take_the_baseline_then_trials_until_the_trial_actors_take_over() -> None:
    searcher, state = _searcher_with_candidates(actors=2)
    # Before the candidates exist the first lane takes the baseline (as trial 0); then
    # lanes wait. Tune's first asks, one per trial actor, are warm-ups (so every actor
    # starts at once); then Tune waits too.
    baseline = searcher.claim("driver-0-0")
    assert isinstance(baseline, dict)
    assert (baseline["kind"], baseline["number"]) == ("baseline", 0)
    assert searcher.claim("driver-1-0", wait_s=0.01) == "wait"
    assert searcher.suggest("tune-w1") == {"kind": "warmup"}
    assert searcher.suggest("tune-w2") == {"kind": "warmup"}
    assert searcher.suggest("tune-1") is None
    assert not searcher.release_warmup("tune-w1")  # nothing for its actor to run yet
    assert not searcher.release_warmup("tune-w2")  # both actors run (checked in)

    _provide(searcher, state)
    claimed = searcher.claim("driver-1-1")
    assert isinstance(claimed, dict)
    assert (claimed["kind"], claimed["number"]) == ("minibatch", 1)
    searcher.on_trial_complete("driver-1-1", _OUTCOME.model_dump())
    (record,) = state.records
    assert (record.kind, record.number, record.score, record.calls) == ("minibatch", 1, 0.6, 5)

    # Each released warm-up retires one lane (lane i of n retires after n - i); the next is
    # released only once the previous one's actor started a real trial.
    assert searcher.release_warmup("tune-w1")
    assert searcher.claim("driver-1-2", retire_after=1) == Searcher.FINISHED
    assert not searcher.release_warmup("tune-w2")
    lane_0 = searcher.claim("driver-0-1", retire_after=2)
    assert isinstance(lane_0, dict) and lane_0["number"] == 2
    searcher.on_trial_complete("driver-0-1", _OUTCOME.model_dump())
    searcher.on_trial_complete("tune-w1", _WARMUP_RESULT)
    nxt = searcher.suggest("tune-2")
    assert isinstance(nxt, dict)
    assert (nxt["kind"], nxt["number"]) == ("full", 3)  # full_eval_steps=2
    assert not searcher.release_warmup("tune-2")  # a real trial ends on its own
    searcher.note_tune_trial_started()
    assert searcher.release_warmup("tune-w2")
    assert searcher.claim("driver-0-2", retire_after=2) == Searcher.FINISHED
    # The baseline, still running in its lane, is recorded when it ends; warm-ups leave
    # no record.
    baseline_outcome = _OUTCOME.model_copy(update={"score": 0.3})
    searcher.on_trial_complete("driver-0-0", baseline_outcome.model_dump())
    searcher.on_trial_complete("tune-w2", _WARMUP_RESULT)
    assert [(r.kind, r.number) for r in state.records] == [
        ("minibatch", 1),
        ("minibatch", 2),
        ("baseline", 0),
    ]
    assert state.baseline_done()


def test_no_warm_up_is_released_while_another_one_still_starts() -> None:
    """Tune would hand a released warm-up's actor to a warm-up still starting (the first
    pending trial) and kill that one's process, not to the real trial waiting for it."""
    searcher, state = _searcher_with_candidates(actors=2)
    assert searcher.suggest("tune-w1") == {"kind": "warmup"}
    _provide(searcher, state)
    assert not searcher.release_warmup("tune-w1")  # the second warm-up is not asked yet
    assert searcher.suggest("tune-w2") == {"kind": "warmup"}
    assert not searcher.release_warmup("tune-w1")  # asked, its actor still starts
    assert searcher.release_warmup("tune-w2")  # its first check-in: both run, one goes
    assert not searcher.release_warmup("tune-w1")  # after that one's real trial started
    searcher.note_tune_trial_started()
    assert searcher.release_warmup("tune-w1")


def test_tune_gets_the_baseline_when_it_asks_before_any_lane() -> None:
    searcher, state = _searcher_with_candidates(actors=1)
    assert searcher.suggest("tune-w") == {"kind": "warmup"}
    first = searcher.suggest("tune-1")
    assert isinstance(first, dict)
    assert (first["kind"], first["number"]) == ("baseline", 0)
    assert searcher.claim("driver-0-0", wait_s=0.01) == "wait"  # handed out once only
    _provide(searcher, state)
    assert searcher.suggest("tune-2")["kind"] == "minibatch"  # type: ignore[index]


def test_the_tune_run_ends_once_the_search_is_over_even_with_warm_ups_still_starting() -> None:
    searcher, state = _searcher_with_candidates(actors=2)
    assert searcher.suggest("tune-w1") == {"kind": "warmup"}
    _provide(searcher, state)
    numbers = []
    while isinstance(config := searcher.claim(f"driver-0-{len(numbers)}"), dict):
        numbers.append(config["number"])
        searcher.on_trial_complete(f"driver-0-{len(numbers) - 1}", _OUTCOME.model_dump())
    assert config == Searcher.FINISHED
    assert numbers == list(range(len(state.records))) and state.minibatch_done() == 4
    # The warm-up still checking in ends, the one not yet asked for is never issued, and
    # Tune's run may end (no real trial live).
    assert searcher.release_warmup("tune-w1")
    assert searcher.suggest("tune-w2") == Searcher.FINISHED
    assert searcher.must_end_run()


def test_a_cancel_ends_warm_ups_and_the_tune_run() -> None:
    searcher, state = _searcher_with_candidates(actors=2)
    assert searcher.suggest("tune-w1") == {"kind": "warmup"}
    assert not searcher.must_end_run()
    state.cancel.set()
    assert searcher.release_warmup("tune-w1")
    assert searcher.suggest("tune-w2") == Searcher.FINISHED
    assert searcher.must_end_run()


def test_a_stopped_driver_trial_leaves_no_record_so_a_resumed_run_runs_it_again() -> None:
    searcher, state = _searcher_with_candidates()
    inner = _provide(searcher, state)
    searcher.suggest("tune-w")  # a warm-up
    searcher.suggest("tune-1")  # the baseline
    claimed = searcher.claim("driver-0-0")
    assert isinstance(claimed, dict) and claimed["kind"] == "minibatch"
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


def test_the_driver_lanes_alone_run_a_whole_search_under_their_limiter(tmp_path: Path) -> None:
    """Before Ray is up (no Tune run, no trial actor yet) the driver's lanes score the
    baseline at once, then every trial once the candidates arrive, within their limiter's cap."""
    task = LandscapeTask()
    program = Pipeline.from_signatures(task.signature, instructions=["Label the item."])
    (name,) = program.named_predictors()
    plan = SearchPlan(num_trials=4, full_eval_steps=2, baseline=baseline_params([name]))
    records: list[TrialRecord] = []
    state = SearchState(plan, records=[], usage_before=Usage(), on_record=records.append)
    candidates = Candidates(
        instructions={name: ["Label the item.", "Give the item's label.", "Name the label."]},
        demo_sets={name: [[], [dict(task.examples(0, 1)[0])]]},
    )
    with FakeLLMServer(responder=task, latency_s=0.02, max_concurrency=4) as server:
        lm = LMConfig(
            model="lanes",
            base_url=server.base_url,
            api_key_env=None,
            cache=False,
            max_concurrency=4,
            timeout_s=10,
        )
        spec = TrialSpec(
            program=program,
            valset=task.examples(100, 12),
            metric=resolve_metric("exact_match"),
            lm=lm,
            minibatch_size=4,
            concurrency=4,
            max_error_fraction=0.5,
            seed=0,
        )
        search = SearchRun(
            spec,
            state,
            study_name="lanes",
            temperature_range=None,
            max_concurrent_trials=2,
            tune_dir=str(tmp_path / "tune"),
        )

        async def drive() -> None:
            lanes = asyncio.ensure_future(search.lanes(LocalLimiter(max_in_flight=4)))
            while server.requests == 0:  # the baseline runs before the candidates exist
                await asyncio.sleep(0.01)
            storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
            await asyncio.to_thread(
                search.provide, candidates, usage_before=Usage(), storage=storage
            )
            await asyncio.wait_for(lanes, timeout=60)

        asyncio.run(drive())
        assert server.peak_in_flight <= 4 and 429 not in server.by_status
        served = server.completed

    assert state.stop_reason == "completed 4 trials"
    assert all(r.state == "complete" for r in records)
    baseline = next(r for r in records if r.kind == "baseline")
    assert (baseline.number, baseline.n_examples) == (0, 12)
    assert sum(1 for r in records if r.kind == "minibatch") == 4
    assert sum(1 for r in records if r.kind == "full") == 2  # after trials 2 and 4
    assert sorted(r.number for r in records) == list(range(len(records)))
    assert sum(r.calls for r in records) == served
