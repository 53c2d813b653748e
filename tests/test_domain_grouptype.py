"""GroupType, NoiseConfig, the registry, feature flags, built-in types and enums (reference §1, §2.1, §6)."""
from dataclasses import dataclass
from datetime import timedelta

import pytest

import issue_platform  # noqa: F401  (registers the built-in types)
from issue_platform.enums import GroupCategory, GroupStatus, GroupSubStatus, PayloadType, PriorityLevel
from issue_platform.grouptype import GroupType, InvalidGroupTypeError, NoiseConfig, registry

C, P = GroupCategory, PriorityLevel


def define(type_id=990001, slug="test_type", **attrs):
    """Define (and so register) a GroupType subclass with the given class attributes."""
    body = {"type_id": type_id, "slug": slug, "description": "Test type", "category": C.ERROR, **attrs}
    return dataclass(frozen=True)(type("TestGroupType", (GroupType,), body))


# --- registration -------------------------------------------------------------------------------

def test_defining_a_subclass_registers_it_and_scoped_forgets_it():
    with registry.scoped():

        @dataclass(frozen=True)
        class CronLate(GroupType):
            type_id = 990001
            slug = "cron_job_late"
            description = "Cron job ran late"
            category = C.CRON

        assert registry.get_by_type_id(990001) is CronLate
        assert registry.get_by_slug("cron_job_late") is CronLate
        assert 990001 in registry.get_all_group_type_ids()
        assert 990001 in registry.get_by_category(C.CRON)
    assert registry.find(990001) is None
    assert registry.get_by_slug("cron_job_late") is None


def test_category_v2_is_indexed_too():
    with registry.scoped():
        define(category=C.PERFORMANCE, category_v2=C.DB_QUERY)
        assert 990001 in registry.get_by_category(C.PERFORMANCE)
        assert 990001 in registry.get_by_category(C.DB_QUERY)
        assert 990001 not in registry.get_by_category(C.ERROR)


def test_unknown_type_id_raises_value_error_and_unknown_slug_is_none():
    with pytest.raises(ValueError, match="No group type with the id 424242 is registered"):
        registry.get_by_type_id(424242)
    assert registry.find(424242) is None
    assert registry.get_by_slug("no_such_slug") is None


def test_duplicate_type_id_is_refused():
    with registry.scoped():
        with pytest.raises(InvalidGroupTypeError, match="type_id 1006 has already been registered"):
            define(type_id=1006, slug="a_new_slug")
        assert registry.get_by_slug("a_new_slug") is None
        assert registry.get_by_type_id(1006).slug == "performance_n_plus_one_db_queries"


def test_duplicate_slug_is_refused():
    with registry.scoped():
        with pytest.raises(InvalidGroupTypeError, match="slug 'feedback' has already been registered"):
            define(type_id=990002, slug="feedback")
        assert registry.find(990002) is None
        assert registry.get_by_slug("feedback").type_id == 6001


def test_invalid_group_type_error_is_a_value_error():
    assert issubclass(InvalidGroupTypeError, ValueError)


@pytest.mark.parametrize("missing", ["type_id", "slug", "description", "category"])
def test_missing_required_attribute_is_refused(missing):
    body = {"type_id": 990001, "slug": "test_type", "description": "Test", "category": C.ERROR}
    del body[missing]
    with registry.scoped():
        with pytest.raises(InvalidGroupTypeError, match=f"`{missing}` is required"):
            type("Incomplete", (GroupType,), body)
        assert registry.find(990001) is None


@pytest.mark.parametrize("attrs, message", [
    ({"category": 99}, "`category` 99 is not a GroupCategory"),
    ({"category": 0}, "`category` 0 is not a GroupCategory"),
    ({"category_v2": 19}, "`category_v2` 19 is not a GroupCategory"),
    ({"category": "ERROR"}, "`category` must be int"),
    ({"default_priority": 40}, "`default_priority` 40 is not 25, 50 or 75"),
    ({"default_priority": 0}, "`default_priority` 0 is not 25, 50 or 75"),
    ({"type_id": "1"}, "`type_id` must be int"),
    ({"type_id": True}, "`type_id` must be int"),
    ({"type_id": 0}, "`type_id` must be between"),
    ({"slug": ""}, "`slug` must not be empty"),
    ({"noise_config": (3, 86400)}, "`noise_config` must be a NoiseConfig"),
    ({"released": "yes"}, "`released` must be a boolean"),
])
def test_invalid_definitions_are_refused(attrs, message):
    with registry.scoped():
        before = registry.all()
        with pytest.raises(InvalidGroupTypeError, match=message):
            define(**attrs)
        assert registry.all() == before


# --- Sentry defaults ----------------------------------------------------------------------------

