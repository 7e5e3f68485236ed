import ctypes
import sys

import pytest

from qarad import cli, heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_return_large_blocks_sets_glibcs_threshold():
    try:
        ctypes.CDLL(None).mallopt
    except AttributeError:
        pytest.skip("no mallopt in this libc")
    assert heap.return_large_blocks() is True


def test_the_cli_sets_it_before_any_verb_runs(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(heap, "return_large_blocks", lambda: calls.append(1) or True)
    assert cli.main(["eval", "/nonexistent/run"]) == 2  # the verb fails; the setting came first
    assert calls == [1]
    assert "/nonexistent/run" in capsys.readouterr().err
