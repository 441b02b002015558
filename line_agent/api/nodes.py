"""``GET /api/nodes``: Sparkplug B edge nodes and devices, alive / stale / dead / unknown, and when last seen.

Read from the host state ingest persists (``sparkplug_nodes``, line_agent/store/nodes.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from psycopg_pool import ConnectionPool
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from line_agent.api.auth import Principal, Role, guarded, principal
from line_agent.api.control import check_line
from line_agent.api.db import deps_of
from line_agent.api.schemas import Ident
from line_agent.store.nodes import DEFAULT_STALE_AFTER_S, list_nodes

router = APIRouter()

NodeState = Literal["alive", "stale", "dead", "unknown"]


class NodeOut(BaseModel):
    group_id: str
    edge_node: str
    device: str  # "" = the edge node itself
    line: str
    cell: str
    status: NodeState
    last_seen: datetime | None
    silent_s: float | None
    birth_at: datetime | None
    death_at: datetime | None
    bd_seq: int | None
    metrics: int


class NodesOut(BaseModel):
    stale_after_s: float
    counts: dict[str, int]
    items: list[NodeOut]


@router.get("/api/nodes", response_model=NodesOut, tags=["telemetry"], summary="Sparkplug edge nodes and devices",
            description="Every Sparkplug B edge node (device \"\") and device ingest has seen: `alive` (born, not "
                        "dead, heard from within `stale_after_s`), `stale` (born and not dead, but silent longer), "
                        "`dead` (NDEATH / DDEATH, or its node died), `unknown` (data but no birth yet: ingest asked "
                        "for a rebirth). A token limited to lines sees only its lines' nodes. A stale or dead one "
                        "is also a condition alarm of its line (`GET /api/alarms`, kind `sparkplug_stale` / "
                        "`sparkplug_dead`).",
            **guarded(Role.viewer))
async def nodes(request: Request, group: Ident | None = None, status: NodeState | None = None,
                stale_after_s: Annotated[float | None, Query(gt=0, le=30 * 86400, description=(
                    "Silent longer than this: stale. Default: the server's (LINEGUARD_SPARKPLUG_STALE_S, "
                    f"{DEFAULT_STALE_AFTER_S:g} s unless set), the one its alarms use."))] = None,
                who: Principal = Depends(principal)) -> NodesOut:
    pool: ConnectionPool[Any] = request.app.state.sync_pool
    stale_s = stale_after_s if stale_after_s is not None else float(deps_of(request).sparkplug_stale_after_s)
    if group is not None:
        check_line(who, group)  # a Sparkplug group is a line

    def run() -> list[Any]:
        with pool.connection() as conn:
            found = list_nodes(conn, stale_after_s=stale_s, group=group, status=status)
        return [r for r in found if who.may(str(r.line))]

    rows = await run_in_threadpool(run)
    counts = {s: 0 for s in ("alive", "stale", "dead", "unknown")}
    for r in rows:
        counts[r.status] += 1
    return NodesOut(stale_after_s=stale_s, counts=counts,
                    items=[NodeOut(**r.__dict__) for r in rows])
