"""Dependencies injected into routes: settings, database session, auth, engines."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from gradstore.db.settings import Settings
from gradstore.service.engines import EngineCache

_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_engines(request: Request) -> EngineCache:
    return request.app.state.engines


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
EnginesDep = Annotated[EngineCache, Depends(get_engines)]


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Bearer-token auth when API keys are configured (always, in production)."""
    keys = settings.keys
    if not keys:
        return
    token = credentials.credentials if credentials else ""
    if not any(secrets.compare_digest(token, key) for key in keys):
        raise HTTPException(
            401,
            "a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
