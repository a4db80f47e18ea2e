"""``benchmarks/bench_pull.py --quick`` keeps working: it runs against the real peers,
its JSON parses, and our delta pull received far fewer bytes than every full pull."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_pull.py"
TOOLS = {"ours-delta", "ours-delta+np", "ours-delta+verify", "ours-full", "oras-py", "skopeo", "oras-cli"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(ROOT / ".tools" / "bin"), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    work = tmp_path_factory.mktemp("bench")
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--rate-mbit", "40", "--repeat", "2",
         "--dir", str(work)],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, "--json prints exactly one line on stdout"
    result: dict[str, object] = json.loads(lines[0])
    assert not any(work.iterdir()), "the benchmark leaves its work directory clean"
    return result


def _rows(result: dict[str, object]) -> list[dict[str, object]]:
    rows = result["rows"]
    assert isinstance(rows, list)
    return rows


def test_every_tool_ran_on_every_case_and_link(quick: dict[str, object]) -> None:
    seen = {(r["case"], r["link"], r["tool"]) for r in _rows(quick)}
    assert seen == {(c, link, t) for c in ("bin2", "tree") for link in ("loopback", "40Mbit/s")
                    for t in TOOLS}
    for row in _rows(quick):
        assert isinstance(row["wall_s"], float) and row["wall_s"] > 0
        assert isinstance(row["peak_rss"], int) and row["peak_rss"] > 1 << 20
        # --repeat 2: loopback pulls and delta pulls twice (median), full pulls on the slow link once
        repeated = row["link"] == "loopback" or str(row["tool"]).startswith("ours-delta")
        assert len(row["walls"]) == (2 if repeated else 0), row  # type: ignore[arg-type]


def test_delta_pull_receives_far_fewer_bytes_than_full_pulls(quick: dict[str, object]) -> None:
    rows = _rows(quick)
    cases = {c["name"]: c for c in quick["cases"]}  # type: ignore[attr-defined]
    for row in rows:
        if not row["tool"].startswith("ours-delta"):
            continue
        assert str(row["detail"]).startswith(("delta bsdiff+zstd;", "delta tardiff;")), row
        full = [r for r in rows if (r["case"], r["link"]) == (row["case"], row["link"])
                and not r["tool"].startswith("ours-delta")]
        layer = cases[row["case"]]["layer_size"]
        for other in full:
            assert other["bytes_received"] >= layer, other  # a full pull fetches the whole layer
            assert row["bytes_received"] * 50 < other["bytes_received"], (row, other)
        # delta blob + manifests + the server's answer; nothing fetched twice
        assert row["bytes_received"] < cases[row["case"]]["delta_size"] + 8192, row


def test_ratios_and_table(quick: dict[str, object], tmp_path: Path) -> None:
    ratios = quick["ratios"]
    assert isinstance(ratios, list) and len(ratios) == 2 * 2 * (len(TOOLS) - 1)
    for r in ratios:  # the full pulls cost far more bytes; the other delta pulls about the same
        if r["vs"] == "ours-delta+np":
            assert r["bytes_x"] == 1.0, r
        elif r["vs"] == "ours-delta+verify":
            assert 1.0 <= r["bytes_x"] <= 1.5, r
        else:
            assert r["bytes_x"] > 50, r
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(quick))
    table = subprocess.run([sys.executable, str(SCRIPT), "--table-from", str(saved)],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert table.splitlines()[0].split()[:3] == ["case", "link", "tool"]
    assert sum(line.startswith(("bin2", "tree")) for line in table.splitlines()) == len(_rows(quick))


def test_verification_overhead_is_reported_and_within_the_target(quick: dict[str, object]) -> None:
    """--verify-key costs the signature manifest and its payload: 2 requests, ~1 KB."""
    trust = quick["trust"]
    assert isinstance(trust, list) and len(trust) == 4  # bin2 and tree, on both links
    for t in trust:
        assert t["extra_requests"] == 2, t
        assert 0 < t["extra_bytes"] <= 3000, t
        assert t["target_met"] is True and t["noise_s"] is not None, t
    verified = [r for r in _rows(quick) if r["tool"] == "ours-delta+verify"]
    plain = {(r["case"], r["link"]): r for r in _rows(quick) if r["tool"] == "ours-delta"}
    for row in verified:
        assert row["requests"] == plain[(row["case"], row["link"])]["requests"] + 2, row
