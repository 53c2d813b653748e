"""Sentry's built-in issue types (newest grouptype.py; reference §1.6).

Left out on purpose: 4002/4003 (deprecated, and they reuse 4001's slug, which this registry
refuses) and the types removed from Sentry's newest file.
"""
from dataclasses import dataclass

from issue_platform.enums import GroupCategory as C
from issue_platform.enums import PriorityLevel as P
from issue_platform.grouptype import GroupType, NoiseConfig

_d = NoiseConfig  # noise configs below are (ignore_limit, 24 h) unless stated


@dataclass(frozen=True)
class ErrorGroupType(GroupType):
    type_id = 1
    slug = "error"
    description = "Error"
    category = C.ERROR
    released = True


@dataclass(frozen=True)
class PerformanceSlowDBQueryGroupType(GroupType):
    type_id = 1001
    slug = "performance_slow_db_query"
    description = "Slow DB Query"
    category, category_v2 = C.PERFORMANCE, C.DB_QUERY
    noise_config = _d(100)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceRenderBlockingAssetSpanGroupType(GroupType):
    type_id = 1004
    slug = "performance_render_blocking_asset_span"
    description = "Large Render Blocking Asset"
    category, category_v2 = C.PERFORMANCE, C.FRONTEND
    noise_config = _d(3)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceNPlusOneGroupType(GroupType):
    type_id = 1006
    slug = "performance_n_plus_one_db_queries"
    description = "N+1 Query"
    category, category_v2 = C.PERFORMANCE, C.DB_QUERY
    noise_config = _d(3)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceNPlusOneExperimentalGroupType(GroupType):
    type_id = 1906
    slug = "performance_n_plus_one_db_queries_experimental"
    description = "N+1 Query (Experimental)"
    category, category_v2 = C.PERFORMANCE, C.DB_QUERY
    noise_config = _d(3)
    default_priority = P.LOW


@dataclass(frozen=True)
class PerformanceConsecutiveDBQueriesGroupType(GroupType):
    type_id = 1007
    slug = "performance_consecutive_db_queries"
    description = "Consecutive DB Queries"
    category, category_v2 = C.PERFORMANCE, C.DB_QUERY
    noise_config = _d(15)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceFileIOMainThreadGroupType(GroupType):
    type_id = 1008
    slug = "performance_file_io_main_thread"
    description = "File IO on Main Thread"
    category, category_v2 = C.PERFORMANCE, C.MOBILE
    noise_config = _d(3)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceConsecutiveHTTPQueriesGroupType(GroupType):
    type_id = 1009
    slug = "performance_consecutive_http"
    description = "Consecutive HTTP"
    category, category_v2 = C.PERFORMANCE, C.HTTP_CLIENT
    noise_config = _d(5)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceNPlusOneAPICallsGroupType(GroupType):
    type_id = 1010
    slug = "performance_n_plus_one_api_calls"
    description = "N+1 API Call"
    category, category_v2 = C.PERFORMANCE, C.HTTP_CLIENT
    noise_config = _d(3)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceNPlusOneAPICallsExperimentalGroupType(GroupType):
    type_id = 1910
    slug = "performance_n_plus_one_api_calls_experimental"
    description = "N+1 API Call (Experimental)"
    category, category_v2 = C.PERFORMANCE, C.HTTP_CLIENT
    noise_config = _d(3)
    default_priority = P.LOW


@dataclass(frozen=True)
class PerformanceMNPlusOneDBQueriesGroupType(GroupType):
    type_id = 1011
    slug = "performance_m_n_plus_one_db_queries"
    description = "MN+1 Query"
    category, category_v2 = C.PERFORMANCE, C.DB_QUERY
    noise_config = _d(3)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceMNPlusOneDBQueriesExperimentalGroupType(GroupType):
    type_id = 1911
    slug = "performance_m_n_plus_one_db_queries_experimental"
    description = "MN+1 Query (Experimental)"
    category, category_v2 = C.PERFORMANCE, C.DB_QUERY
    noise_config = _d(3)
    default_priority = P.LOW


