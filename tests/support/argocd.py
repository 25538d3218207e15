"""The ArgoCD health check (deploy/argocd/health.lua) run by a real Lua, as ArgoCD runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa

ARGOCD = Path(__file__).resolve().parents[2] / "deploy" / "argocd"


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """What ArgoCD shows for `obj`: the script's {status, message}."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute((ARGOCD / "health.lua").read_text())
    return {k: str(v) for k, v in result.items()}


def _to_lua(lua: Any, value: Any) -> Any:
    """`value` as Lua sees it: dicts and lists become tables."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value
