"""hubbub-loadtest: the minimal client's frame parser, the delivery parser and
correctness bookkeeping, and a short real run against a Hubbub the tool starts."""

from __future__ import annotations

import json
import os
import struct
import time
from array import array
from pathlib import Path
from typing import Any

import pytest

from hubbub.loadtest import cli
from hubbub.loadtest.conn import Conn
from hubbub.loadtest.correctness import check
from hubbub.loadtest.parserbench import message_frame
from hubbub.loadtest.procstat import slope_per_minute
from hubbub.loadtest.report import REPORT_KEYS
from hubbub.loadtest.safety import UnsafeTarget, check_loopback
from hubbub.loadtest.scenarios import BENCHMARK_TABLE
from hubbub.loadtest.targets import HubbubTarget
from hubbub.loadtest.wsclient import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    Buffer,
    FrameReader,
    ProtocolError,
    client_frame,
    mask_payload,
    server_frame,
)

SHARED_REDIS = os.environ.get("HUBBUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Collector(FrameReader):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[bytes] = []
        self.controls: list[tuple[int, bytes]] = []

    def on_text(self, buf: Buffer, start: int, end: int) -> None:
        self.texts.append(bytes(buf[start:end]))

    def on_control(self, opcode: int, payload: bytes) -> None:
        self.controls.append((opcode, payload))


PAYLOADS = [b"", b"x", b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536, b"e" * 70000]


def test_frame_lengths_7_16_and_64_bit() -> None:
    encoded = [server_frame(p) for p in PAYLOADS]
    assert encoded[2][1] == 125
    assert encoded[3][1] == 126 and struct.unpack("!H", encoded[3][2:4])[0] == 126
    assert encoded[4][1] == 126 and struct.unpack("!H", encoded[4][2:4])[0] == 65535
    assert encoded[5][1] == 127 and struct.unpack("!Q", encoded[5][2:10])[0] == 65536
    reader = Collector()
    reader.feed(b"".join(encoded))
    assert reader.texts == PAYLOADS


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 10, 4096])
def test_frames_split_across_reads(chunk: int) -> None:
    payloads = [b"hello", b"y" * 300, b"z" * 66000, b"{}"]
    stream = b"".join(server_frame(p) for p in payloads) + server_frame(b"ping!", OP_PING)
    reader = Collector()
    for i in range(0, len(stream), chunk):
        reader.feed(stream[i : i + chunk])
    assert reader.texts == payloads
    assert reader.controls == [(OP_PING, b"ping!")]


def test_header_split_inside_extended_length() -> None:
    frame = server_frame(b"q" * 70000)
    reader = Collector()
    reader.feed(frame[:1])
    reader.feed(frame[1:5])  # inside the 8-byte length
    assert reader.texts == []
    reader.feed(frame[5:])
    assert reader.texts == [b"q" * 70000]


def test_fragmented_message_and_interleaved_ping() -> None:
    stream = (
        server_frame(b"par", OP_TEXT, fin=False)
        + server_frame(b"p", OP_PING)
        + server_frame(b"t-", OP_CONT, fin=False)
        + server_frame(b"two", OP_CONT, fin=True)
        + server_frame(b"\x00\x01", OP_BINARY)
    )
    reader = Collector()
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
    assert reader.texts == [b"part-two"]
    assert reader.controls == [(OP_PING, b"p"), (OP_BINARY, b"\x00\x01")]


def test_masked_server_frame_is_refused() -> None:
    with pytest.raises(ProtocolError):
        Collector().feed(client_frame(b"masked"))


def test_client_frames_are_masked() -> None:
    key = b"\x01\x02\x03\x04"
    for payload in PAYLOADS:
        frame = client_frame(payload, key=key)
        assert frame[1] & 0x80, "mask bit"
        header = 2 + (2 if 126 <= len(payload) < 65536 else 8 if len(payload) >= 65536 else 0)
        assert frame[header : header + 4] == key
        assert mask_payload(frame[header + 4 :], key) == payload


async def test_delivery_parser_counts_and_orders() -> None:
    latencies: array[int] = array("q")
    conn = Conn("127.0.0.1", 1, "/", HubbubTarget(["ws://127.0.0.1:1/"]), latencies)
    conn._handshake = None  # as after the opening handshake
    stream = b"".join(message_frame(9, seq) for seq in (1, 2, 4, 3, 3, 5))
    for i in range(0, len(stream), 50):
        conn.data_received(stream[i : i + 50])
    assert conn.deliveries == 6
    assert conn.last == {9: 5}
    assert conn.late == {9: 1} and conn.duplicates == {9: 1}
    assert not conn.missing[9]
    assert len(latencies) == 6 and all(0 <= v < 60 * 10**9 for v in latencies)
    result = check([(conn, [9])], {9: [1, 2, 3, 4, 5, 6]})
    assert (result.lost, result.duplicated, result.out_of_order) == (1, 1, 1)
    assert result.expected_deliveries == 6
    conn.abort()


