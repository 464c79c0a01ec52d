"""Progress: the one way long-running commands show their stages (plain and live)."""

from __future__ import annotations

import io
import time

import pytest

from repo_manager.progress import Progress
from tests.eventually import eventually


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_give_each_stage_a_start_a_still_running_and_an_end_line() -> None:
    lines: list[str] = []
    progress = Progress(emit=lines.append, tick=0.05)
    started = time.monotonic()
    with progress.stage("export"):
        # Until the still-running line came, however slowly a loaded machine runs it.
        assert eventually(
            lambda: any(line.startswith("export: still running, ") for line in lines), 30
        )
    took = time.monotonic() - started
    assert lines[0] == "export ..."
    assert any(line.startswith("export: still running, ") for line in lines[1:-1])
    assert lines[-1].startswith("export done in ") and lines[-1].endswith(" s")
    assert 0.05 <= float(lines[-1].split()[-2]) <= took + 0.01  # the time the stage took


def test_a_failed_stage_says_so_with_its_time_and_the_error_propagates() -> None:
    lines: list[str] = []
    with pytest.raises(RuntimeError), Progress(emit=lines.append).stage("golden set"):
        raise RuntimeError("boom")
    assert lines[-1].startswith("golden set failed after ")


def test_on_a_terminal_the_stage_line_is_redrawn_in_place_and_its_end_line_stays() -> None:
    terminal = Terminal()
    progress = Progress.for_stderr(terminal, verbose=False, write=lambda _: None)
    assert progress.live is terminal
    progress.redraw = 0.1
    with progress.stage("load + warm-up"):
        assert eventually(lambda: "load + warm-up ... 1 s" in terminal.getvalue(), 30)
        progress("a detail line")  # not shown without --verbose
    text = terminal.getvalue()
    assert text.count("\r\x1b[K") >= 2  # redrawn, not appended
    assert "load + warm-up ... 0 s" in text and "load + warm-up ... 1 s" in text
    assert "a detail line" not in text
    assert text.splitlines()[-1].split("\x1b[K")[-1].startswith("load + warm-up done in ")


def test_nothing_is_shown_off_a_terminal_without_verbose() -> None:
    stream = io.StringIO()
    written: list[str] = []
    progress = Progress.for_stderr(stream, verbose=False, write=written.append)
    with progress.stage("export"):
        progress("detail")
    assert not progress.shown and written == [] and stream.getvalue() == ""


def test_verbose_off_a_terminal_gives_plain_stage_and_detail_lines() -> None:
    written: list[str] = []
    progress = Progress.for_stderr(io.StringIO(), verbose=True, write=written.append)
    with progress.stage("upload"):
        progress("copying 3 files")
    assert written[0] == "upload ..." and written[1] == "copying 3 files"
    assert written[2].startswith("upload done in ")
