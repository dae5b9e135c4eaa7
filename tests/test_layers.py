"""The package's layers point one way: the engine's rooms (curvature, ffg, io, methods, and
the bottom modules names, errors, device) never import the layers above them (the merge
config and loop, the CLI, the workflow's plan, the reports, the demo, the task families and
the evaluators): the empirical Fisher takes a task's examples as data (FisherTask)."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src/otamerge"
ENGINE = ("curvature", "ffg", "io", "methods", "names", "errors", "device")
ABOVE = ("demo", "workflow", "config", "merge", "cli", "report", "evaluation", "pretrained", "extract_lora",
         "families")


def _imports(path: Path) -> set[str]:
    """Every otamerge module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("otamerge"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("otamerge")}
    return out


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_no_arrow_runs_back_up():
    files = [p for room in ENGINE for p in (sorted((PACKAGE / room).rglob("*.py")) if (PACKAGE / room).is_dir()
                                            else [PACKAGE / f"{room}.py"])]
    assert len(files) > 40  # every engine module is read
    upward = {f"{p.relative_to(PACKAGE)} -> {m}" for p in files for m in _imports(p) if _room(m) in ABOVE}
    assert upward == set()


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from otamerge.workflow.layout import RESULTS\n")
    assert {_room(m) for m in _imports(bad)} == {"workflow"}
