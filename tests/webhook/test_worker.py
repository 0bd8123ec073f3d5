"""The worker's turns: connections that yield after a request resume in the
order they yielded, which ``gevent.idle()`` does not do."""

from __future__ import annotations

from collections.abc import Callable

import gevent
import pytest

from webhook.worker import Turns


def served(wait: Callable[[], None], names: str = "ABCD", passes: int = 3) -> str:
    order: list[str] = []

    def connection(name: str) -> None:
        for _ in range(passes):
            order.append(name)  # one request served
            wait()

    gevent.joinall([gevent.spawn(connection, n) for n in names], raise_error=True)
    return "".join(order)


def test_turns_are_first_come_first_served() -> None:
    assert served(Turns().wait) == "ABCD" * 3


def test_gevent_idle_reverses_the_order_every_pass() -> None:
    # Why Turns exists: with libev's LIFO pending queue the first connection
    # of one pass is the last of the next, and waits two passes.
    assert served(gevent.idle) == "ABCD" + "DCBA" + "ADCB"


def test_ready_sockets_go_before_a_waiting_turn() -> None:
    turns = Turns()
    order: list[str] = []

    def busy() -> None:
        order.append("busy")
        turns.wait()
        order.append("busy again")

    def sleeper() -> None:
        gevent.sleep(0)  # a callback, like a socket that became readable
        order.append("ready")

    gevent.joinall([gevent.spawn(busy), gevent.spawn(sleeper)], raise_error=True)
    assert order == ["busy", "ready", "busy again"]


def test_a_killed_waiter_does_not_stop_the_others() -> None:
    turns = Turns()
    order: list[str] = []

    def connection(name: str) -> None:
        turns.wait()
        order.append(name)

    doomed = gevent.spawn(connection, "killed")
    others = [gevent.spawn(connection, n) for n in "AB"]
    gevent.sleep(0)  # all three are waiting for their turn
    doomed.kill()
    gevent.joinall(others, raise_error=True, timeout=5)
    assert order == ["A", "B"]
    assert doomed.dead and doomed.successful()


@pytest.mark.parametrize("passes", [1, 50])
def test_every_waiter_is_resumed(passes: int) -> None:
    assert sorted(served(Turns().wait, "ABCDEFGH", passes)) == sorted("ABCDEFGH" * passes)
