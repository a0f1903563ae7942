"""The release: the wheels an instance installs with no package index, each pinned with its hashes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from deploy import audit, release


def test_lock_pins_every_wheel_with_its_hashes_and_marks_what_one_machine_needs() -> None:
    lines = release.lock(
        {
            "x86_64": {
                "PyYAML-6.0.2-cp311-cp311-manylinux_2_17_x86_64.whl": "aa",
                "six-1.16.0-py2.py3-none-any.whl": "cc",
                "only_x86-1.0-py3-none-any.whl": "dd",
            },
            "aarch64": {
                "pyyaml-6.0.2-cp311-cp311-manylinux_2_17_aarch64.whl": "bb",
                "six-1.16.0-py2.py3-none-any.whl": "cc",
            },
        }
    )
    assert lines == [
        "only-x86==1.0 ; platform_machine == 'x86_64' --hash=sha256:dd",
        "pyyaml==6.0.2 --hash=sha256:aa --hash=sha256:bb",
        "six==1.16.0 --hash=sha256:cc",
    ]


def test_two_machines_resolving_one_package_to_two_versions_is_refused() -> None:
    with pytest.raises(ValueError, match=r"six resolves to 1\.16\.0 and 1\.17\.0"):
        release.lock(
            {
                "x86_64": {"six-1.16.0-py2.py3-none-any.whl": "a"},
                "aarch64": {"six-1.17.0-py2.py3-none-any.whl": "b"},
            }
        )


def test_the_release_installs_with_no_index_on_both_machines(tmp_path: Path) -> None:
    built = release.build(tmp_path / "dist")
    unpacked = tmp_path / "release"
    with tarfile.open(built) as tar:
        tar.extractall(unpacked, filter="data")
    lock = unpacked / "requirements.lock"
    lines = lock.read_text().splitlines()
    names = {re.split(r"[=; ]", line)[0] for line in lines}
    assert {"celery", "flask", "kombu", "pycurl", "psycopg-binary", "boto3", "flower", "gunicorn"} <= names
    assert "async-timeout" in names, "redis needs it on Debian 12's Python (3.11.2), not on the tests' newer one"
    assert not {"moto", "honcho", "pytest"} & names, "the local stack's and the tests' tools stay off the instances"
    assert all(re.search(r"==[^ ]+ .*--hash=sha256:[0-9a-f]{64}", line) for line in lines), "every pin has its hashes"
    wheels = unpacked / "wheels"
    hashes = {digest for line in lines for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line)}
    assert hashes == {release.checksum(path) for path in wheels.iterdir()}, (
        "the lock names exactly the release's wheels"
    )
    assert json.loads((unpacked / "RELEASE.json").read_text())["machines"] == list(release.MACHINES)
    (wheel,) = unpacked.glob("videoproc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    drop_ins = ("videoproc-.service.d/hardening.conf", "videoproc-worker.service.d/jail.conf")
    assert {f"deploy/systemd/{name}" for name in (*drop_ins, "videoproc-web.service.d/jail.conf")} <= names, (
        "the units' sandbox ships with them"
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # this machine's wheel folder too
    for machine in release.MACHINES:
        report = tmp_path / f"{machine}.json"
        command = [*release.pip_as_instance(machine, "install"), "--quiet", "--dry-run", "--ignore-installed"]
        command += ["--target", str(tmp_path / machine), "--report", str(report)]
        command += ["--no-index", "--find-links", str(wheels), "--require-hashes", "-r", str(lock)]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        chosen = [item["download_info"]["url"].rsplit("/", 1)[-1] for item in json.loads(report.read_text())["install"]]
        assert len(chosen) == len(lines)
        compiled = [name for name in chosen if not name.endswith("-none-any.whl")]
        assert compiled and all(name.endswith(f"_{machine}.whl") for name in compiled), (machine, compiled)


def test_the_audit_report_names_each_advisory_and_what_was_not_audited(tmp_path: Path) -> None:
    report = {
        "dependencies": [
            {"name": "flask", "version": "3.1.3", "vulns": []},
            {"name": "pyjwt", "version": "2.0.0", "vulns": [{"id": "GHSA-xxxx", "fix_versions": ["2.4.0"]}]},
            {"name": "zxcvbn", "skip_reason": "Dependency not found on PyPI"},
        ]
    }
    text = audit.section(report, tmp_path / "requirements.lock")
    assert "3 pinned packages, 2 audited" in text and "**1 with known vulnerabilities**" in text
    assert (
        "| pyjwt | 2.0.0 | GHSA-xxxx | 2.4.0 |" in text
        and "Not audited (the database knew nothing of them): zxcvbn" in text
    )
    page = tmp_path / "security.md"
    page.write_text("# Security\n\nbefore\n")
    audit.write(text, page)
    audit.write(text.replace("GHSA-xxxx", "GHSA-yyyy"), page)  # a second run replaces the first
    written = page.read_text()
    assert written.count(audit.BEGIN) == 1 and "GHSA-yyyy" in written and "GHSA-xxxx" not in written
    assert written.startswith("# Security\n\nbefore\n")