@dataclass(frozen=True)
class PerformanceUncompressedAssetsGroupType(GroupType):
    type_id = 1012
    slug = "performance_uncompressed_assets"
    description = "Uncompressed Asset"
    category, category_v2 = C.PERFORMANCE, C.FRONTEND
    noise_config = _d(100)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceDBMainThreadGroupType(GroupType):
    type_id = 1013
    slug = "performance_db_main_thread"
    description = "DB on Main Thread"
    category, category_v2 = C.PERFORMANCE, C.MOBILE
    noise_config = _d(3)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceLargeHTTPPayloadGroupType(GroupType):
    type_id = 1015
    slug = "performance_large_http_payload"
    description = "Large HTTP payload"
    category, category_v2 = C.PERFORMANCE, C.HTTP_CLIENT
    noise_config = _d(3)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceHTTPOverheadGroupType(GroupType):
    type_id = 1016
    slug = "performance_http_overhead"
    description = "HTTP/1.1 Overhead"
    category, category_v2 = C.PERFORMANCE, C.HTTP_CLIENT
    noise_config = _d(20)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class PerformanceP95EndpointRegressionGroupType(GroupType):
    type_id = 1018
    slug = "performance_p95_endpoint_regression"
    description = "Endpoint Regression"
    category, category_v2 = C.PERFORMANCE, C.METRIC
    released = True
    enable_auto_resolve = False
    enable_escalation_detection = False


@dataclass(frozen=True)
class PerformanceStreamedSpansGroupTypeExperimental(GroupType):
    type_id = 1019
    slug = "performance_streamed_spans_exp"
    description = "Streamed Spans (Experimental)"
    category, category_v2 = C.PERFORMANCE, C.METRIC
    default_priority = P.LOW
    enable_auto_resolve = False
    enable_escalation_detection = False


@dataclass(frozen=True)
class DBQueryInjectionVulnerabilityGroupType(GroupType):
    type_id = 1020
    slug = "db_query_injection_vulnerability"
    description = "Potential Database Query Injection Vulnerability"
    category, category_v2 = C.PERFORMANCE, C.DB_QUERY
    noise_config = _d(5)
    enable_auto_resolve = False
    enable_escalation_detection = False


@dataclass(frozen=True)
class QueryInjectionVulnerabilityGroupType(GroupType):
    type_id = 1021
    slug = "query_injection_vulnerability"
    description = "Potential Query Injection Vulnerability"
    category, category_v2 = C.PERFORMANCE, C.DB_QUERY
    noise_config = _d(10)
    enable_auto_resolve = False
    enable_escalation_detection = False


@dataclass(frozen=True)
class ProfileFileIOGroupType(GroupType):
    type_id = 2001
    slug = "profile_file_io_main_thread"
    description = "File I/O on Main Thread"
    category, category_v2 = C.PERFORMANCE, C.MOBILE
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class ProfileImageDecodeGroupType(GroupType):
    type_id = 2002
    slug = "profile_image_decode_main_thread"
    description = "Image Decoding on Main Thread"
    category, category_v2 = C.PERFORMANCE, C.MOBILE
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class ProfileJSONDecodeType(GroupType):
    type_id = 2003
    slug = "profile_json_decode_main_thread"
    description = "JSON Decoding on Main Thread"
    category, category_v2 = C.PERFORMANCE, C.MOBILE
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class ProfileRegexType(GroupType):
    type_id = 2007
    slug = "profile_regex_main_thread"
    description = "Regex on Main Thread"
    category, category_v2 = C.PERFORMANCE, C.MOBILE
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class ProfileFrameDropType(GroupType):
    type_id = 2009
    slug = "profile_frame_drop"
    description = "Frame Drop"
    category, category_v2 = C.PERFORMANCE, C.MOBILE
    noise_config = _d(2000)
    default_priority = P.LOW
    released = True


