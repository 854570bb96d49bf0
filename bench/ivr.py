"""IVR turn latency: a Twilio call start (signed webhook -> personalized TwiML) against the
hub's own request API on the same touch point, measured in the same run.

    python bench/ivr.py            # 200 calls each, known platinum callers
    python bench/ivr.py --calls 50

Prints the median and 95th percentile of each and their ratio (Twilio / request API), next
to the IVR budget. No assertion: a figure, never a failing build.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from twilio.request_validator import RequestValidator

from prm_core.config import Config
from prm_core.keys import create_key
from prm_core.logs import configure_logging
from prm_core.server.app import create_app
from prm_core.server.state import HUB

TOKEN = "bench-token"
PUBLIC = "https://hub.example.com"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(calls: int) -> None:
    configure_logging("warning", json=False)
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            database_url=f"sqlite:///{Path(tmp)}/prm.db",
            public_url=PUBLIC,
            raw={"touchpoints": {"ivr": {"twilio_auth_token": TOKEN}}},
        )
        client = TestClient(TestServer(create_app(config, owns_process=True)))  # as prm serve does
        await client.start_server()
        try:
            hub = client.app[HUB]
            for n in range(calls):  # known platinum callers, identified on the web
                phone = f"+1415555{n:04d}"
                (event,) = hub.parse_events(
                    {"id": f"w{n}", "type": "identify", "occurred_at": "2026-11-20T09:00:00Z",
                     "identities": {"phone": phone}},
                    "web",
                )  # fmt: skip
                (rec,) = await hub.record([event])
                await hub.update_customer(rec.customer_id, {"traits": {"first_name": "Ann"}, "tier": "platinum"})
            key, _ = await create_key(hub.store, "touchpoint:ivr")
            signer = RequestValidator(TOKEN)
            api, twilio = [], []
            for n in range(calls):
                phone = f"+1415555{n:04d}"
                body = {"id": f"api-{n}", "type": "ivr.call.started", "occurred_at": "2026-11-23T09:00:00Z",
                        "identities": {"phone": phone}, "dialogue": f"API{n}"}  # fmt: skip
                started = time.perf_counter()
                resp = await client.post(
                    "/v1/touchpoints/ivr/requests", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                await resp.read()
                api.append((time.perf_counter() - started) * 1000)
                params = {"CallSid": f"CA{n:06d}", "From": phone, "To": "+18005551212", "Direction": "inbound"}
                path = "/v1/touchpoints/ivr/twilio/voice"
                sig = signer.compute_signature(PUBLIC + path, params)
                started = time.perf_counter()
                resp = await client.post(path, data=params, headers={"X-Twilio-Signature": sig})
                text = await resp.text()
                twilio.append((time.perf_counter() - started) * 1000)
                assert resp.status == 200 and "Welcome back" in text, text[:200]
            budget = hub.touchpoint("ivr").budget_ms
            print(f"{calls} calls each; IVR budget {budget} ms")
            for name, values in (("request API", api), ("Twilio voice", twilio)):
                print(f"  {name:13} median {statistics.median(values):7.1f} ms   p95 {pct(values, 0.95):7.1f} ms")
            print(
                f"  ratio Twilio / request API: median {statistics.median(twilio) / statistics.median(api):.2f}x, "
                f"p95 {pct(twilio, 0.95) / pct(api, 0.95):.2f}x"
            )
        finally:
            await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    asyncio.run(main(parser.parse_args().calls))
