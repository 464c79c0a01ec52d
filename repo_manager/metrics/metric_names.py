"""Every metric name the project reads or writes, in one place.

The Router and the manager export the ``repo_manager_*`` names; Triton exports the
``nv_inference_*`` ones per ``{model, version}``. The progressive analysis reads both, the
Grafana dashboard queries both: a name retyped in any of them would be a silent zero.
Counters are named without prometheus-client's ``_total`` suffix, as its families take them.
"""

from __future__ import annotations

__all__ = [
    "CANARY_VERSION",
    "CANARY_WEIGHT",
    "FAILED_CHECKS",
    "FLEET_SERVERS",
    "GATE_PASSED",
    "GATE_VALUE",
    "METRICS_ERRORS",
    "RECONCILE_ACTIONS",
    "RECONCILE_DURATION",
    "RECONCILE_LAST_SUCCESS",
    "RECONCILE_RUNS",
    "RECONCILE_UNREACHABLE",
    "ROLLOUT_PHASE",
    "ROUTER_DETECTED_IMAGES",
    "ROUTER_DETECTIONS",
    "ROUTER_DETECTIONS_SQUARED",
    "ROUTER_DETECTION_SCORES",
    "ROUTER_ERRORS",
    "ROUTER_FALLBACKS",
    "ROUTER_LATENCY",
    "ROUTER_REQUESTS",
    "ROUTER_TABLE_SOURCE",
    "ROUTER_WATCH_FALLBACKS",
    "SERVER_RESIDENT",
    "SHADOW_BOXES",
    "SHADOW_LATENCY",
    "SHADOW_REQUESTS",
    "STABLE_VERSION",
    "TRITON_CPU_MEMORY_TOTAL",
    "TRITON_CPU_MEMORY_USED",
    "TRITON_DURATION_US",
    "TRITON_FAILURE",
    "TRITON_GPU_MEMORY_TOTAL",
    "TRITON_GPU_MEMORY_USED",
    "TRITON_PREFIX",
    "TRITON_SUCCESS",
    "WATCH_SUBSCRIBERS",
]

# Router (client side, per model and version).
ROUTER_REQUESTS = "repo_manager_router_requests"
ROUTER_ERRORS = "repo_manager_router_errors"
ROUTER_FALLBACKS = "repo_manager_router_fallbacks"
ROUTER_LATENCY = "repo_manager_router_latency_seconds"
# What ``Router.detect`` found, per version: images, boxes, the sum of each image's box count
# squared (the spread of counts, for a test of two means) and the sum of the boxes' scores.
ROUTER_DETECTED_IMAGES = "repo_manager_router_detect_images"
ROUTER_DETECTIONS = "repo_manager_router_detections"
ROUTER_DETECTIONS_SQUARED = "repo_manager_router_detections_squared"
ROUTER_DETECTION_SCORES = "repo_manager_router_detection_scores"
SHADOW_REQUESTS = "repo_manager_router_shadow_requests"
SHADOW_LATENCY = "repo_manager_router_shadow_latency_seconds"
SHADOW_BOXES = "repo_manager_router_shadow_boxes"
# How Routers follow the routing table (per model): the manager's watch, or storage.
ROUTER_TABLE_SOURCE = "repo_manager_router_table_source"
ROUTER_WATCH_FALLBACKS = "repo_manager_router_watch_fallbacks"

# Rollout state (manager side, per model).
CANARY_WEIGHT = "repo_manager_canary_weight"
ROLLOUT_PHASE = "repo_manager_rollout_phase"
FAILED_CHECKS = "repo_manager_analysis_failed_checks"
METRICS_ERRORS = "repo_manager_analysis_metrics_errors"
GATE_VALUE = "repo_manager_gate_value"
GATE_PASSED = "repo_manager_gate_passed"
STABLE_VERSION = "repo_manager_stable_version"
CANARY_VERSION = "repo_manager_canary_version"

# The long-running manager itself (``reconcile --watch``).
RECONCILE_RUNS = "repo_manager_reconcile_runs"
RECONCILE_ACTIONS = "repo_manager_reconcile_actions"
RECONCILE_DURATION = "repo_manager_reconcile_duration_seconds"
RECONCILE_UNREACHABLE = "repo_manager_reconcile_unreachable_servers"
RECONCILE_LAST_SUCCESS = "repo_manager_reconcile_last_success_timestamp_seconds"
FLEET_SERVERS = "repo_manager_fleet_servers"
WATCH_SUBSCRIBERS = "repo_manager_watch_subscribers"

# Triton's own per-version counters (its metrics port), labelled with the versions model.
TRITON_PREFIX = "nv_"
TRITON_SUCCESS = "nv_inference_request_success"
TRITON_FAILURE = "nv_inference_request_failure"
TRITON_DURATION_US = "nv_inference_request_duration_us"
# Triton's gauges of the server (no model label): per GPU (``gpu_uuid``), and the host's.
TRITON_GPU_MEMORY_USED = "nv_gpu_memory_used_bytes"
TRITON_GPU_MEMORY_TOTAL = "nv_gpu_memory_total_bytes"
TRITON_CPU_MEMORY_USED = "nv_cpu_memory_used_bytes"
TRITON_CPU_MEMORY_TOTAL = "nv_cpu_memory_total_bytes"

# Resident memory of an embedded server and its backend stubs (``serve --process-metrics-port``).
SERVER_RESIDENT = "repo_manager_server_resident_bytes"
