"""The client-side ``Router`` and what it is made of, one job per module.

``plan`` (where a request goes; ``split`` and ``cohort`` are its rules, shared with the
weighted public name), ``table`` (following the manager's routing table),
``servers`` (the Triton servers and one attempt across them), ``shadow`` (mirroring to the
canary), ``detection`` (YOLO pre- and post-processing) and ``router`` (the front that wires
them). Never imports ``export/``, torch or Ultralytics: a gRPC client installs light.
"""

from __future__ import annotations

from repo_manager.routing.detection import Detections
from repo_manager.routing.plan import Key, RoutePlan, key_point
from repo_manager.routing.router import RoutedResult, Router

__all__ = ["Detections", "Key", "RoutePlan", "RoutedResult", "Router", "key_point"]
