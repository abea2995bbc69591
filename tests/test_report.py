"""The CLI's reporter when its output goes to a file instead of a terminal (nohup, CI, a job log)."""

import io

import pytest
from rich.console import Console

from edgekit.report import RichReporter


def _logged(log_interval: float, advances: int) -> list[str]:
    log = io.StringIO()
    reporter = RichReporter(log_interval=log_interval, err=Console(file=log, width=200))
    assert not reporter.err.is_terminal
    with reporter.progress("epoch 1/2", total=advances) as bar:
        for step in range(advances):
            bar.advance(loss=1.0 / (step + 1))
    return log.getvalue().splitlines()


def test_a_redirected_progress_writes_plain_lines_with_count_status_and_time_left():
    lines = _logged(log_interval=0, advances=3)
    assert len(lines) == 4, lines  # one per advance (interval 0), then the closing line
    assert lines[0].startswith("epoch 1/2 1/3  0:00:00  ~0:00:00 left  loss 1"), lines[0]
    assert lines[-1].startswith("epoch 1/2 3/3  0:00:00  loss 0.3333"), lines[-1]
    assert "left" not in lines[-1] and "━" not in "".join(lines)


def test_a_redirected_progress_is_rate_limited_to_its_interval():
    lines = _logged(log_interval=3600, advances=50)
    assert lines == [lines[-1]] and lines[0].startswith("epoch 1/2 50/50 "), lines


def test_a_redirected_progress_cut_off_says_how_far_it_got():
    log = io.StringIO()
    reporter = RichReporter(log_interval=3600, err=Console(file=log, width=200))
    with pytest.raises(KeyboardInterrupt):
        with reporter.progress("epoch 3/8", total=10) as bar:
            for step in range(10):
                if step == 4:
                    raise KeyboardInterrupt
                bar.advance(loss=0.5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 3/8 4/10  0:00:00  ~0:00:00 left  loss 0.5"), lines
