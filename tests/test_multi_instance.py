"""Two ``callbridge serve`` instances on one PostgreSQL, each in its own network namespace,
behind HAProxy (``config/haproxy.cfg``): calls spread over both, every webhook event arrives
once per target and in order, and either instance serves every call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from callbridge.simulate import stream_parameters
from callbridge.testing.twilio_simulator import (
    TwilioCallSimulator,
    new_account_sid,
    new_call_sid,
    post_status,
    post_voice,
)
from callbridge.testing.webhook_receiver import ReceivedRequest
from tests.bridge_harness import API_TOKEN, AUTH_TOKEN
from tests.cluster_harness import PG_ADMIN_URL, Cluster, running_cluster
from tests.test_bridge_e2e import track

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def place_call(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    index: int,
    *,
    speed: float = 0,
) -> tuple[str, list[str]]:
    """One call the way Twilio makes it, through the load balancer: the voice webhook, the
    media stream its TwiML asks for, then the `completed` status callback. Returns the call
    SID and the words spoken, in order."""
    lb = cluster.balancer
    call_sid, account_sid = new_call_sid(), new_account_sid()
    twiml = await post_voice(
        *(http, lb.public_url, lb.public_url, AUTH_TOKEN, call_sid, "+15550100", "+15550199"),
        account_sid=account_sid,
    )
    base = 400 + 50 * index
    audio = track(3000, [(300, [base, base + 10]), (1700, [base + 20])], index)
    sim = TwilioCallSimulator(
        lb.ws_url,
        auth_token=AUTH_TOKEN,
        public_url=lb.public_url,
        call_sid=call_sid,
        account_sid=account_sid,
        custom_parameters=stream_parameters(twiml),
        session=http,
    )
    await sim.run(inbound=audio, speed=speed)
    status = await post_status(
        http, lb.public_url, lb.public_url, AUTH_TOKEN, call_sid, "completed", duration_s=3
    )
    assert status == 204
    return call_sid, [f"tone{base}", f"tone{base + 10}", f"tone{base + 20}"]


def positions(requests: list[ReceivedRequest], call_sid: str) -> list[Any]:
    """The events of one call as they arrived: 0 for call.started, the sequence numbers,
    then "end"."""
    out: list[Any] = []
    for request in requests:
        if request.data.get("call_sid") != call_sid:
            continue
        kind = request.event_type
        out.append(
            0
            if kind == "call.started"
            else "end"
            if kind == "call.ended"
            else request.data["sequence"]
        )
    return out


async def stored_event_ids(cluster: Cluster) -> dict[str, str]:
    conn = await asyncpg.connect(PG_ADMIN_URL, server_settings={"search_path": cluster.schema})
    try:
        rows = await conn.fetch("SELECT event_id, call_sid FROM events")
    finally:
        await conn.close()
    return {row["event_id"]: row["call_sid"] for row in rows}


async def connections_by_address(cluster: Cluster) -> dict[str, int]:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        rows = await conn.fetch(
            "SELECT host(client_addr) AS address, count(*) FROM pg_stat_activity "
            "WHERE client_addr IS NOT NULL GROUP BY 1"
        )
    finally:
        await conn.close()
    return {row["address"]: row["count"] for row in rows}


async def test_calls_spread_over_two_instances_and_every_event_arrives_once_in_order(
    tmp_path: Path,
) -> None:
    pool_size = 3
    async with running_cluster(
        tmp_path, targets=2, extra_env={"CALLBRIDGE_DATABASE_POOL_SIZE": str(pool_size)}
    ) as cluster:
        calls = 8
        async with cluster.balancer.session() as http:
            placed = await asyncio.gather(*(place_call(cluster, http, i) for i in range(calls)))
        words = dict(placed)

        # Each call: call.started, two segments (one per utterance), call.ended.
        expected_events = calls * 4
        for receiver in cluster.receivers:
            await receiver.wait_for(expected_events, timeout=30)
        await asyncio.sleep(1.0)  # room for a duplicate to show up
        stored = await stored_event_ids(cluster)
        assert len(stored) == expected_events
        for receiver in cluster.receivers:
            ids = [request.webhook_id for request in receiver.requests]
            assert len(ids) == len(set(ids)) == expected_events  # once per target, by id
            assert set(ids) == set(stored)
            assert all(request.signature_valid for request in receiver.requests)
            for call_sid in words:
                assert positions(receiver.requests, call_sid) == [0, 1, 2, "end"]

        # Calls spread over both instances, each call on exactly one.
        held = [instance.calls_started() for instance in cluster.instances]
        assert all(held), [len(h) for h in held]
        assert set.union(*held) == set(words)
        assert sum(len(h) for h in held) == calls
        # The deliveries came from both instances' addresses.
        senders = {request.remote for request in cluster.receivers[0].requests}
        assert senders == {instance.ip for instance in cluster.instances}

        # Each instance reached PostgreSQL from its own address, within its pool.
        connections = await connections_by_address(cluster)
        for instance in cluster.instances:
            assert 1 <= connections.get(instance.ip, 0) <= pool_size, connections

        # Either instance serves every call, directly (no proxy in between).
        async with aiohttp.ClientSession(headers=AUTH) as api:
            for instance in cluster.instances:
                async with api.get(f"{instance.base_url}/v1/calls?limit=50") as response:
                    assert response.status == 200
                    listed = {call["call_sid"] for call in (await response.json())["calls"]}
                assert listed == set(words)
                for call_sid, spoken in words.items():
                    async with api.get(f"{instance.base_url}/v1/calls/{call_sid}") as response:
                        call = await response.json()
                    assert call["status"] == "ended", call
                    assert call["twilio_status"] == "completed", call
                    url = f"{instance.base_url}/v1/calls/{call_sid}/transcript"
                    async with api.get(url) as response:
                        segments = (await response.json())["segments"]
                    heard = " ".join(segment["text"] for segment in segments).split()
                    assert heard == spoken, (instance.name, call_sid, segments)


async def read_sse(
    response: aiohttp.ClientResponse, arrived: list[tuple[float, dict[str, str]]]
) -> None:
    """Parse an event stream into ``arrived`` ((arrival time, fields)) until it ends."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in fields:
                arrived.append((asyncio.get_running_loop().time(), fields))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = fields[name] + "\n" + value if name in fields else value


