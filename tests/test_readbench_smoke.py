"""hubbub.loadtest.readbench runs end to end on a small directory and reports
what it measured: the listing's counts match what it stored."""

from __future__ import annotations

import re

from hubbub.loadtest import readbench


async def test_readbench_lists_every_conversation_with_its_unread_messages() -> None:
    line = await readbench.run("sqlite", "", "", conversations=6, per=10, listings=5, seed=3)
    found = re.match(
        r"sqlite: a user in 6 conversations of 10 messages, (\d+) unread \((\d+) mentions\): channel.list p50 ", line
    )
    assert found is not None, line
    unread, mentions = int(found[1]), int(found[2])
    assert 0 < unread < 60 and 0 < mentions <= unread
    assert "MessageLog.unread p50" in line and "MessageLog.heads p50" in line
