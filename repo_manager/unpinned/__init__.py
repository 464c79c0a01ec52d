"""What the public name does with requests that name no version.

``stable`` (the default): an ensemble pinning stable (``modelconfig.build_alias_config``).
``weighted`` (``policy MODEL --unpinned weighted``): a python-backend model forwarding each
request to the version it draws by the rollout's weights (``backend/model.py``), so that
clients that cannot use the Router (C++, DeepStream, Ultralytics' own client) take part in
a canary too. Both are built here from the rollout state, and both are compared by one
string, ``public_route``: what a loaded public name does.
"""

from __future__ import annotations

from repo_manager.unpinned.config import (
    MODES,
    STABLE,
    WEIGHTED,
    check_mode,
    check_shadow,
    check_weighted_classes,
    describe,
    public_config,
    public_route,
    unpinned_route,
    weighted_files,
)

__all__ = [
    "MODES",
    "STABLE",
    "WEIGHTED",
    "check_mode",
    "check_shadow",
    "check_weighted_classes",
    "describe",
    "public_config",
    "public_route",
    "unpinned_route",
    "weighted_files",
]
