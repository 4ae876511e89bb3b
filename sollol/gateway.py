"""``python -m sollol.gateway``: the gateway, as ``sollol serve`` runs it (same flags)."""

from __future__ import annotations

import sys

from sollol_core.cli import main as cli_main


def main(argv: list[str] | None = None) -> None:
    cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
