"""An instance dies (SIGKILL) mid-call, with webhook deliveries in flight and calls live.

The surviving instance sends what the dead one left undelivered, under the same
webhook-ids, once the delivery leases expire; and it ends the dead instance's live calls
once their live-call leases expire: ``call.ended`` with ``reason`` ``bridge_lost``, degraded,
the stored segments kept and a summary. Twilio's status callback for such a call reaches the
survivor (through the load balancer) and its duration is used.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from callbridge.testing.twilio_simulator import TwilioCallSimulator, new_call_sid, post_status
from callbridge.testing.webhook_receiver import ReceivedRequest, Reply
from tests.bridge_harness import API_TOKEN, AUTH_TOKEN, STREAM_SECRET
from tests.cluster_harness import PG_ADMIN_URL, Cluster, Instance, running_cluster
from tests.test_bridge_e2e import track

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WEBHOOK_TIMEOUT_S = 1.0
DELIVERY_LEASE_S = WEBHOOK_TIMEOUT_S + 5.0  # what the app gives its dispatcher
STREAM_LEASE_S = 1.5  # the live-call lease: renewed every 0.5 s, swept every ~0.5 s
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


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


def position(request: ReceivedRequest) -> Any:
    kind = request.event_type
    if kind == "call.started":
        return 0
    return "end" if kind == "call.ended" else request.data["sequence"]


async def test_a_killed_instances_calls_and_deliveries_are_finished_by_the_survivor(
    tmp_path: Path,
) -> None:
    async with running_cluster(
        tmp_path,
        extra_env={
            "CALLBRIDGE_WEBHOOK_TIMEOUT_S": str(WEBHOOK_TIMEOUT_S),
            "CALLBRIDGE_WEBHOOK_BACKOFF_INITIAL_S": "0.05",
            "CALLBRIDGE_WEBHOOK_BACKOFF_MAX_S": "0.3",
            "CALLBRIDGE_SERVER_STREAM_LEASE_S": str(STREAM_LEASE_S),
        },
    ) as cluster:
        victim, survivor = cluster.instances
        receiver = cluster.receivers[0]
        # The victim's POSTs hang: it dies holding their leases.
        receiver.set_responder(
            lambda request: Reply(200, delay_s=60) if request.remote == victim.ip else Reply(200)
        )
        calls = [await start_call(victim, cluster, long_call(i)) for i in range(2)]
        doomed = [sim.call_sid for sim, _ in calls]
        # A call on the survivor, talking through the whole story, is not disturbed.
        bystander, feeding_bystander = await start_call(survivor, cluster, long_call(5))

        # Wait until each doomed call has a stored segment and the victim has POSTs in flight.
        for _ in range(200):
            rows = await stored(
                cluster,
                "SELECT call_sid, count(*) FROM segments WHERE call_sid = ANY($1) GROUP BY 1",
                doomed,
            )
            # ...a POST of theirs sent just now, so that it is surely in flight when the victim
            # dies (an earlier one may have timed out and been released for a retry).
            in_flight = any(
                r.remote == victim.ip
                and r.data.get("call_sid") in doomed
                and time.time() - r.received_at < WEBHOOK_TIMEOUT_S / 2
                for r in receiver.requests
            )
            if len(rows) == len(doomed) and in_flight:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the victim's calls never got going")
        victim.kill()
        killed_at = time.time()
        for sim, feeding in calls:
            feeding.cancel()
            await sim.close(abort=True)
        stored_before_kill = {
            row["call_sid"]: row["count"]
            for row in await stored(
                cluster,
                "SELECT call_sid, count(*) FROM segments WHERE call_sid = ANY($1) GROUP BY 1",
                doomed,
            )
        }

        # Twilio reports the first call over; the load balancer takes it to the survivor.
        lb = cluster.balancer
        async with lb.session() as http:
            status = await post_status(
                http, lb.public_url, lb.public_url, AUTH_TOKEN, doomed[0], duration_s=9
            )
        assert status == 204

        # Both doomed calls end, from the survivor, within the lease and a sweep or two.
        async with aiohttp.ClientSession(headers=AUTH) as api:
            ended: dict[str, dict[str, Any]] = {}
            for _ in range(200):
                for sid in doomed:
                    async with api.get(f"{survivor.base_url}/v1/calls/{sid}") as response:
                        call = await response.json()
                    if call["status"] == "ended":
                        ended.setdefault(sid, call | {"seen_at": time.time()})
                if len(ended) == len(doomed):
                    break
                await asyncio.sleep(0.05)
            assert set(ended) == set(doomed), ended
            for sid in doomed:
                assert ended[sid]["seen_at"] - killed_at < STREAM_LEASE_S + 3.0
                assert ended[sid]["reason"] == "bridge_lost"
                assert ended[sid]["degraded"].startswith("bridge_lost: ")
                # What was stored is kept, nothing added or lost.
                assert ended[sid]["segments"] == stored_before_kill[sid]
            assert ended[doomed[0]]["twilio_status"] == "completed"
            assert ended[doomed[0]]["duration_ms"] == 9000  # Twilio's CallDuration
            summaries = {}
            for sid in doomed:
                async with api.get(f"{survivor.base_url}/v1/calls/{sid}/summary") as response:
                    assert response.status == 200
                    summaries[sid] = await response.json()
                async with api.get(f"{survivor.base_url}/v1/calls/{sid}/transcript") as response:
                    segments = (await response.json())["segments"]
                assert len(segments) == stored_before_kill[sid]
                assert summaries[sid]["reason"] == "bridge_lost"
                assert summaries[sid]["segments"] == len(segments)
                assert len(summaries[sid]["transcript"].splitlines()) == len(segments)
                assert summaries[sid]["speakers"]["caller"]["talk_ms"] > 0

        events = {
            row["event_id"]: row["call_sid"]
            for row in await stored(
                cluster, "SELECT event_id, call_sid FROM events WHERE call_sid = ANY($1)", doomed
            )
        }

        def resent(request: ReceivedRequest) -> bool:
            return request.remote == survivor.ip and request.webhook_id in events

        await receiver.wait_for(len(events), timeout=30, predicate=resent)
        # (Any instance's dispatcher claims any due delivery, so the victim may also have
        # sent events of the survivor's own call; those are not this story.)
        from_victim = [
            r for r in receiver.requests if r.remote == victim.ip and r.webhook_id in events
        ]
        from_survivor = [r for r in receiver.requests if resent(r)]

        # Every event of the doomed calls reached the target from the survivor, once, its
        # call.ended included: the survivor's own, with the summary it made.
        ids = [r.webhook_id for r in from_survivor]
        assert sorted(ids) == sorted(events)
        endings = [r for r in from_survivor if r.event_type == "call.ended"]
        assert sorted(r.data["call_sid"] for r in endings) == sorted(doomed)
        for request in endings:
            assert request.data["reason"] == "bridge_lost"
            assert request.data["summary"] == summaries[request.data["call_sid"]]
        # What the victim sent came again under the same id and the same body. What it
        # still had in flight when it died came only after its lease ran out; an attempt
        # that had timed out before was released for a retry, which either may take.
        last_sent = {r.webhook_id: r for r in from_victim}
        assert last_sent and set(last_sent) <= set(ids)
        held_at_death = {
            webhook_id
            for webhook_id, r in last_sent.items()
            if r.received_at + WEBHOOK_TIMEOUT_S > killed_at
        }
        assert held_at_death
        for request in from_survivor:
            original = last_sent.get(request.webhook_id)
            if original is not None:
                assert request.body == original.body
            if request.webhook_id in held_at_death:
                assert request.received_at >= original.received_at + DELIVERY_LEASE_S - 1.0
                assert request.received_at >= killed_at
        # The victim completed no delivery (its POSTs hung), so the survivor sent each call's
        # every event: all of them, in order, ending with call.ended.
        order: dict[str, list[Any]] = defaultdict(list)
        for request in from_survivor:
            order[request.data["call_sid"]].append(position(request))
        for sid in doomed:
            assert order[sid] == [0, *range(1, stored_before_kill[sid] + 1), "end"]

        # The survivor's own call went on: still live, then ends normally.
        async with aiohttp.ClientSession(headers=AUTH) as api:
            url = f"{survivor.base_url}/v1/calls/{bystander.call_sid}"
            async with api.get(url) as response:
                assert (await response.json())["status"] == "live"
        feeding_bystander.cancel()
        await bystander.send_stop()
        await bystander.close()
        lost_log = survivor.log_events("lost_calls.call_ended")
        assert sorted(e["call_sid"] for e in lost_log) == sorted(doomed)
        assert victim.proc is not None
        assert all(f":{victim.proc.pid}:" in e["previous_owner"] for e in lost_log)
