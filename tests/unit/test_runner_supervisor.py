"""``startupmonkey run`` restarts children that exit, with backoff, and stops with the reason
when one keeps exiting (issue 23.7). The plane is a stand-in: this is the schedule alone; the
real nats-server killed under a real run is tests/integration/test_runner_supervision.py."""

from __future__ import annotations

from startupmonkey import runner


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Plane:
    """Children that are dead until restarted; ``kill`` makes one exit again."""

    def __init__(self) -> None:
        self.dead: dict[str, int] = {}
        self.restarted: list[str] = []

    def kill(self, name: str, code: int = -9) -> None:
        self.dead[name] = code

    def dead_children(self) -> list[str]:
        return sorted(self.dead)

    def exit_code(self, name: str) -> int | None:
        return self.dead.get(name)

    def restart(self, name: str) -> None:
        self.restarted.append(name)
        del self.dead[name]

    def log_tail(self, name: str) -> str:
        return f"last words of {name}"


def test_an_exited_child_is_restarted_after_a_growing_delay() -> None:
    clock, plane = Clock(), Plane()
    supervisor = runner.Supervisor(clock)
    plane.kill(runner.NATS_SERVER)

    lines = supervisor.check(plane)  # type: ignore[arg-type]
    assert lines == ["nats-server exited (exit code -9); restarting it in 1 s "
                     "(exit 1 of at most 5 in 10 minutes)"]
    assert supervisor.check(plane) == []  # type: ignore[arg-type]
    clock.now = 1.0
    assert supervisor.check(plane) == ["nats-server restarted"]  # type: ignore[arg-type]
    plane.kill(runner.NATS_SERVER, 1)
    clock.now = 2.0
    assert "restarting it in 2 s" in supervisor.check(plane)[0]  # type: ignore[arg-type]
    clock.now = 3.9
    assert supervisor.check(plane) == []  # type: ignore[arg-type]
    clock.now = 4.0
    assert supervisor.check(plane) == ["nats-server restarted"]  # type: ignore[arg-type]
    assert plane.restarted == ["nats-server", "nats-server"]
    assert [(e["event"], e.get("exitCode")) for e in supervisor.events] == [
        ("exited", -9), ("restarted", None), ("exited", 1), ("restarted", None)]
    assert supervisor.gave_up is None


def test_a_child_that_keeps_exiting_stops_the_run_with_the_reason() -> None:
    clock, plane = Clock(), Plane()
    supervisor = runner.Supervisor(clock)
    lines: list[str] = []
    for _ in range(runner.Supervisor.MAX_RESTARTS + 1):
        plane.kill("collector", 2)
        lines += supervisor.check(plane)  # type: ignore[arg-type]
        clock.now += 31
        lines += supervisor.check(plane)  # type: ignore[arg-type]

    assert supervisor.gave_up == ("collector exited 6 times within 10 minutes (exit code 2); "
                                  "stopping")
    assert lines[-1].endswith("its last log lines:\nlast words of collector")
    assert plane.restarted == ["collector"] * runner.Supervisor.MAX_RESTARTS


def test_exits_older_than_the_window_are_forgiven() -> None:
    clock, plane = Clock(), Plane()
    supervisor = runner.Supervisor(clock)
    for _ in range(runner.Supervisor.MAX_RESTARTS * 3):
        plane.kill("analyser")
        supervisor.check(plane)  # type: ignore[arg-type]
        clock.now += runner.Supervisor.WINDOW / 2
        supervisor.check(plane)  # type: ignore[arg-type]
    assert supervisor.gave_up is None
