"""An instance dies (SIGKILL) mid-call, with webhook deliveries in flight and calls live: the
surviving instance sends what it left undelivered, under the same webhook-ids, once the
leases expire."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from callbridge.testing.twilio_simulator import TwilioCallSimulator, new_call_sid
from callbridge.testing.webhook_receiver import ReceivedRequest, Reply
from tests.bridge_harness import AUTH_TOKEN, STREAM_SECRET
from tests.cluster_harness import PG_ADMIN_URL, Cluster, Instance, running_cluster
from tests.test_bridge_e2e import track

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WEBHOOK_TIMEOUT_S = 1.0
DELIVERY_LEASE_S = WEBHOOK_TIMEOUT_S + 5.0  # what the app gives its dispatcher


async def stored(cluster: Cluster, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(PG_ADMIN_URL, server_settings={"search_path": cluster.schema})
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def long_call(index: int) -> bytes:
    """A call still talking well after the instance is killed (utterances every 1.2 s)."""
    base = 600 + 100 * index
    return track(20000, [(300 + 1200 * n, [base + 10 * n]) for n in range(15)], index)


async def start_call(
    instance: Instance, cluster: Cluster, audio: bytes
) -> tuple[TwilioCallSimulator, asyncio.Task[int]]:
    """A live call on ``instance`` (directly, so the test knows which instance holds it),
    and the task feeding it audio in real time."""
    sim = TwilioCallSimulator(
        f"ws://{instance.ip}:{instance.port}/twilio/media",
        auth_token=AUTH_TOKEN,
        public_url=cluster.balancer.public_url,
        call_sid=new_call_sid(),
        stream_secret=STREAM_SECRET,
    )
    await sim.connect()
    await sim.send_start(("inbound",))
    return sim, asyncio.create_task(sim.send_frames(audio, speed=1.0))


async def test_survivor_sends_a_dead_instances_pending_events_under_the_same_ids(
    tmp_path: Path,
) -> None:
    async with running_cluster(
        tmp_path,
        extra_env={
            "CALLBRIDGE_WEBHOOK_TIMEOUT_S": str(WEBHOOK_TIMEOUT_S),
            "CALLBRIDGE_WEBHOOK_BACKOFF_INITIAL_S": "0.05",
            "CALLBRIDGE_WEBHOOK_BACKOFF_MAX_S": "0.3",
        },
    ) as cluster:
        victim, survivor = cluster.instances
        receiver = cluster.receivers[0]
        # The victim's POSTs hang: it dies holding their leases.
        receiver.set_responder(
            lambda request: Reply(200, delay_s=60) if request.remote == victim.ip else Reply(200)
        )
        calls = [await start_call(victim, cluster, long_call(i)) for i in range(2)]
        sids = [sim.call_sid for sim, _ in calls]

        # Wait until each doomed call has a stored segment and the victim has POSTs in flight.
        for _ in range(200):
            rows = await stored(
                cluster,
                "SELECT call_sid, count(*) FROM segments WHERE call_sid = ANY($1) GROUP BY 1",
                sids,
            )
            if len(rows) == len(sids) and any(r.remote == victim.ip for r in receiver.requests):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the victim's calls never got going")
        victim.kill()
        killed_at = time.time()
        for sim, feeding in calls:
            feeding.cancel()
            await sim.close(abort=True)

        events = {
            row["event_id"]: row["call_sid"]
            for row in await stored(
                cluster, "SELECT event_id, call_sid FROM events WHERE call_sid = ANY($1)", sids
            )
        }

        def resent(request: ReceivedRequest) -> bool:
            return request.remote == survivor.ip and request.webhook_id in events

        await receiver.wait_for(len(events), timeout=30, predicate=resent)
        from_victim = [r for r in receiver.requests if r.remote == victim.ip]
        from_survivor = [r for r in receiver.requests if resent(r)]

        # Every event of the doomed calls reached the target from the survivor, once.
        ids = [r.webhook_id for r in from_survivor]
        assert sorted(ids) == sorted(events)
        # What the victim had in flight came again under the same id and the same body,
        # and only after the victim's lease on it ran out.
        first_seen = {r.webhook_id: r for r in from_victim}
        assert first_seen and set(first_seen) <= set(ids)
        for request in from_survivor:
            original = first_seen.get(request.webhook_id)
            if original is not None:
                assert request.body == original.body
                assert request.received_at >= original.received_at + DELIVERY_LEASE_S - 1.0
                assert request.received_at >= killed_at
        # In order per call.
        order: dict[str, list[object]] = defaultdict(list)
        for request in from_survivor:
            order[request.data["call_sid"]].append(
                0 if request.event_type == "call.started" else request.data.get("sequence")
            )
        for sid in sids:
            assert order[sid] == sorted(order[sid], key=lambda p: -1 if p is None else p)
            assert order[sid][0] == 0

        # The survivor still serves the calls and what was stored of them.
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer test-api-token"}) as api:
            for sid in sids:
                async with api.get(f"{survivor.base_url}/v1/calls/{sid}/transcript") as response:
                    assert response.status == 200
                    assert (await response.json())["segments"]