@dataclass(frozen=True)
class ProfileFunctionRegressionType(GroupType):
    type_id = 2011
    slug = "profile_function_regression"
    description = "Function Regression"
    category, category_v2 = C.PERFORMANCE, C.METRIC
    released = True
    enable_auto_resolve = False


@dataclass(frozen=True)
class LLMDetectedExperimentalGroupType(GroupType):
    type_id = 3501
    slug = "llm_detected_experimental"
    description = "LLM Detected Issue"
    category, category_v2 = C.AI_DETECTED, C.AI_DETECTED
    enable_auto_resolve = False
    enable_escalation_detection = False


@dataclass(frozen=True)
class MonitorIncidentType(GroupType):
    type_id = 4001
    slug = "monitor_check_in_failure"
    description = "Crons Monitor Failed"
    category, category_v2 = C.CRON, C.OUTAGE
    default_priority = P.HIGH
    released = True


@dataclass(frozen=True)
class ReplayRageClickType(GroupType):
    type_id = 5002
    slug = "replay_click_rage"
    description = "Rage Click Detected"
    category, category_v2 = C.REPLAY, C.FRONTEND
    released = True


@dataclass(frozen=True)
class ReplayHydrationErrorType(GroupType):
    type_id = 5003
    slug = "replay_hydration_error"
    description = "Hydration Error Detected"
    category, category_v2 = C.REPLAY, C.FRONTEND
    released = True


@dataclass(frozen=True)
class FeedbackGroup(GroupType):
    type_id = 6001
    slug = "feedback"
    description = "Feedback"
    category, category_v2 = C.FEEDBACK, C.FEEDBACK
    released = True
    enable_auto_resolve = False
    enable_escalation_detection = False


@dataclass(frozen=True)
class UptimeDomainCheckFailure(GroupType):
    type_id = 7001
    slug = "uptime_domain_failure"
    description = "Uptime Domain Monitor Failure"
    category, category_v2 = C.UPTIME, C.OUTAGE
    default_priority = P.HIGH
    enable_auto_resolve = False
    enable_escalation_detection = False


@dataclass(frozen=True)
class MetricIssue(GroupType):
    type_id = 8001
    slug = "metric_issue"
    description = "Metric issue triggered"
    category, category_v2 = C.METRIC_ALERT, C.METRIC
    default_priority = P.HIGH
    released = True  # Sentry's MetricIssue always allows ingest and post-processing
    enable_auto_resolve = False
    enable_escalation_detection = False


@dataclass(frozen=True)
class SendTestNotification(GroupType):
    type_id = 9001
    slug = "send-test-notification"
    description = "Send test notification"
    category, category_v2 = C.TEST_NOTIFICATION, C.TEST_NOTIFICATION
    enable_escalation_detection = False


@dataclass(frozen=True)
class WebVitalsGroup(GroupType):
    type_id = 10001
    slug = "web_vitals"
    description = "Web Vitals"
    category, category_v2 = C.PERFORMANCE, C.FRONTEND
    released = True
    enable_auto_resolve = False
    enable_escalation_detection = False


@dataclass(frozen=True)
class PreprodStaticGroupType(GroupType):
    type_id = 11001
    slug = "preprod_static"
    description = "Static Analysis"
    category, category_v2 = C.PREPROD, C.PREPROD
    default_priority = P.LOW
    enable_escalation_detection = False


@dataclass(frozen=True)
class PreprodDeltaGroupType(GroupType):
    type_id = 11002
    slug = "preprod_delta"
    description = "Size Regression"
    category, category_v2 = C.PREPROD, C.PREPROD
    default_priority = P.LOW
    enable_escalation_detection = False


@dataclass(frozen=True)
class InstrumentationIssueExperimentalGroupType(GroupType):
    type_id = 12001
    slug = "instrumentation_issue_experimental"
    description = "Instrumentation Issue"
    category, category_v2 = C.INSTRUMENTATION, C.INSTRUMENTATION
    default_priority = P.LOW
    enable_escalation_detection = False
