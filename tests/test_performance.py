"""The run's workarounds for Beam's runner overheads (pipelines.runner_tuning) must not change what
Beam sees: the same method parameters and the same state and timer specs, and nothing left patched."""
from apache_beam.runners.direct import transform_evaluator
from apache_beam.transforms import core, userstate

from issue_platform.config import load_config
from pipelines.runner_tuning import dofn_signatures_cached
from transforms.apply_rules import BatchApplyRulesFn, ApplyRulesFn
from transforms.parse import _GateIngestFn, _ParseFn


def _dofns():
    config = load_config()
    return [ApplyRulesFn(config, 60.0, float("inf"), 600.0, True),
            BatchApplyRulesFn(config, 60.0, float("inf"), 600.0, True),
            _ParseFn(config, 1000, "fast", False), _GateIngestFn(config),
            core.CallableWrapperDoFn(lambda rows, limit=3: rows[:limit]), core.CallableWrapperDoFn(len)]


def _view(dofn):
    methods = sorted(n for n in dir(dofn) if callable(getattr(dofn, n, None)) and not n.startswith("__"))
    return ({n: core.get_function_arguments(dofn, n) for n in methods}, userstate.get_dofn_specs(dofn),
            transform_evaluator.get_dofn_specs(dofn))


def test_cached_signatures_equal_beams_own_and_are_restored():
    originals = (core.get_function_arguments, userstate.get_dofn_specs, transform_evaluator.get_dofn_specs)
    expected = [_view(dofn) for dofn in _dofns()]
    with dofn_signatures_cached():
        assert core.get_function_arguments is not originals[0]
        for _ in range(2):  # the first pass fills the cache, the second reads it
            assert [_view(dofn) for dofn in _dofns()] == expected
    assert (core.get_function_arguments, userstate.get_dofn_specs, transform_evaluator.get_dofn_specs) == originals


def test_a_method_set_on_the_instance_is_not_taken_from_the_cache():
    with dofn_signatures_cached():
        dofn = _dofns()[2]
        assert core.get_function_arguments(dofn, "process")[0] == ["raw"]
        dofn.process = lambda element, extra=None: None
        assert core.get_function_arguments(dofn, "process")[0] == ["element", "extra"]


def test_the_run_collects_young_objects_less_often_and_restores_the_collector():
    import gc

    from pipelines.runner_tuning import YOUNG_GENERATION_THRESHOLD, imports_frozen
    before = gc.get_threshold()
    with imports_frozen():
        assert gc.get_threshold() == (max(before[0], YOUNG_GENERATION_THRESHOLD), *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_each_map_keeps_its_own_parameters():
    """A Map's or FlatMap's `process` is its function, set on the instance: two of them must not share
    an entry, and the same one asked twice answers the same."""
    with dofn_signatures_cached():
        first, second = core.CallableWrapperDoFn(lambda rows: rows), core.CallableWrapperDoFn(lambda a, b=2: a)
        for _ in range(2):
            assert core.get_function_arguments(first, "process")[0] == ["rows"]
            assert core.get_function_arguments(second, "process") == (["a", "b"], [2])


def test_batches_sent_early_give_the_same_tables(tmp_path, monkeypatch):
    """Ingest sends its keys' batches when the bundle ends, or as soon as it holds MAX_BUFFERED_BYTES:
    a key then reaches the group step in several batches, each with the displays it needs."""
    from pipelines.issue_pipeline import run
    from tests.pipeline_support import BASE, canonical_tables, occurrence, read_tables, write_jsonl
    from transforms.parse import _IngestFn
    payloads = [occurrence(f"fp-{i % 3}", t=BASE + i, title=f"title {i % 2}") for i in range(40)]
    path = write_jsonl(tmp_path / "in.jsonl", payloads)
    run(["--input", path, "--output", str(tmp_path / "at_end")])
    monkeypatch.setattr(_IngestFn, "MAX_BUFFERED_BYTES", 1)
    run(["--input", path, "--output", str(tmp_path / "early")])
    at_end, early = read_tables(tmp_path / "at_end"), read_tables(tmp_path / "early")
    assert len(at_end["occurrences"]) == 40 and len(at_end["groups"]) >= 3
    assert canonical_tables(early) == canonical_tables(at_end)


def test_keys_sharing_a_shard_give_the_same_tables(tmp_path, monkeypatch):
    """A batch run keys its stateful step by shard (issue_platform.pending.shard_of); with a single
    shard every key's records share one state cell and one FINAL, and each key is still flushed
    apart, with its own displays, seed and snapshot."""
    import issue_platform.pending
    from pipelines.issue_pipeline import run
    from tests.pipeline_support import BASE, canonical_tables, occurrence, read_tables, write_jsonl
    first = [occurrence(f"fp-{i % 5}", t=BASE + i, title=f"title {i % 3}") for i in range(40)]
    second = [occurrence(f"fp-{i % 7}", t=BASE + 100 + i, title=f"title {i % 2}") for i in range(40)]
    paths = [write_jsonl(tmp_path / f"{name}.jsonl", rows) for name, rows in (("first", first), ("second", second))]

    def both_runs(label):
        run(["--input", paths[0], "--output", str(tmp_path / f"{label}-1")])
        run(["--input", paths[1], "--output", str(tmp_path / f"{label}-2"),
             "--resume_from", str(tmp_path / f"{label}-1")])
        return [read_tables(tmp_path / f"{label}-{n}") for n in (1, 2)]

    sharded = both_runs("sharded")
    monkeypatch.setattr(issue_platform.pending, "BATCH_SHARDS", 1)
    single = both_runs("single")
    assert len(sharded[0]["groups"]) >= 5 and len(sharded[1]["occurrences"]) == 40
    assert any(row["outcome"] == "grouped" for row in sharded[1]["occurrences"])
    for got, expected in zip(single, sharded):
        assert canonical_tables(got) == canonical_tables(expected)
