"""README.md stays true to the code."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from hubbub.server.config import settings_markdown
from tests.processes import running_server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_readme_settings_table_matches_code() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings:start -->\n") + len("<!-- settings:start -->\n")
    end = readme.index("<!-- settings:end -->")
    assert readme[start:end] == settings_markdown(), "regenerate with `hubbub settings`"


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines()]
    assert commands == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def fenced_block(name: str) -> str:
    """The code of the fenced block between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"<!-- {name}:start -->\n", 1)[1].split(f"<!-- {name}:end -->", 1)[0]
    return section.split("\n", 1)[1].rsplit("```", 1)[0]


def frame_pattern(shown: str) -> re.Pattern[str]:
    """A transcript line as a pattern: ``...`` stands for anything."""
    return re.compile(".*?".join(re.escape(part) for part in shown.split("...")))


async def read_frame(ws: ClientConnection) -> str:
    frame = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(frame, str)
    return frame


async def test_readme_examples_run_one_after_the_other(tmp_path: Path) -> None:
    """README's transcript, then its Python example, against one fresh
    server: every frame the transcript shows arrives, in that order, and the
    example prints what its comments say."""
    transcript = fenced_block("transcript").splitlines()
    command, connected, *frames = transcript
    assert command == "$ .venv/bin/python -m websockets ws://127.0.0.1:8765/"
    assert connected == "Connected to ws://127.0.0.1:8765/."
    example = fenced_block("example")
    assert 'open_client("ws://127.0.0.1:8765/")' in example

    data_dir = tmp_path / "data"
    async with running_server(data_dir) as server:
        url = await server.url()
        # What `python -m websockets` does: no subprotocol offered.
        async with connect(url, compression=None) as alice:
            for line in frames:
                direction, text = line[:2], line[2:]
                if direction == "> ":
                    await alice.send(text)
                else:
                    assert direction == "< ", line
                    received = await read_frame(alice)
                    assert frame_pattern(text).fullmatch(received), f"README shows\n{text}\nthe server sent\n{received}"

            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                example.replace("ws://127.0.0.1:8765/", url),
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, stderr.decode()
            expected = re.findall(r"# prints: (.*)$", example, re.M)
            assert stdout.decode().splitlines() == expected

            # What Alice's terminal shows meanwhile, as the README says.
            shown = re.search(r"Alice's terminal meanwhile shows.*?\((.*?)\)", README.read_text(), re.S)
            assert shown, "README says what Alice sees"
            wanted = re.findall(r"`([a-z.]+)`", shown.group(1))
            seen = [json.loads(await read_frame(alice))["type"] for _ in wanted]
            assert seen == wanted


def test_loadtest_examples_write_only_into_an_ignored_folder() -> None:
    """A --json report of the documented commands lands in loadtest/results/,
    which git ignores, never in a new folder at the repository's root."""
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "loadtest/results/" in ignored
    for doc in (README, ROOT / "loadtest" / "README.md"):
        for path in re.findall(r"--json\s+(\S+\.json)\b", doc.read_text()):
            assert path.startswith("loadtest/results/"), f"{doc.name}: --json {path}"