async def test_a_call_streams_live_from_the_instance_that_does_not_hold_it(
    tmp_path: Path,
) -> None:
    """… and Twilio's `completed` callback, reaching that other instance, ends the call
    where it lives (at the holder's next sweep: a third of the 1.5 s lease here)."""
    async with running_cluster(
        tmp_path,
        extra_env={
            "CALLBRIDGE_API_EVENTS_POLL_S": "0.2",
            "CALLBRIDGE_SERVER_STREAM_LEASE_S": "1.5",
        },
    ) as cluster:
        holder, other = cluster.instances
        lb = cluster.balancer
        call_sid, account_sid = new_call_sid(), new_account_sid()
        async with lb.session() as http:
            twiml = await post_voice(
                *(http, lb.public_url, lb.public_url, AUTH_TOKEN, call_sid, "+1555", "+1556"),
                account_sid=account_sid,
            )
        sim = TwilioCallSimulator(
            f"ws://{holder.ip}:{holder.port}/twilio/media",
            auth_token=AUTH_TOKEN,
            public_url=lb.public_url,
            call_sid=call_sid,
            account_sid=account_sid,
            custom_parameters=stream_parameters(twiml),
        )
        audio = track(4600, [(300, [500]), (1700, [510]), (3100, [520])], 0)
        await sim.connect()
        await sim.send_start(("inbound",))
        feeding = asyncio.create_task(sim.send_frames(audio, speed=1.0))
        arrived: list[tuple[float, dict[str, str]]] = []
        async with aiohttp.ClientSession(headers=AUTH) as api:
            for _ in range(100):  # the call is stored once its stream has started
                async with api.get(f"{other.base_url}/v1/calls/{call_sid}") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.05)
            url = f"{other.base_url}/v1/calls/{call_sid}/events"
            async with api.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
                assert response.status == 200
                assert response.content_type == "text/event-stream"
                reading = asyncio.create_task(read_sse(response, arrived))
                await feeding
                over_at = asyncio.get_running_loop().time()
                async with lb.session() as http:
                    status = await post_status(
                        *(http, other.base_url, lb.public_url, AUTH_TOKEN, call_sid),
                        duration_s=5,
                        account_sid=account_sid,
                    )
                assert status == 204
                assert await sim.wait_closed(5.0)  # the holder ended the call and its socket
                await asyncio.wait_for(reading, 20)  # ends by itself after call.ended
                await sim.close()

        assert holder.calls_started() == {call_sid} and not other.calls_started()
        kinds = [fields.get("event") for _, fields in arrived]
        assert kinds == ["call.started", *["transcript.committed"] * 3, "call.ended"], kinds
        # Live: the segments came from the other instance while the call was still talking.
        live = [at for at, fields in arrived if fields["event"] == "transcript.committed"]
        assert live[1] < over_at, (live, over_at)
        ended = json.loads(arrived[-1][1]["data"])["data"]
        assert ended["reason"] == "completed"
        assert arrived[-1][0] - over_at < 3.0
        # The stream carries the webhook events themselves: same ids, same bytes, same order.
        received = await cluster.receivers[0].wait_for(5, timeout=10)
        assert [fields["id"] for _, fields in arrived] == [r.webhook_id for r in received]
        assert [fields["data"].encode() for _, fields in arrived] == [r.body for r in received]
