"""The Bearer token between routers and ``sollol agent``, for both sides.

A configured token wins (``[discovery] agent_token``, ``SOLLOL_AGENT_TOKEN``, ``--token``). Without
one, both sides use the token kept in ``[discovery] agent_token_file`` (``SOLLOL_AGENT_TOKEN_FILE``;
default ``agent-token`` in SOLLOL's user config directory): an agent creates it when it is missing,
so no agent ever runs without a token; a router only reads it (a router on the same machine, or
given a copy of the file, needs no setting).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

import platformdirs

from sollol_core.config import Settings
from sollol_core.errors import SollolError

#: The file's name in SOLLOL's user config directory when ``agent_token_file`` is empty.
DEFAULT_NAME = "agent-token"


class TokenFileError(SollolError):
    """The token file cannot be read or created, or holds no token."""


def token_path(settings: Settings) -> Path:
    """Where the token is kept when none is configured."""
    configured = settings.discovery.agent_token_file
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_config_dir("sollol")) / DEFAULT_NAME


def resolve_token(settings: Settings, *, create: bool) -> str:
    """The configured token, else the file's; ``create`` (the agent) makes the file with a fresh
    random token when it is missing. Without ``create`` a missing file means no token (empty)."""
    if settings.discovery.agent_token:
        return settings.discovery.agent_token
    path = token_path(settings)
    if create:
        with contextlib.suppress(FileExistsError):
            _create_token_file(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if create:  # removed between creating and reading it
            raise TokenFileError(f"agent token file {path} vanished while it was created") \
                from None
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the agent token file {path}: {exc}") from None
    if create and not token:
        raise TokenFileError(f"the agent token file {path} is empty: put a token in it, or "
                             "delete it to have a new one made")
    return token


def shared_with_others(path: Path) -> bool:
    """Whether users other than the owner may read or change the token file."""
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def _create_token_file(path: Path) -> None:
    """Write a new token to ``path`` unless it exists (then FileExistsError). The token is written
    to a private temporary file first and linked into place, so nobody ever sees the file
    readable by others, empty or half-written, and two agents starting at once keep one token."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            raise FileExistsError(path)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:  # mkstemp: mode 0600
                file.write(secrets.token_urlsafe(32) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, path)  # fails if another agent made it meanwhile: keep theirs
        finally:
            os.unlink(temporary)
    except FileExistsError:
        raise
    except OSError as exc:
        raise TokenFileError(f"cannot create the agent token file {path}: {exc} (set "
                             "SOLLOL_AGENT_TOKEN_FILE to another path, or SOLLOL_AGENT_TOKEN)") \
            from None
