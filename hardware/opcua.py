"""OPC UA driver (asyncua Client)."""

from __future__ import annotations

import logging

from asyncua import Client, Node, ua
from asyncua.ua.uaerrors import UaStatusCodeError

from hardware.driver import BaseDriver, Value
from hardware.sim_opcua import VARIANT_TYPES
from hardware.tags import Tag, TagMap

# Status codes that mean the session or channel is gone (reconnect), as opposed to a refused request.
_LINK_WORDS = ("Session", "Connection", "SecureChannel", "ServerNotConnected", "Timeout", "Communication")


class OpcUaDriver(BaseDriver):
    protocol = "opcua"

    def __init__(
        self,
        tags: TagMap,
        url: str,
        *,
        io_timeout_s: float = 1.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        super().__init__(
            tags, io_timeout_s=io_timeout_s, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s
        )
        self.url = url
        self._client: Client | None = None
        self._nodes: dict[str, Node] = {}
        logging.getLogger("asyncua").setLevel(logging.WARNING)

    async def _open(self) -> None:
        # asyncua's own auto_reconnect stays off: BaseDriver owns state and backoff for every protocol.
        client = Client(self.url, timeout=self.io_timeout_s)
        await client.connect()
        self._client = client
        self._nodes = {}

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.disconnect()
            except Exception:
                # The server is gone: closing our side is all that is left to do.
                client.disconnect_socket()

    def _node(self, tag: Tag) -> Node:
        if tag.opcua is None:
            raise KeyError(f"tag {tag.name!r} has no opcua address")
        if self._client is None:
            raise ConnectionError("opcua client closed")
        node = self._nodes.get(tag.name)
        if node is None:
            node = self._client.get_node(tag.opcua.node_id)
            self._nodes[tag.name] = node
        return node

    def _is_link_error(self, exc: BaseException) -> bool:
        if isinstance(exc, UaStatusCodeError):
            return any(w in type(exc).__name__ for w in _LINK_WORDS)
        return isinstance(exc, ConnectionError | OSError | TimeoutError | ua.UaError)

    async def _read_raw(self, tag: Tag) -> Value:
        value = await self._node(tag).read_value()
        if tag.type == "bool":
            return bool(value)
        return float(value) if tag.type == "float32" else int(value)

    async def _write_raw(self, tag: Tag, raw: Value) -> Value | None:
        value: Value = bool(raw) if tag.type == "bool" else float(raw) if tag.type == "float32" else int(raw)
        await self._node(tag).write_value(ua.DataValue(ua.Variant(value, VARIANT_TYPES[tag.type])))
        return None