def test_loopback_only() -> None:
    for url in ("ws://127.0.0.1:1/", "ws://127.9.9.9/", "ws://localhost:80/", "ws://[::1]:8765/"):
        assert check_loopback(url) == url
    for url in ("ws://10.0.0.1:8765/", "ws://192.168.1.2/", "ws://example.com/", "ws://0.0.0.0:1/"):
        with pytest.raises(UnsafeTarget):
            check_loopback(url)
    with pytest.raises(SystemExit):
        cli.main(["--url", "ws://10.1.2.3:8765/", "--duration", "1"])


def test_scenario_all_names_every_row_and_a_report_each() -> None:
    args = cli.build_parser().parse_args(["--scenario", "all", "--duration", "4"])
    scenarios = [cli.scenario_from_args(args, name) for name in BENCHMARK_TABLE]
    assert [s.name for s in scenarios] == ["a (modified)", "b (modified)", "c (modified)", "d (modified)"]
    assert all(s.duration == 4 for s in scenarios)
    assert cli.scenario_from_args(args, "c").subscribers == 5000
    assert cli.json_path(Path("out/run.json"), "c", several=True) == Path("out/run-c.json")
    assert cli.json_path(Path("out/run.json"), "c", several=False) == Path("out/run.json")


def test_smoke_run_against_hubbub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """300 subscribers in 3 rooms, 3 publishers at a fixed rate, against a Hubbub the tool starts."""
    report = tmp_path / "report.json"
    started = time.monotonic()
    code = cli.main(
        [
            "--subscribers",
            "300",
            "--rooms",
            "3",
            "--publishers",
            "3",
            "--rate",
            "60",
            "--duration",
            "3",
            "--history-reads",
            "5",
            "--json",
            str(report),
            "--no-plot",
            "--quiet",
        ]
    )
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 0, out
    document: dict[str, Any] = json.loads(report.read_text())
    assert {"tool", "format", "machine", "scenario", "results", "command", "started_at"} <= document.keys()
    (result,) = document["results"]
    assert set(REPORT_KEYS) <= result.keys()
    assert result["error"] is None
    run = result["run"]
    assert run["sent"] == run["acked"] == 180, run
    assert run["unacked_sends"] == 0 and not run["send_errors"]
    correctness = result["correctness"]
    assert correctness["ok"], correctness
    assert correctness["lost"] == correctness["duplicated"] == correctness["out_of_order"] == 0
    assert result["deliveries"] == run["acked"] * 100 == correctness["expected_deliveries"]
    assert len(correctness["per_conversation"]) == 3
    assert all(c["subscribers"] == 100 and c["lost"] == 0 for c in correctness["per_conversation"].values())
    assert result["connect"]["ready"] == 300 and result["connect"]["failures"] == 0
    assert result["latency_ms"]["count"] == result["deliveries"]
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    assert result["server"]["pids"] and result["server"]["rss_mb_end"] > 0
    assert result["generator"]["us_per_delivery"] > 0
    assert result["history_reads"]["count"] == 15 and not result["history_reads"]["errors"]
    assert "deliveries/s" in out and "hubbub" in out
    assert elapsed < 60
    # Every server the tool started is gone.
    for pid in result["server_pids"]:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def test_slope_is_least_squares_per_minute() -> None:
    assert slope_per_minute([(0.0, 10.0), (30.0, 11.0), (60.0, 12.0)]) == pytest.approx(2.0)
    assert slope_per_minute([(0.0, 5.0), (10.0, 7.0), (20.0, 5.0), (30.0, 7.0)]) == pytest.approx(2.4)
    assert slope_per_minute([(1.0, 3.0)]) is None
    assert slope_per_minute([(1.0, 3.0), (1.0, 4.0)]) is None


