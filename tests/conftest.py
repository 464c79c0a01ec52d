from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from export.cache import CACHE_ENV
from repo_manager.transport import CONTROL_KEY_ENV

#: Server-wide defaults of the python backend's onnxruntime settings for every server the
#: tests start (export/backend/model.py reads them): a dozen servers' models side by side on
#: two cores. Idle threads that spin for work, and a second thread per run that each model
#: waits for, take the CPU the other tests wait for.
BACKEND_DEFAULTS = {
    "REPO_MANAGER_ONNXRUNTIME_ALLOW_SPINNING": "0",
    "REPO_MANAGER_ONNXRUNTIME_INTRA_OP_THREADS": "1",
}

_EXPORT_CACHE = pytest.StashKey[str]()

# Ultralytics must never reach for the network here (no internet on CI machines).
os.environ.setdefault("YOLO_OFFLINE", "1")

#: Tests that take minutes (measured side by side with four workers), longest first. Each is
#: paired with one short test, so that with ``--maxschedchunk 2`` (the Makefile's) every
#: worker starts on one of them and none is left running one alone at the end.
LONGEST_FIRST = (
    "tests/integration/test_soak.py::",
    "tests/integration/test_readme.py::test_every_readme_command_and_example_runs_in_order",
    "tests/integration/test_generations.py::test_a_canary_across_generations_and_one_that_",
    "tests/integration/test_weighted_public_name.py::test_no_unpinned_request_fails_",
    "tests/integration/test_public_name.py::test_no_unpinned_request_fails_through_a_rollout_",
    "tests/integration/test_weighted_public_name.py::test_weighted_public_name_splits_by_weight",
    "tests/integration/test_s3_fleet.py::test_publish_canary_promote_on_three_servers",
    "tests/integration/test_rollout.py::test_canary_gets_its_share_and_keys_stick",
    "tests/integration/test_public_name.py::test_on_an_s3_fleet_of_two_no_load_re_initializes",
    "tests/integration/test_s3_fleet.py::test_killed_server_mid_rollout_is_reported",
    "tests/integration/test_manager_judges.py::",
    "tests/integration/test_generations.py::test_a_canary_of_another_generation_and_one_",
)


def pytest_configure(config: pytest.Config) -> None:
    """BACKEND_DEFAULTS for every server the run starts, and one export cache for the whole
    run, shared by every xdist worker and every CLI process they start: the suite publishes
    the same detector about a hundred times, and each export through torch costs seconds of
    CPU that the two cores need for the servers. The cache's own tests, and the unit tests
    of the export, turn it off."""
    for name, value in BACKEND_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # Every client of the run holds a control key: a ``serve`` the tests start locks its
    # server with it (and writes no key file into the user's home), and the manager and
    # the Routers send it (servers started unlocked ignore the header).
    os.environ.setdefault(CONTROL_KEY_ENV, "test-control-key-0123456789abcdef")
    if CACHE_ENV in os.environ or hasattr(config, "workerinput"):
        return  # the user's choice, or a worker inheriting the controller's folder
    folder = tempfile.mkdtemp(prefix="repo-manager-test-exports-")
    os.environ[CACHE_ENV] = folder
    config.stash[_EXPORT_CACHE] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_EXPORT_CACHE, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(CACHE_ENV, None)


def _gpu_unavailable_reason() -> str | None:
    """Why `gpu` tests cannot run here (None: they can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine (run `make test` on an NVIDIA GPU machine)"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'repo-manager[trt]')"
    return None


def _longest_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """LONGEST_FIRST's tests in its order, each followed by one other test; then the rest."""
    rank = {prefix: n for n, prefix in enumerate(LONGEST_FIRST)}
    long: list[tuple[int, pytest.Item]] = []
    rest: list[pytest.Item] = []
    for item in items:
        found = [n for prefix, n in rank.items() if item.nodeid.startswith(prefix)]
        if found:
            long.append((found[0], item))
        else:
            rest.append(item)
    ordered: list[pytest.Item] = []
    for _, item in sorted(long, key=lambda pair: pair[0]):
        ordered.append(item)
        if rest:
            ordered.append(rest.pop(0))
    return ordered + rest


#: Why `generations` tests are skipped by a run that names no marker (``make test``).
GENERATIONS_SKIPPED = (
    "generations test (every YOLO generation; trains a YOLO26n for minutes): "
    "run `make test-generations` (pytest -m generations)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the longest tests first; skip `gpu`-marked tests with the reason, only where no
    GPU with TensorRT exists; skip `generations`-marked tests unless ``-m`` selects by
    marker (their cost does not fit the suite's budget: README, "How the test suite is
    organised")."""
    items[:] = _longest_first(items)
    gpu_items = [item for item in items if "gpu" in item.keywords]
    reason = _gpu_unavailable_reason() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))
    if not config.getoption("markexpr"):
        for item in items:
            if "generations" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=GENERATIONS_SKIPPED))
