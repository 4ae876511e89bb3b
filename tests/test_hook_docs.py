"""The hook contract is documented exactly as coded, and every hook has a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from sollol_core import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def hook_functions() -> dict[str, object]:
    return {name: f for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(f, "sollol_spec")}


def rendered_signature(name: str, function: object) -> str:
    signature = inspect.signature(function, eval_str=True)  # type: ignore[arg-type]
    return re.sub(r"\b(?:[a-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", f"{name}{signature}")


def test_hookspecs_module_holds_the_expected_hooks() -> None:
    assert set(hook_functions()) >= {
        "sollol_discover", "sollol_probe", "sollol_collect_telemetry", "sollol_place",
        "sollol_execute", "sollol_on_decision", "sollol_on_request_finished",
    }


def test_every_hook_is_prefixed_typed_and_documented() -> None:
    for name, function in hook_functions().items():
        assert name.startswith("sollol_")
        signature = inspect.signature(function)  # type: ignore[arg-type]
        assert signature.return_annotation is not inspect.Signature.empty, name
        for parameter in signature.parameters.values():
            assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)
        doc = inspect.getdoc(function) or ""
        assert "Called" in doc, f"{name}'s docstring does not say when it is called"
        for parameter in signature.parameters:
            assert f":param {parameter}:" in doc, f"{name} does not document {parameter}"


def test_firstresult_hooks_say_so() -> None:
    for name, function in hook_functions().items():
        firstresult = function.sollol_spec["firstresult"]  # type: ignore[attr-defined]
        assert ("firstresult" in (inspect.getdoc(function) or "")) == firstresult, name


def test_every_hook_appears_with_its_signature_in_docs() -> None:
    text = (ROOT / "docs" / "hooks.md").read_text()
    for name, function in hook_functions().items():
        assert rendered_signature(name, function) in text, f"docs/hooks.md lacks {name}"


def test_every_hook_is_called_through_the_manager_in_test_hooks() -> None:
    calls = (ROOT / "tests" / "test_hooks.py").read_text()
    manager = inspect.getsource(__import__("sollol_core.plugins", fromlist=["x"]))
    for name in hook_functions():
        # Called directly, or each implementation on its own (observers are isolated)
        assert re.search(rf"pm\.hook\.{name}\b", manager), f"plugins.py never calls {name}"
        assert name in calls, f"tests/test_hooks.py does not exercise {name}"
