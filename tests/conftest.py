from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _clean_sollol_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the settings they set themselves."""
    from sollol_core.plugins import environment_variables

    for name in [*environment_variables(), "SOLLOL_CONFIG"]:
        monkeypatch.delenv(name, raising=False)
