"""Benchmarks time pipelines in alternation (a student and its teacher), so a drifting machine slows both alike."""

import benchmarks.bench_sample as bench


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class FakePipe:
    """A pipeline whose call takes ``seconds`` on the fake clock, plus the clock's drift so far."""

    def __init__(self, name, seconds, clock, calls, drift):
        self.name, self.seconds, self.clock, self.calls, self.drift = name, seconds, clock, calls, drift

    def __call__(self, **kwargs):
        self.calls.append(self.name)
        slowdown = 1.0 + self.drift * sum(1 for name in self.calls if name == "teacher")
        self.clock.now += self.seconds * slowdown


def test_calls_alternate_and_the_ratio_survives_a_drifting_machine(monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(bench.time, "perf_counter", clock.perf_counter)
    pipes = {
        "teacher": FakePipe("teacher", 0.6, clock, calls, drift=0.1),
        "student": FakePipe("student", 0.15, clock, calls, drift=0.1),
    }
    seconds = bench.alternating_seconds_for_36(pipes, repeats=5)
    assert calls[:2] == ["teacher", "student"]  # the warm-ups
    assert calls[2:] == ["teacher", "student"] * 5
    # the machine slows 10 % per round; alternating, both medians are taken in the same round
    assert abs(seconds["teacher"] / seconds["student"] - 4.0) < 1e-9
    assert seconds["teacher"] > 0.6
