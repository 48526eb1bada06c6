"""Group commit under kill -9: with many clients submitting at once (their jobs share
transactions), every submit answered 200 is still in the store after the service dies.

The service and the simulator are real subprocesses (``tests/procs.py``); the clients are
``test_crash``'s submitters, several at once instead of one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.conftest import wait_until
from tests.procs import ServiceProcess, SimProcess, integrity_check, services_fixture, sim_fixture
from tests.test_crash import SEED, Submitter, check_acked_stored

CLIENTS = 8

sim = sim_fixture("--num-parallel", "2")
services = services_fixture()


def test_crash_concurrent_acked_submits_survive_sigkill(
    sim: SimProcess, services: Callable[..., ServiceProcess]
) -> None:
    rng = random.Random(SEED + 20)
    svc = services().start()
    # half of the clients send idempotency keys and resend unanswered submits with them
    clients = [Submitter(svc.url, SEED + 21 + i, 10_000, keys=i % 2 == 0) for i in range(CLIENTS)]

    def acked() -> set[str]:
        return set().union(*(c.acked_ids() for c in clients))

    for client in clients:
        client.start()
    try:
        for round_no in range(3):
            if round_no:
                svc.start()
            want = len(acked()) + rng.randint(40, 160)
            wait_until(lambda want=want: len(acked()) >= want, 30, what=f"{want} submits acked")
            svc.sigkill()
            check_acked_stored(svc.db_path, acked())  # the dead process can ack nothing more
        assert integrity_check(svc.db_path) == "ok"
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(15)
