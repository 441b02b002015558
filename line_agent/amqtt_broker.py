"""Fallback MQTT broker (amqtt, MQTT 3.1.1) for boxes without Mosquitto: ``python -m line_agent.amqtt_broker``.

Demo only: it has no accounts or ACLs here, so it listens on loopback only and refuses any other
address; ``lineguard run`` refuses it altogether and asks for Mosquitto (docs/DEPLOY.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

LOOPBACK = ("127.0.0.1", "::1", "localhost")


async def _serve(port: int, host: str) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    with contextlib.suppress(Exception):
        await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    if args.host not in LOOPBACK:
        parser.error(f"--host {args.host}: the amqtt fallback has no accounts and serves loopback only "
                     f"({', '.join(LOOPBACK)}); install Mosquitto for line equipment")
    asyncio.run(_serve(args.port, args.host))


if __name__ == "__main__":
    main()
