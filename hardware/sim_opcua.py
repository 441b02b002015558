"""The same virtual PLC (hardware/plc_logic.py) served over OPC UA (asyncua Server).

Each tag with an `opcua` address becomes a variable whose reads come live from the PLC program and whose
writes go through it (so interlocks apply before the write is acknowledged). Only the tags the PLC lets a
controller write are writable in the address space.

`SimOpcUa(port=0).start()` runs it in a background thread; `sim.endpoint` is the opc.tcp URL.

Two extra writable Boolean variables, outside the tag map, under a ``Simulator`` object, let a test drive the
physical inputs of a simulator in another process (as the Modbus simulator's registers 100/101 do):
``ns=<idx>;s=sim.estop`` (e-stop, true = pressed) and ``ns=<idx>;s=sim.guard_door`` (guard door, true = open),
where idx is the index of NAMESPACE_URI (2 on this server). See `sim_input_node_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asyncua import Server, ua
from asyncua.server.address_space import NodeData

from hardware.plc_logic import PLC_WRITABLE, PlcWriteError, RawValue
from hardware.sim_base import ListeningSim
from hardware.tags import Tag

NAMESPACE_URI = "urn:lineguard:sim-plc"
#: String identifiers of the simulator-only input variables (not PLC tags; never in a tag map).
SIM_ESTOP_NODE = "sim.estop"
SIM_GUARD_NODE = "sim.guard_door"

VARIANT_TYPES: dict[str, ua.VariantType] = {
    "bool": ua.VariantType.Boolean,
    "int16": ua.VariantType.Int16,
    "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32,
    "float32": ua.VariantType.Float,
}


def _coerce(tag: Tag, value: Any) -> RawValue:
    if tag.type == "bool":
        return bool(value)
    if tag.type == "float32":
        return float(value)
    return int(value)


def sim_input_node_id(name: str, namespace_index: int = 2) -> str:
    """Node id of a simulator input variable (`SIM_ESTOP_NODE` or `SIM_GUARD_NODE`)."""
    return f"ns={namespace_index};s={name}"


class SimOpcUa(ListeningSim):
    name = "sim-plc-opcua"
    #: Index of the simulator's namespace, known once the server is up.
    namespace_index: int | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/lineguard/"

    @property
    def url(self) -> str:
        """What a line YAML's ``plc.url`` says for this simulator (driver ``opcua``)."""
        return self.endpoint

    async def _add_sim_inputs(self, server: Server, idx: int) -> None:
        """The e-stop and guard door as writable variables, so a test in another process can press them."""
        obj = await server.nodes.objects.add_object(idx, "Simulator")
        inputs: dict[str, tuple[str, Any]] = {
            SIM_ESTOP_NODE: ("estop_active", self.logic.set_estop),
            SIM_GUARD_NODE: ("guard_door_open", self.logic.set_guard_door),
        }
        for ident, (signal_name, setter) in inputs.items():
            node_id = ua.NodeId.from_string(sim_input_node_id(ident, idx))
            var = await obj.add_variable(node_id, ident, False, varianttype=ua.VariantType.Boolean)
            await var.set_writable()

            def read(_n: ua.NodeId, _a: ua.AttributeIds, name: str = signal_name) -> ua.DataValue:
                return ua.DataValue(ua.Variant(bool(self.logic.read(name)), ua.VariantType.Boolean))

            def write(_n: NodeData, _a: ua.AttributeIds, dv: ua.DataValue, set_: Any = setter) -> None:
                if dv.Value is not None and dv.Value.Value is not None:
                    set_(bool(dv.Value.Value))

            server.iserver.set_attribute_value_callback(var.nodeid, read)
            server.iserver.set_attribute_value_setter(var.nodeid, write)

    def _reader(self, tag: Tag) -> Any:
        vtype = VARIANT_TYPES[tag.type]

        def read(_nodeid: ua.NodeId, _attr: ua.AttributeIds) -> ua.DataValue:
            return ua.DataValue(ua.Variant(_coerce(tag, self.logic.read(tag.name)), vtype))

        return read

    def _writer(self, tag: Tag) -> Any:
        def write(_node: NodeData, _attr: ua.AttributeIds, dv: ua.DataValue) -> None:
            if dv.Value is None or dv.Value.Value is None:
                return
            # A refused value is simply not applied, like a PLC program ignoring it: the client sees the
            # old value on read-back (asyncua setters cannot return a status code).
            with contextlib.suppress(PlcWriteError, ValueError, TypeError):
                self.logic.write(tag.name, _coerce(tag, dv.Value.Value))

        return write

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.requested_port}/lineguard/")
        server.set_server_name("lineguard simulated PLC")
        idx = await server.register_namespace(NAMESPACE_URI)
        self.namespace_index = idx
        line = await server.nodes.objects.add_object(idx, self.tags.line)
        for tag in self.tags:
            if tag.opcua is None:
                continue
            node_id = ua.NodeId.from_string(tag.opcua.node_id)
            if node_id.NamespaceIndex != idx:
                raise ValueError(
                    f"tag {tag.name}: node id {tag.opcua.node_id} must use namespace {idx} ({NAMESPACE_URI})"
                )
            var = await line.add_variable(
                node_id,
                tag.name,
                _coerce(tag, self.logic.read(tag.name)),
                varianttype=VARIANT_TYPES[tag.type],
            )
            server.iserver.set_attribute_value_callback(var.nodeid, self._reader(tag))
            if tag.name in PLC_WRITABLE:
                await var.set_writable()
                server.iserver.set_attribute_value_setter(var.nodeid, self._writer(tag))
        await self._add_sim_inputs(server, idx)
        async with server:
            if server.bserver is not None:
                self.port = server.bserver.port
            if ready is not None:
                ready.set()
            self._ready.set()
            await self._scan_until_stopped()
