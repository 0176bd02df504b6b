"""PostgreSQL's transients go through the retry policy (tenacity), against a real server.

A connection the server cannot take yet is tried again; one it refuses for good (an unknown
database) is not; a transaction PostgreSQL rolls back to break a deadlock runs again; a
server slot held by another request is waited for.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

psycopg = pytest.importorskip("psycopg")

from delib.archive import pgsession  # noqa: E402
from delib.errors import InputError  # noqa: E402


@pytest.fixture
def own_server(pg_server):
    """A server of this test's own, to stop and start (the session's is shared)."""
    from delib.testing.pgtemp import TempPostgres

    with TempPostgres(bin_dir=pg_server.bin) as server:
        yield server


def test_a_connect_while_the_server_restarts_waits_for_it(own_server):
    own_server.pause()
    threading.Timer(0.8, own_server.unpause).start()
    started = time.monotonic()
    conn = pgsession.connect(own_server.dsn)
    try:
        assert conn.execute("SELECT 1 AS one").fetchone()["one"] == 1
    finally:
        conn.close()
    assert time.monotonic() - started >= 0.7  # it did wait, through refused connects


def test_a_server_that_stays_down_is_one_error_after_every_attempt(own_server):
    own_server.pause()
    try:
        with pytest.raises(InputError) as raised:
            pgsession.connect(own_server.dsn)
    finally:
        own_server.unpause()
    said = str(raised.value)
    assert f"(after {pgsession.CONNECT_ATTEMPTS} attempts)" in said
    assert "that the server is running" in said


def test_an_unknown_database_is_not_tried_again(pg_server):
    dsn = pg_server.dsn.rsplit("/", 1)[0] + "/no_such_database"
    started = time.monotonic()
    with pytest.raises(InputError) as raised:
        pgsession.connect(dsn)
    assert "after" not in str(raised.value) and "no_such_database" in str(raised.value)
    assert time.monotonic() - started < pgsession.CONNECT_WAIT * 2  # no wait at all


def test_the_checkpointer_connection_waits_for_a_restart_too(own_server):
    own_server.pause()
    threading.Timer(0.8, own_server.unpause).start()

    async def go():
        conn = await pgsession.connect_async(own_server.dsn)
        try:
            return (await (await conn.execute("SELECT 2 AS two")).fetchone())["two"]
        finally:
            await conn.close()

    assert asyncio.run(go()) == 2


def test_a_transaction_rolled_back_for_a_deadlock_runs_again(pg):
    setup = psycopg.connect(pg, autocommit=True)
    setup.execute("CREATE TABLE pair (id int PRIMARY KEY, v int)")
    setup.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
    ours = pgsession.connect(pg)
    ours.execute("SET deadlock_timeout = '100ms'")  # we notice first, so we are the victim
    theirs = psycopg.connect(pg)
    theirs.execute("SET deadlock_timeout = '10s'")
    runs: list[int] = []
    holding = threading.Event()

    def other() -> None:
        with theirs.transaction():
            theirs.execute("UPDATE pair SET v = v + 10 WHERE id = 2")
            holding.set()
            theirs.execute("UPDATE pair SET v = v + 10 WHERE id = 1")  # waits for us
        theirs.commit()

    def work() -> None:
        runs.append(len(runs) + 1)
        ours.execute("UPDATE pair SET v = v + 1 WHERE id = 1")
        if len(runs) == 1:
            threading.Thread(target=other).start()
            holding.wait(5)
            time.sleep(0.3)  # by now they wait for row 1: row 2 closes the circle
        ours.execute("UPDATE pair SET v = v + 1 WHERE id = 2")

    pgsession.transaction(ours, work)
    assert runs == [1, 2]  # rolled back once (40P01), then committed
    values = {r[0]: r[1] for r in setup.execute("SELECT id, v FROM pair").fetchall()}
    assert values == {1: 11, 2: 11}  # each side's work applied once
    for conn in (setup, ours, theirs):
        conn.close()


def test_a_server_slot_held_elsewhere_is_waited_for(pg):
    slots = pgsession.Slots(pg)
    slot = slots.semaphore("http://127.0.0.1:9/v1", 1)
    inside: list[int] = []
    most = [0]

    async def request(number: int) -> None:
        async with slot:
            inside.append(number)
            most[0] = max(most[0], len(inside))
            await asyncio.sleep(0.1)
            inside.remove(number)

    async def go() -> None:
        await asyncio.gather(*(request(n) for n in range(3)))

    asyncio.run(go())
    assert most[0] == 1 and inside == []
