"""The holder's gate: a released backlog goes on oldest first, a few at a time, and a request
whose answer is slow gives its place up (`edge_hold._Gate`)."""

import random
import time
from collections.abc import Callable

import anyio
from fastapi.responses import Response

from rp9_pipelines.api.routes.edge_hold import SEND_AT_ONCE, SLOT_S, _Gate


async def _backlog(
    count: int, answer_s: Callable[[int], float], *, woken: list[int] | None = None
) -> tuple[list[float], int]:
    """`count` requests through one gate, request `i` arriving `i`-th (its ticket) and
    answered after `answer_s(i)` (its answer beginning then), all asking for their turn at
    once in the order `woken` (as a released backlog does); when each was sent on, relative to
    the first, and the most that were on their way at once."""
    gate = _Gate()
    tickets = [gate.ticket() for _ in range(count)]
    sent: list[float] = [0.0] * count
    in_flight = 0
    most = 0

    async def request(i: int) -> None:
        async def sending(answered: Callable[[], None]) -> Response:
            nonlocal in_flight, most
            sent[i] = time.monotonic()
            in_flight += 1
            most = max(most, in_flight)
            await anyio.sleep(answer_s(i))
            in_flight -= 1
            answered()
            return Response(status_code=200)

        assert (await gate.send(tickets[i], sending)).status_code == 200

    async with anyio.create_task_group() as group:
        for i in woken if woken is not None else range(count):
            group.start_soon(request, i)
    return [at - min(sent) for at in sent], most


def test_a_released_backlog_goes_on_oldest_first_a_few_at_a_time() -> None:
    # Woken in no particular order: sent on in the order they came.
    woken = list(range(5 * SEND_AT_ONCE))
    random.Random(7).shuffle(woken)
    sent, most = anyio.run(lambda: _backlog(len(woken), lambda i: 0.02, woken=woken))
    assert most == SEND_AT_ONCE
    assert sent == sorted(sent)
    # The first places go at once; the last requests wait for four rounds of answers.
    assert max(sent[:SEND_AT_ONCE]) < 0.015
    assert min(sent[-SEND_AT_ONCE:]) >= 4 * 0.02 - 0.005


def test_slow_answers_give_their_places_up_and_hold_nothing_behind_them() -> None:
    # A whole gate's worth of requests whose workflow answers at its end (seconds): the quick
    # ones behind them go on once the slow ones have held their places SLOT_S.
    slow = SEND_AT_ONCE

    def answer_s(i: int) -> float:
        return 2.0 if i < slow else 0.01

    started = time.monotonic()
    sent, _ = anyio.run(_backlog, slow + 10, answer_s)
    assert SLOT_S - 0.01 <= min(sent[slow:]) <= max(sent[slow:]) < SLOT_S + 0.2
    assert time.monotonic() - started < 2.5  # they ran side by side, none waited for another


def test_a_request_that_goes_while_it_waits_gives_its_turn_to_the_next() -> None:
    async def scenario() -> list[int]:
        gate = _Gate()
        order: list[int] = []
        release = anyio.Event()
        scopes: dict[int, anyio.CancelScope] = {}

        async def request(ticket: int) -> None:
            async def sending(answered: Callable[[], None]) -> Response:
                order.append(ticket)
                await release.wait()
                answered()
                return Response(status_code=200)

            with anyio.CancelScope() as scope:
                scopes[ticket] = scope
                await gate.send(ticket, sending)

        tickets = [gate.ticket() for _ in range(SEND_AT_ONCE + 2)]
        async with anyio.create_task_group() as group:
            for ticket in tickets:
                group.start_soon(request, ticket)
            await anyio.sleep(0.05)
            assert order == tickets[:SEND_AT_ONCE]  # the others wait their turn
            scopes[tickets[SEND_AT_ONCE]].cancel()  # the first waiting one's client leaves
            await anyio.sleep(0.05)
            release.set()
        return order

    order = anyio.run(scenario)
    assert order == [*range(SEND_AT_ONCE), SEND_AT_ONCE + 1]