def test_soak_scenario_defaults_and_bounds() -> None:
    soak = cli.scenario_from_args(cli.build_parser().parse_args(["--scenario", "soak"]))
    assert (soak.subscribers, soak.instances, soak.duration) == (2000, 2, 1800.0)
    assert soak.soak and soak.rss_interval > 0 and 0 < soak.warmup < soak.duration
    assert 100 <= soak.rate <= 500, "a modest steady rate"
    assert soak.rooms % 2 == 1, "every room spans both instances"
    long = cli.scenario_from_args(cli.build_parser().parse_args(["--scenario", "soak", "--duration", "99999"]))
    assert long.duration == 3600, "a soak is bounded too"
    with pytest.raises(ValueError):
        cli.scenario_from_args(cli.build_parser().parse_args(["--scenario", "soak", "--duration", "30"]))


def test_soak_smoke_two_instances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The soak scenario, a few seconds and a few connections: two Hubbub instances the tool
    starts on the machine's Redis, RSS sampled per instance, slope and deliveries reported."""
    report = tmp_path / "soak.json"
    code = cli.main(
        [
            "--scenario",
            "soak",
            "--subscribers",
            "30",
            "--rooms",
            "3",
            "--publishers",
            "2",
            "--rate",
            "20",
            "--duration",
            "4",
            "--warmup",
            "1",
            "--rss-interval",
            "0.5",
            "--redis-url",
            SHARED_REDIS,
            "--json",
            str(report),
            "--no-plot",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    (result,) = json.loads(report.read_text())["results"]
    assert set(REPORT_KEYS) <= result.keys()
    assert result["error"] is None
    assert result["run"]["sent"] == result["run"]["acked"] == 80, result["run"]
    assert result["correctness"]["ok"], result["correctness"]
    assert result["deliveries"] == 80 * 10
    soak = result["soak"]
    assert soak["warmup_s"] == 1 and soak["interval_s"] == 0.5
    instances = soak["instances"]
    assert len(instances) == 2 and len(set(result["server_pids"])) == 2
    assert {one["pid"] for one in instances} == set(result["server_pids"])
    assert {one["url"] for one in instances} == set(result["urls"])
    assert sum(one["deliveries"] for one in instances) == result["deliveries"]
    assert all(one["deliveries"] > 0 for one in instances), "every room spans both instances"
    assert sum(one["connections"] for one in instances) == 32
    for one in instances:
        assert one["samples"] >= 6 and one["steady_samples"] < one["samples"]
        assert 0 < one["rss_mib_start"] <= one["rss_mib_max"] and one["rss_mib_end"] > 0
        assert isinstance(one["rss_slope_mib_per_min"], float)
        assert one["readings"][0][0] < 1 <= one["readings"][-1][0]
    assert "RSS slope, each server (MiB/min)" in out
    for pid in result["server_pids"]:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def test_changes_smoke_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--changes for 0.3 s a phase against a Hubbub the tool starts on SQLite: every
    phase acknowledged with no error and every reply checked, the rich page's reactions and
    reply counts seen, full message.changes passes, reaction counts as acknowledged."""
    report = tmp_path / "changes.json"
    started = time.monotonic()
    code = cli.main(
        [
            "--changes",
            "--store",
            "sqlite",
            "--members",
            "6",
            "--seed-messages",
            "30",
            "--per-conn-inflight",
            "3",
            "--page",
            "10",
            "--duration",
            "0.3",
            "--json",
            str(report),
            "--quiet",
        ]
    )
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 0, out
    document: dict[str, Any] = json.loads(report.read_text())
    assert document["mode"] == "changes" and document["options"]["store"] == "sqlite"
    (result,) = document["results"]
    assert result["error"] is None and result["errors"] == 0, result
    phases = result["phases"]
    names = {"send", "edit", "reaction", "history plain", "history rich", "thread.history", "changes"}
    assert set(phases) == names
    for name in names:
        assert phases[name]["acked"] > 0 and not phases[name]["errors"], (name, phases[name])
        assert phases[name]["latency_ms"]["count"] == phases[name]["acked"]
    assert phases["reaction"]["adds"] >= phases["reaction"]["removes"] > 0
    # A rich page carries 5 reactions of 3 users and a reply count on each of its messages.
    assert phases["history rich"]["reply_bytes_mean"] > phases["history plain"]["reply_bytes_mean"] + 10 * 100
    assert result["rich_over_plain"]["p50"] > 0
    correctness = result["correctness"]
    assert correctness["ok"] and not correctness["wrong"], correctness
    assert correctness["reactions_found"] == correctness["acked_adds_minus_removes"]
    changes = phases["changes"]
    assert changes["full_passes"] >= 1 and not changes["incomplete_passes"]
    assert changes["messages_in_conversation"] >= 30 + phases["send"]["acked"] + 10 * 3 + 1
    assert "reactions: server" in out and "ok" in out
    assert elapsed < 30
    for pid in result["server_pids"]:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
