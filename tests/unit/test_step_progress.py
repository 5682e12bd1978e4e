"""Long training loops report steps done, rate and time left between their per-epoch lines."""

from __future__ import annotations

from engineforge.progress import StepProgress


def test_a_line_every_few_seconds_and_after_the_last_step(capsys):
    now = [0.0]
    steps = StepProgress("  fine-tuning", 10, every_s=10.0, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 4.0  # 4 s a step: a line at most every 10 s
        steps.step("loss 0.5")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "[engineforge]   fine-tuning 3/10 steps, 0.25 steps/s, 28 s left, loss 0.5",
        "[engineforge]   fine-tuning 6/10 steps, 0.25 steps/s, 16 s left, loss 0.5",
        "[engineforge]   fine-tuning 9/10 steps, 0.25 steps/s, 4 s left, loss 0.5",
        "[engineforge]   fine-tuning 10/10 steps, 0.25 steps/s, 0 s left, loss 0.5",
    ]


def test_minutes_left_read_as_minutes(capsys):
    now = [0.0]
    steps = StepProgress("train", 1000, every_s=0.0, clock=lambda: now[0])
    now[0] = 20.0
    steps.step()
    assert capsys.readouterr().err == "[engineforge] train 1/1000 steps, 0.05 steps/s, 333 min left\n"