def test_noise_config_defaults():
    assert NoiseConfig() == NoiseConfig(3, timedelta(hours=24))
    assert NoiseConfig().ignore_limit == 3
    assert NoiseConfig().expiry_time == timedelta(hours=24)
    assert NoiseConfig().expiry_seconds == 86400
    assert NoiseConfig(5, timedelta(days=2)).expiry_seconds == 172800


@pytest.mark.parametrize("args", [(-1,), (1.5,), (True,), (3, timedelta(0)), (3, timedelta(seconds=-1)), (3, 86400)])
def test_noise_config_rejects_bad_values(args):
    with pytest.raises(ValueError):
        NoiseConfig(*args)


def test_group_type_defaults():
    with registry.scoped():
        t = define()
        assert t.noise_config is None
        assert t.default_priority == PriorityLevel.MEDIUM == 50
        assert t.released is False
        assert t.enable_auto_resolve is True
        assert t.enable_escalation_detection is True


# --- feature flags (newest scheme, §1.5) --------------------------------------------------------

@pytest.mark.parametrize("slug, base", [
    ("uptime_domain_failure", "organizations:issue-uptime-domain-failure"),
    ("performance_n_plus_one_db_queries", "organizations:issue-performance-n-plus-one-db-queries"),
    ("feedback", "organizations:issue-feedback"),
])
def test_feature_flag_names(slug, base):
    with registry.scoped():
        t = registry.get_by_slug(slug) or define(slug=slug)
        assert t.ingest_flag() == f"{base}-ingest"
        assert t.post_process_flag() == f"{base}-post-process-group"
        assert t.visible_flag() == f"{base}-visible"


def test_uptime_flags_spelled_out():
    t = registry.get_by_type_id(7001)
    assert {t.ingest_flag(), t.post_process_flag(), t.visible_flag()} == {
        "organizations:issue-uptime-domain-failure-ingest",
        "organizations:issue-uptime-domain-failure-post-process-group",
        "organizations:issue-uptime-domain-failure-visible",
    }


# --- built-in types (newest table, §1.6) --------------------------------------------------------

H24 = timedelta(hours=24)
BUILTINS = [
    # type_id, slug, category, category_v2, noise (limit) or None, priority, released, AR, ESC
    (1, "error", C.ERROR, C.ERROR, None, P.MEDIUM, True, True, True),
    (1001, "performance_slow_db_query", C.PERFORMANCE, C.DB_QUERY, 100, P.LOW, True, True, True),
    (1004, "performance_render_blocking_asset_span", C.PERFORMANCE, C.FRONTEND, 3, P.LOW, True, True, True),
    (1006, "performance_n_plus_one_db_queries", C.PERFORMANCE, C.DB_QUERY, 3, P.LOW, True, True, True),
    (1906, "performance_n_plus_one_db_queries_experimental", C.PERFORMANCE, C.DB_QUERY, 3, P.LOW, False, True, True),
    (1007, "performance_consecutive_db_queries", C.PERFORMANCE, C.DB_QUERY, 15, P.LOW, True, True, True),
    (1008, "performance_file_io_main_thread", C.PERFORMANCE, C.MOBILE, 3, P.LOW, True, True, True),
    (1009, "performance_consecutive_http", C.PERFORMANCE, C.HTTP_CLIENT, 5, P.LOW, True, True, True),
    (1010, "performance_n_plus_one_api_calls", C.PERFORMANCE, C.HTTP_CLIENT, 3, P.LOW, True, True, True),
    (1910, "performance_n_plus_one_api_calls_experimental", C.PERFORMANCE, C.HTTP_CLIENT, 3, P.LOW, False, True, True),
    (1011, "performance_m_n_plus_one_db_queries", C.PERFORMANCE, C.DB_QUERY, 3, P.LOW, True, True, True),
    (1911, "performance_m_n_plus_one_db_queries_experimental", C.PERFORMANCE, C.DB_QUERY, 3, P.LOW, False, True, True),
    (1012, "performance_uncompressed_assets", C.PERFORMANCE, C.FRONTEND, 100, P.LOW, True, True, True),
    (1013, "performance_db_main_thread", C.PERFORMANCE, C.MOBILE, 3, P.LOW, True, True, True),
    (1015, "performance_large_http_payload", C.PERFORMANCE, C.HTTP_CLIENT, 3, P.LOW, True, True, True),
    (1016, "performance_http_overhead", C.PERFORMANCE, C.HTTP_CLIENT, 20, P.LOW, True, True, True),
    (1018, "performance_p95_endpoint_regression", C.PERFORMANCE, C.METRIC, None, P.MEDIUM, True, False, False),
    (1019, "performance_streamed_spans_exp", C.PERFORMANCE, C.METRIC, None, P.LOW, False, False, False),
    (1020, "db_query_injection_vulnerability", C.PERFORMANCE, C.DB_QUERY, 5, P.MEDIUM, False, False, False),
    (1021, "query_injection_vulnerability", C.PERFORMANCE, C.DB_QUERY, 10, P.MEDIUM, False, False, False),
    (2001, "profile_file_io_main_thread", C.PERFORMANCE, C.MOBILE, None, P.LOW, True, True, True),
    (2002, "profile_image_decode_main_thread", C.PERFORMANCE, C.MOBILE, None, P.LOW, True, True, True),
    (2003, "profile_json_decode_main_thread", C.PERFORMANCE, C.MOBILE, None, P.LOW, True, True, True),
    (2007, "profile_regex_main_thread", C.PERFORMANCE, C.MOBILE, None, P.LOW, True, True, True),
    (2009, "profile_frame_drop", C.PERFORMANCE, C.MOBILE, 2000, P.LOW, True, True, True),
    (2011, "profile_function_regression", C.PERFORMANCE, C.METRIC, None, P.MEDIUM, True, False, True),
    (3501, "llm_detected_experimental", C.AI_DETECTED, C.AI_DETECTED, None, P.MEDIUM, False, False, False),
    (4001, "monitor_check_in_failure", C.CRON, C.OUTAGE, None, P.HIGH, True, True, True),
    (5002, "replay_click_rage", C.REPLAY, C.FRONTEND, None, P.MEDIUM, True, True, True),
    (5003, "replay_hydration_error", C.REPLAY, C.FRONTEND, None, P.MEDIUM, True, True, True),
    (6001, "feedback", C.FEEDBACK, C.FEEDBACK, None, P.MEDIUM, True, False, False),
    (7001, "uptime_domain_failure", C.UPTIME, C.OUTAGE, None, P.HIGH, False, False, False),
    (10001, "web_vitals", C.PERFORMANCE, C.FRONTEND, None, P.MEDIUM, True, False, False),
    (11001, "preprod_static", C.PREPROD, C.PREPROD, None, P.LOW, False, True, False),
    (11002, "preprod_delta", C.PREPROD, C.PREPROD, None, P.LOW, False, True, False),
    (12001, "instrumentation_issue_experimental", C.INSTRUMENTATION, C.INSTRUMENTATION, None, P.LOW, False, True, False),
]


