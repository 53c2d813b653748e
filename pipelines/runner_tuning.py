"""Runner-specific tuning: each patch around Beam that a run applies, and the Beam behaviour it works
around. None changes a result (tests/test_pipeline.py and tests/test_performance.py check); `tuned`
applies them all for the duration of one run and restores Beam afterwards."""
from __future__ import annotations

import contextlib
import gc
import inspect
import weakref
from typing import Iterator, Optional

BATCH_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"  # Beam 2.62 has no short name for it
STREAMING_RUNNER = "BundleBasedDirectRunner"


@contextlib.contextmanager
def tuned(runner: Optional[str]) -> Iterator[None]:
    with fnapi_state_cache_off(runner), dofn_signatures_cached(), imports_frozen():
        yield


YOUNG_GENERATION_THRESHOLD = 50_000  # allocations between collections of the youngest generation (CPython: 700)


@contextlib.contextmanager
def imports_frozen() -> Iterator[None]:
    """Works around: CPython's garbage collector walking objects that are all alive.

    Moves the objects alive before the run (Beam's modules, protos and the built pipeline: some
    hundreds of thousands) out of the collector's reach for the run: a full collection would otherwise
    walk them all again and again while the run allocates (measured: ~6% of a batch run).

    And collects the youngest generation after YOUNG_GENERATION_THRESHOLD net allocations instead of
    700: a step's output element is a batch of rows (nested dicts, alive until the sink serialises
    them; up to 1,000 from a flush), so a batch pushed the young generation past 700, often several
    times, and each collection walked rows that were all alive (200k payloads: ~3,500 young and ~300 middle collections,
    ~0.4 s; with 50,000 a handful, docs/performance.md). Only reference cycles wait longer for it:
    everything else is freed when its last reference goes, as before."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], YOUNG_GENERATION_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


@contextlib.contextmanager
def fnapi_state_cache_off(runner: Optional[str]) -> Iterator[None]:
    """Works around: the in-process FnApiRunner hard-codes a 100 MB SDK state cache
    (`worker_handlers.STATE_CACHE_SIZE_MB`) and ignores --max_cache_memory_usage_mb.

    Sizing each cached value walks every loaded module (objsize), which costs ~1.5 ms per key per
    bundle (reference: performance-anchors.md). Our stateful step reads each key's state once per
    flush, so the cache saves nothing; we set its size to 0 for the run."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    if runner != BATCH_RUNNER:
        yield
        return
    saved = worker_handlers.STATE_CACHE_SIZE_MB
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    try:
        yield
    finally:
        worker_handlers.STATE_CACHE_SIZE_MB = saved


@contextlib.contextmanager
def dofn_signatures_cached() -> Iterator[None]:
    """Works around: Beam's runners re-reading a DoFn's method parameters (`inspect.signature`, through
    `core.get_function_arguments`) and its state and timer specs (`userstate.get_dofn_specs`) each
    time they build a DoFnSignature or look for state and timers.

    That happens several times per bundle on the streaming DirectRunner, ~0.8 ms each and most of a
    replay's time (reference: performance-anchors.md). They are fixed by the DoFn's class, so for the
    run we remember them per class, or per object for one with a function set on the instance (a Map
    or FlatMap: its `process` is the mapped function), which the runners keep for the whole run; an
    `_inspect_<method>` override is read as before."""
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import core, userstate

    arguments, specs = core.get_function_arguments, userstate.get_dofn_specs
    cache = weakref.WeakKeyDictionary()  # class -> {method name or None (the specs): result}
    by_object = {}  # id(obj) -> (obj, {...}): obj is held so that its id is not reused during the run

    def remembered(obj) -> dict:
        if any(inspect.ismethod(v) or inspect.isfunction(v) for v in getattr(obj, "__dict__", {}).values()):
            return by_object.setdefault(id(obj), (obj, {}))[1]
        return cache.setdefault(type(obj), {})

    def get_function_arguments(obj, func):
        known = remembered(obj)
        if hasattr(obj, f"_inspect_{func}"):
            return arguments(obj, func)
        if func not in known:
            known[func] = arguments(obj, func)
        args, defaults = known[func]
        return list(args), list(defaults)

    def get_dofn_specs(dofn):
        known = remembered(dofn)
        if None not in known:
            known[None] = specs(dofn)
        state_specs, timer_specs = known[None]
        return set(state_specs), set(timer_specs)

    patched = [(core, "get_function_arguments", get_function_arguments), (userstate, "get_dofn_specs", get_dofn_specs),
               (transform_evaluator, "get_dofn_specs", get_dofn_specs)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    for module, name, value in patched:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
