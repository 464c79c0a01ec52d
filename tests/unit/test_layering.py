"""The dependency rules of DESIGN.md, read from the imports themselves (``ast``, not grep).

Nothing below the CLI imports the ``export`` package (torch, Ultralytics): the manager
publishes folders its callers exported, and a gRPC client installs light.
"""

from __future__ import annotations

import ast
from pathlib import Path

import repo_manager

PACKAGE = Path(repo_manager.__file__).parent
#: The command line (a module today, maybe a package later) and the demo may export.
MAY_EXPORT = {"cli.py", "cli", "demo.py"}


def imported_modules(source: str, filename: str = "<source>") -> set[str]:
    """Every absolute module an ``import`` or ``from ... import`` names, at any depth
    (lazy imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def imports_export(source: str, filename: str = "<source>") -> bool:
    return any(
        name == "export" or name.startswith("export.")
        for name in imported_modules(source, filename)
    )


def test_the_check_sees_lazy_and_dotted_imports() -> None:
    assert imports_export("def publish():\n    from export import export_model\n")
    assert imports_export("import export.tensorrt as trt\n")
    assert not imports_export("from repo_manager.exporting import x\nimport exports\n")
    cli = (
        [PACKAGE / "cli.py"] if (PACKAGE / "cli.py").is_file() else (PACKAGE / "cli").rglob("*.py")
    )
    assert any(imports_export(path.read_text()) for path in cli)  # the one that should


def test_only_the_cli_and_the_demo_import_export() -> None:
    offenders = [
        path.relative_to(PACKAGE).as_posix()
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in MAY_EXPORT
        and imports_export(path.read_text(), str(path))
    ]
    assert offenders == []
