"""Notification benchmark: 1,000 link emails to a local aiosmtpd in one batch.

Usage::

    .venv/bin/python bench/notify.py [--count 1000] [--connections 1,4,8]
                                     [--security none|starttls|tls]

The server is ``tests/smtp_server.py`` (a real aiosmtpd with AUTH when TLS is on),
listening on 127.0.0.1:0 in a thread of this process, so client and server share one
CPU-bound interpreter: the figure is a floor for a real relay on another host. Each
message is composed from the templates first (timed apart), then sent with
``SmtpChannel.send_many`` (connection reuse, bounded concurrency). Prints messages/s per
connection count and checks every message arrived. Target: ≥ 200 messages/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delivery import messages
from delivery.channel import OutgoingMessage, new_message_id
from delivery.channel_settings import EmailSettings
from delivery.email import SmtpChannel
from delivery.errors import DeliveryError
from tests.smtp_server import SmtpServer

TARGET = 200.0


def compose(count: int) -> list[OutgoingMessage]:
    return [
        messages.link_email(
            to=f"patient{i}@patients.example",
            link_url=f"https://courier.example/l/{i:08d}",
            expires=date(2030, 1, 31),
            hospital="St Elsewhere",
            language=("en", "ar", "zh-Hans")[i % 3],
            message_id=new_message_id("bench.courier.test"),
        )
        for i in range(count)
    ]


async def send(server: SmtpServer, batch: list[OutgoingMessage], connections: int) -> float:
    tls = server.security != "none"
    settings = EmailSettings(
        backend="smtp",
        host=server.host,
        port=server.port,
        security=server.security,
        username="bench" if tls else None,
        password_env="UNUSED" if tls else None,
        max_connections=connections,
    )
    ch = SmtpChannel(
        settings, password="bench" if tls else None, tls_context=server.client_context()
    )
    try:
        start = time.perf_counter()
        results = await ch.send_many(batch)
        elapsed = time.perf_counter() - start
    finally:
        await ch.aclose()
    failed = [r for r in results if isinstance(r, DeliveryError)]
    if failed:
        raise SystemExit(f"{len(failed)} messages failed, first: {failed[0]!r}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--connections", default="1,4,8")
    ap.add_argument("--security", choices=["none", "starttls", "tls"], default="none")
    args = ap.parse_args()

    t0 = time.perf_counter()
    batch = compose(args.count)
    compose_s = time.perf_counter() - t0
    print(
        f"composed {args.count} link emails (en/ar/zh-Hans) in {compose_s:.2f} s "
        f"({args.count / compose_s:.0f}/s)"
    )
    users = {"bench": "bench"} if args.security != "none" else None
    print(f"{'connections':>11}  {'seconds':>8}  {'messages/s':>10}  vs target {TARGET:.0f}/s")
    for n in [int(x) for x in args.connections.split(",")]:
        with SmtpServer(security=args.security, users=users) as server:
            elapsed = asyncio.run(send(server, batch, n))
            assert len(server.received) == args.count, "the server lost messages"
            opened = server.connections
        rate = args.count / elapsed
        print(
            f"{n:>11}  {elapsed:>8.2f}  {rate:>10.0f}  {rate / TARGET:.2f}x "
            f"({opened} connections opened)"
        )


if __name__ == "__main__":
    main()