@pytest.mark.parametrize("type_id, slug, category, category_v2, noise, priority, released, ar, esc", BUILTINS,
                         ids=[str(row[0]) for row in BUILTINS])
def test_builtin_type_matches_reference(type_id, slug, category, category_v2, noise, priority, released, ar, esc):
    t = registry.get_by_type_id(type_id)
    assert t.slug == slug
    assert registry.get_by_slug(slug) is t
    assert t.category == category
    assert (t.category_v2 if t.category_v2 is not None else t.category) == category_v2
    assert t.noise_config == (None if noise is None else NoiseConfig(noise, H24))
    assert t.default_priority == priority
    assert (t.released, t.enable_auto_resolve, t.enable_escalation_detection) == (released, ar, esc)


def test_deprecated_slug_sharing_types_are_left_out():
    assert registry.find(4002) is None and registry.find(4003) is None


# --- enums (§1.1, §2.1, §6.1–6.3) ---------------------------------------------------------------

@pytest.mark.parametrize("enum, expected", [
    (GroupCategory, {"ERROR": 1, "PERFORMANCE": 2, "PROFILE": 3, "CRON": 4, "REPLAY": 5, "FEEDBACK": 6,
                     "UPTIME": 7, "METRIC_ALERT": 8, "TEST_NOTIFICATION": 9, "OUTAGE": 10, "METRIC": 11,
                     "DB_QUERY": 12, "HTTP_CLIENT": 13, "FRONTEND": 14, "MOBILE": 15, "AI_DETECTED": 16,
                     "PREPROD": 17, "INSTRUMENTATION": 18}),
    (GroupStatus, {"UNRESOLVED": 0, "RESOLVED": 1, "IGNORED": 2, "PENDING_DELETION": 3,
                   "DELETION_IN_PROGRESS": 4, "PENDING_MERGE": 5, "REPROCESSING": 6}),
    (GroupSubStatus, {"UNTIL_ESCALATING": 1, "ESCALATING": 2, "ONGOING": 3, "UNTIL_CONDITION_MET": 4,
                      "FOREVER": 5, "REGRESSED": 6, "NEW": 7}),
    (PriorityLevel, {"LOW": 25, "MEDIUM": 50, "HIGH": 75}),
    (PayloadType, {"OCCURRENCE": "occurrence", "STATUS_CHANGE": "status_change"}),
], ids=lambda v: getattr(v, "__name__", ""))
def test_enum_values_match_reference(enum, expected):
    assert {m.name: m.value for m in enum} == expected


def test_payload_type_is_a_string_enum():
    assert PayloadType.OCCURRENCE == "occurrence"
    assert PayloadType("status_change") is PayloadType.STATUS_CHANGE
