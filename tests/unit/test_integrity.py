"""What the verifier accepts as published, and what the rollout does with what it refuses
(pure logic: a recording fleet; the real server is in tests/integration/test_tampering.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from repo_manager.errors import IntegrityError
from repo_manager.integrity import ConfigSeal, SigningKey, Verifier, config_digest
from repo_manager.modelconfig import ModelConfig, render_config
from repo_manager.names import versions_model_name
from repo_manager.phases import Phase
from repo_manager.repository import ModelRepository
from repo_manager.state import load_state
from repo_manager.storage import LocalStorage
from tests.unit.published import write_published, write_version
from tests.unit.test_rollout_ordering import Harness
from tests.unit.test_rollout_ordering import manager as manager

KEY = SigningKey(secret=b"k" * 32)


def version_dir(root: Path, version: str) -> Path:
    return root / versions_model_name("m") / version


@pytest.fixture
def published(tmp_path: Path) -> Path:
    write_published(tmp_path, "m", ["1"])
    return tmp_path


def problem(root: Path, version: str = "1", key: SigningKey | None = None) -> str | None:
    return Verifier(LocalStorage(root), signing_key=key).problem("m", version)


def test_a_version_as_published_passes(published: Path) -> None:
    assert problem(published) is None


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("append to model.py", "model.py differs from its manifest (sha256)"),
        ("add a file", "extra.py is not in its manifest"),
        ("remove model.py", "model.py is missing"),
        ("remove the manifest", "manifest.json is missing"),
        ("break the manifest", "manifest.json is not JSON"),
        ("empty the file list", "manifest.json names no files"),
        ("another version's manifest", "is the manifest of version '7', not '1'"),
        ("a bytecode folder", "__pycache__/model.cpython-311.pyc is not in its manifest"),
    ],
)
def test_a_changed_version_is_refused_naming_the_file(
    published: Path, change: str, said: str
) -> None:
    folder = version_dir(published, "1")
    manifest = json.loads((folder / "manifest.json").read_text())
    if change == "append to model.py":
        with open(folder / "model.py", "a") as handle:
            handle.write("open('/tmp/marker', 'w')\n")
    elif change == "add a file":
        (folder / "extra.py").write_text("x = 1\n")
    elif change == "remove model.py":
        (folder / "model.py").unlink()
    elif change == "remove the manifest":
        (folder / "manifest.json").unlink()
    elif change == "break the manifest":
        (folder / "manifest.json").write_text("{")
    elif change == "empty the file list":
        (folder / "manifest.json").write_text(json.dumps({**manifest, "files": {}}))
    elif change == "another version's manifest":
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": "7"}))
    elif change == "a bytecode folder":
        (folder / "__pycache__").mkdir()
        (folder / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00")
    found = problem(published)
    assert found is not None and found.startswith(str(folder)) and said in found


def test_the_empty_bytecode_guard_is_the_one_file_a_manifest_need_not_name(
    published: Path,
) -> None:
    guard = version_dir(published, "1") / "__pycache__"
    guard.write_bytes(b"")
    assert problem(published) is None
    guard.write_bytes(b"bytecode")
    assert "__pycache__ is not in its manifest" in (problem(published) or "")


def test_each_file_is_hashed_once_per_change(published: Path) -> None:
    verifier = Verifier(LocalStorage(published))
    assert verifier.problem("m", "1") is None
    hashed = verifier.cache.counts.hashed
    assert hashed == 1  # model.py
    for _ in range(5):
        assert verifier.problem("m", "1") is None
    assert verifier.cache.counts.hashed == hashed
    model_py = version_dir(published, "1") / "model.py"
    with open(model_py, "a") as handle:
        handle.write("# changed\n")
    assert "model.py differs" in (verifier.problem("m", "1") or "")
    assert verifier.cache.counts.hashed == hashed + 1


def test_a_change_that_keeps_size_and_mtime_is_still_seen(published: Path) -> None:
    """ctime and the inode are in the token: ``touch -d`` cannot hide a change."""
    verifier = Verifier(LocalStorage(published))
    assert verifier.problem("m", "1") is None
    model_py = version_dir(published, "1") / "model.py"
    before = model_py.stat()
    data = model_py.read_bytes()
    model_py.write_bytes(data[:-2] + b"9\n")  # same size
    os.utime(model_py, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "model.py differs" in (verifier.problem("m", "1") or "")


def test_with_a_signing_key_only_signed_manifests_pass(published: Path) -> None:
    manifest_path = version_dir(published, "1") / "manifest.json"
    assert "not signed" in (problem(published, key=KEY) or "")
    document = json.loads(manifest_path.read_text())
    document["signature"] = KEY.sign(document)
    manifest_path.write_text(json.dumps(document))
    assert problem(published, key=KEY) is None
    assert "not signed" in (problem(published, key=SigningKey(secret=b"o" * 32)) or "")
    # A writer without the key re-hashes a changed model.py into the manifest: refused.
    forged = version_dir(published, "1") / "model.py"
    forged.write_text("import os\n")
    write_version(forged.parent, "m", "1", {"model.py": b"import os\n"})
    assert "not signed" in (problem(published, key=KEY) or "")
    assert "hidden" in repr(KEY) and "k" * 32 not in repr(KEY)


def test_a_config_changed_outside_the_manager_breaks_its_seal(published: Path) -> None:
    storage = LocalStorage(published)
    repository = ModelRepository(storage)
    config = repository.require_config("m")
    assert repository.config_problem("m", config) is None
    config.backend = "python"
    config.parameters["EXECUTION_ENV_PATH"].string_value = "/tmp/env.tar.gz"
    (version_dir(published, "1").parent / "config.pbtxt").write_bytes(render_config(config))
    found = repository.config_problem("m", repository.require_config("m"))
    assert found is not None and "config.pbtxt differs from the config repo-manager wrote" in found


def test_the_manager_s_own_config_writes_keep_the_seal(published: Path) -> None:
    from repo_manager.modelconfig import with_version_policy

    repository = ModelRepository(LocalStorage(published))
    config = repository.require_config("m")
    repository.write_config("m", with_version_policy(config, ["1", "2"]))  # policy only
    repository.write_config("m", ModelConfig(name="m.versions", max_batch_size=4))
    assert repository.config_problem("m", repository.require_config("m")) is None
    seal = ConfigSeal(LocalStorage(published)).accepted("m")
    assert seal == [config_digest(ModelConfig(name="m.versions", max_batch_size=4))]


def test_an_unsealed_config_is_sealed_unless_the_manager_signs(tmp_path: Path) -> None:
    write_published(tmp_path, "m", ["1"])
    (tmp_path / ".repo-manager.m.config-seal").unlink()
    config = ModelRepository(LocalStorage(tmp_path)).require_config("m")
    signed = ModelRepository(LocalStorage(tmp_path), signing_key=KEY)
    assert "is missing" in (signed.config_problem("m", config) or "")
    assert ModelRepository(LocalStorage(tmp_path)).config_problem("m", config) is None
    assert (tmp_path / ".repo-manager.m.config-seal").is_file()
    assert "not signed" in (signed.config_problem("m", config) or "")


# ---- what the rollout does with a refused version (recording fleet) ---------------------


def tamper(root: Path, version: str) -> None:
    with open(version_dir(root, version) / "model.py", "a") as handle:
        handle.write("open('/tmp/injected', 'w')\n")


def test_a_tampered_canary_loses_its_traffic_and_is_never_loaded(
    manager: Harness, tmp_path: Path
) -> None:
    rollout, fleet, storage = manager
    tamper(tmp_path, "2")
    with pytest.raises(IntegrityError) as raised:
        rollout.set_weight("m", 50)
    message = str(raised.value)
    assert "\n" not in message and "m.versions/2/model.py differs" in message
    assert "rolled back: stable 1 serves 100%" in message
    state = load_state(storage, "m")
    assert state is not None and state.phase is Phase.ROLLED_BACK and state.weights == {"1": 100}
    assert any("refused canary 2" in t.reason for t in state.history)
    loaded = [call[0] for call in fleet.calls if isinstance(call[0], list)]
    assert loaded and all("2" not in versions for versions in loaded)


def test_a_tampered_stable_is_said_loudly_and_nothing_is_loaded(
    manager: Harness, tmp_path: Path
) -> None:
    rollout, fleet, storage = manager
    tamper(tmp_path, "1")
    for action in (lambda: rollout.set_weight("m", 50), lambda: rollout.rollback("m")):
        with pytest.raises(IntegrityError, match=r"^STABLE m version 1 is not what was published"):
            action()
    assert fleet.calls == []
    state = load_state(storage, "m")
    assert state is not None and state.weights == {"1": 90, "2": 10}
    refusals = [t for t in state.history if t.action == "refused stable 1"]
    assert len(refusals) == 1 and "model.py differs" in refusals[0].reason
    report = rollout.reconcile("m")[0]
    assert report.refused is not None and report.refused.startswith("STABLE")
    assert rollout.guard.findings(state).keys() == {"1"}  # what status shows


def test_a_rollback_of_a_tampered_canary_goes_through_and_never_loads_it(
    manager: Harness, tmp_path: Path
) -> None:
    rollout, fleet, storage = manager
    tamper(tmp_path, "2")
    final = rollout.rollback("m")
    assert final.phase is Phase.ROLLED_BACK and final.weights == {"1": 100}
    loaded = [call for call in fleet.calls if isinstance(call[0], list)]
    assert loaded and all("2" not in versions for versions, *_ in loaded)
    state = load_state(storage, "m")
    assert state is not None and state.canary is None


def test_a_verified_canary_may_replace_a_tampered_stable(manager: Harness, tmp_path: Path) -> None:
    rollout, fleet, _ = manager
    tamper(tmp_path, "1")
    with pytest.raises(IntegrityError, match="promote the verified canary 2"):
        rollout.set_weight("m", 50)
    final = rollout.promote("m")
    assert final.stable == "2" and final.phase is Phase.SUCCEEDED
    # The public name leaves the tampered stable before the call that unloads it: first as
    # the weighted model (no ensemble: loading it reloads no versions model) sending all to
    # 2, then as the ensemble pinning 2 (its load reloads the versions model without 1).
    assert fleet.calls[:2] == [("public", None, {"2": 100}), ("public", "2", {"2": 100})]
    loaded = [call for call in fleet.calls if isinstance(call[0], list)]
    assert all("1" not in versions for versions, *_ in loaded)


def test_a_publish_whose_copy_differs_from_its_manifest_is_undone(
    manager: Harness, tmp_path: Path
) -> None:
    from tests.unit.test_rollout_ordering import staged_version

    rollout, _, storage = manager
    rollout.promote("m")
    staged = staged_version(tmp_path, "3")
    (staged / "3" / "model.py").write_text("changed after export\n")
    before = load_state(storage, "m")
    with pytest.raises(IntegrityError, match=r"m\.versions/3/model\.py differs .*publish undone"):
        rollout.publish("m", "3", staged=staged)
    assert load_state(storage, "m") == before
    assert not version_dir(tmp_path, "3").exists()


def test_sign_signs_what_is_intact_and_refuses_what_is_not(published: Path) -> None:
    write_version(version_dir(published, "2"), "m", "2")
    signer = ModelRepository(LocalStorage(published), signing_key=KEY)
    assert signer.sign_published("m") == ["version 1", "version 2", "config"]
    assert problem(published, "1", KEY) is None and problem(published, "2", KEY) is None
    assert signer.config_problem("m", signer.require_config("m")) is None
    tamper(published, "2")
    with pytest.raises(IntegrityError, match=r"m not signed: .*/2/model\.py differs"):
        signer.sign_published("m")
