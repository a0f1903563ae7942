"""The units' sandbox: every videoproc unit scores 3.0 or lower under ``systemd-analyze security``.

The units are installed as the bootstrap installs them (``deploy/units.py``: each unit and its
drop-ins, ``videoproc-.service.d/hardening.conf`` among them) into a scratch root, and scored
offline against it. That the worker still processes a video under them, with systemd running
them, is ``make instance-test``'s (``--systemd``; docs/security.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy import units

pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
SCORE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+)")
MOST = 3.0


def score(root: Path, unit: str) -> float:
    """Return ``systemd-analyze security --offline=yes``'s exposure of ``unit`` installed under ``root``."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", unit],
        capture_output=True,
        text=True,
    )
    match = SCORE.search(result.stdout + result.stderr)
    assert match, result.stdout[-2000:] + result.stderr[-2000:]
    return float(match[2])


def test_every_unit_scores_three_or_lower(tmp_path: Path) -> None:
    for role in units.ROLES:
        units.install(role, tmp_path)
    shutil.copy(units.UNIT_DIR / "videoproc-journal.service", tmp_path / "etc/systemd/system")  # deploy/agents.py's
    services = sorted(path.name for path in units.UNIT_DIR.glob("*.service"))
    assert len(services) == 9
    scores = {name: score(tmp_path, name) for name in services}
    print(scores)
    assert max(scores.values()) <= MOST, scores


def test_without_the_drop_ins_a_unit_is_unsafe(tmp_path: Path) -> None:
    """The score comes from the drop-ins: a unit installed without them is what systemd calls unsafe."""
    target = tmp_path / "etc/systemd/system"
    target.mkdir(parents=True)
    shutil.copy(units.UNIT_DIR / "videoproc-worker.service", target)
    assert score(tmp_path, "videoproc-worker.service") > 9.0


def test_the_jail_gets_what_it_needs_and_no_more() -> None:
    jail = (units.UNIT_DIR / "videoproc-worker.service.d" / "jail.conf").read_text()
    assert "RestrictNamespaces=user pid net ipc mnt uts cgroup" in jail
    assert "SystemCallFilter=@system-service @mount" in jail and "AF_NETLINK" in jail
    assert (units.UNIT_DIR / "videoproc-web.service.d" / "jail.conf").read_text() == jail
    assert (units.UNIT_DIR / "videoproc-optimize.service.d" / "jail.conf").read_text() == jail
    for name in ("proxy", "migrate", "sweeper", "flower", "journal"):
        assert not (units.UNIT_DIR / f"videoproc-{name}.service.d").exists(), f"{name} runs no FFmpeg"
