"""Pushing partner outcomes to a touch point's open session.

``GET /v1/touchpoints/{tp}/dialogues/{dialogue}/fulfillments`` (key ``touchpoint:{tp}``) is a
Server-Sent Events stream: first one ``fulfillment`` event per request of that dialogue as it
stands, then one for every change as it happens (``prm_fulfillment_updated``), so a portal
page or an agent's screen that answered within its budget shows the technician's window when
the late partner confirms it. It ends after ``max_s`` (a client reconnects and gets the
current state first, so nothing is missed in between).

The stream is fed by the hub process that recorded the change; with several hub processes a
client also sees every change when it reconnects. An erasure drops the updates about the
person not yet sent (``prm_customer_erased``).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from prm_core.plugin import HUB, ApiError, Fulfillment, api, require

__all__ = ["Sessions", "sessions", "stream_route"]


class Sessions:
    """Open streams by dialogue id; each stream's queue holds (customer id, update) until sent."""

    def __init__(self) -> None:
        self.open: dict[str, set[asyncio.Queue[tuple[str, dict[str, Any]]]]] = defaultdict(set)

    def push(self, fulfillment: Fulfillment) -> None:
        for queue in self.open.get(fulfillment.dialogue_id, ()):
            queue.put_nowait((fulfillment.customer_id, fulfillment.to_json()))

    def forget(self, customer_ids: Sequence[str]) -> int:
        """Drop the updates about these customers not yet sent (an erasure); how many."""
        ids, dropped = set(customer_ids), 0
        for queues in self.open.values():
            for queue in queues:
                waiting = []
                while not queue.empty():
                    waiting.append(queue.get_nowait())
                for item in waiting:
                    if item[0] in ids:
                        dropped += 1
                    else:
                        queue.put_nowait(item)
        return dropped


sessions = Sessions()


def _sse(data: dict[str, Any]) -> bytes:
    return f"event: fulfillment\ndata: {json.dumps(data)}\n\n".encode()


def stream_route(max_s: float = 300.0) -> web.RouteDef:
    @api(
        "Server-Sent Events: a dialogue's partner work now, then every change",
        scope="touchpoint:{tp}",
        responses={200: "text/event-stream of `fulfillment` events", 404: "No such dialogue at this touch point"},
        params={"tp": "touch point", "dialogue": "the hub's dialogue id (an answer's dialogue_id)"},
    )
    async def stream(request: web.Request) -> web.StreamResponse:
        tp, dialogue = request.match_info["tp"], request.match_info["dialogue"]
        await require(request, f"touchpoint:{tp}")
        hub = request.app[HUB]

        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        sessions.open[dialogue].add(queue)  # before reading: a change in between is not lost
        try:
            now = await hub.dialogue_fulfillments(tp, dialogue)
            if now is None:
                raise ApiError(404, "not_found", f"no dialogue {dialogue} at {tp}", "dialogue")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            try:
                for f in reversed(now):
                    await response.write(_sse(f.to_json()))
                deadline = asyncio.get_running_loop().time() + max_s
                while (left := deadline - asyncio.get_running_loop().time()) > 0:
                    try:
                        _, update = await asyncio.wait_for(queue.get(), timeout=min(left, 15.0))
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                        continue
                    await response.write(_sse(update))
            except ConnectionResetError:
                pass  # the client closed the stream: its normal end, nothing to report
            return response
        finally:
            sessions.open[dialogue].discard(queue)
            if not sessions.open[dialogue]:
                del sessions.open[dialogue]

    return web.get("/v1/touchpoints/{tp}/dialogues/{dialogue}/fulfillments", stream)
