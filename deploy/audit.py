"""``make audit``: pip-audit on what an instance installs (the release's ``requirements.lock``).

Usage: python -m deploy.audit [--pip-audit PATH] [--lock FILE]

pip-audit asks an advisory database (PyPI's JSON API by default) about each pinned package.
Where that database can't be reached (a network with only a package index's mirror, like
this project's CI machines), every package comes back "could not be audited": the command
says so and exits 0, leaving docs/security.md's last report as it is. Otherwise it writes the
report there (``<!-- audit -->`` section) and exits 1 when a package has a known
vulnerability.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from deploy import release

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "security.md"
BEGIN, END = "<!-- audit -->", "<!-- /audit -->"
# pip-audit's own words when the advisory database doesn't answer at all (DNS, refused, timed out, TLS).
UNREACHABLE = ("ConnectionError", "Max retries exceeded", "NameResolutionError", "timed out", "SSLError")


def release_lock(folder: Path) -> Path:
    """Build the release (one machine's wheels are enough to name the pins) and return its ``requirements.lock``."""
    built = release.build(folder, machines=("x86_64",))
    with tarfile.open(built) as tar:
        member = tar.extractfile("requirements.lock")
        assert member is not None
        lock = folder / "requirements.lock"
        lock.write_bytes(member.read())
    return lock


def audit(pip_audit: str, lock: Path) -> dict[str, Any]:
    """Run pip-audit on ``lock`` (hashes required, no resolution of its own); return its JSON report."""
    argv = [pip_audit, "--requirement", str(lock), "--no-deps", "--disable-pip", "--require-hashes"]
    argv += ["--format", "json", "--progress-spinner", "off"]
    result = subprocess.run(argv, capture_output=True, text=True)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        if any(sign in result.stderr for sign in UNREACHABLE):  # no answer at all: say so, as for a mirror's 404s
            return {"dependencies": [], "unreachable": result.stderr.strip().splitlines()[-1][:300]}
        raise SystemExit(f"audit: pip-audit failed ({result.returncode}): {result.stderr[-1000:]}") from None
    return report


def section(report: dict[str, Any], lock: Path) -> str:
    """Return the report as docs/security.md's audit section."""
    packages = report["dependencies"]
    audited = [p for p in packages if "skip_reason" not in p]
    vulnerable = [p for p in audited if p.get("vulns")]
    lines = [
        BEGIN,
        "### The last audit (`make audit`)",
        "",
        f"{datetime.date.today().isoformat()}: pip-audit on the release's `requirements.lock` "
        f"({len(packages)} pinned packages, {len(audited)} audited): "
        + (f"**{len(vulnerable)} with known vulnerabilities**." if vulnerable else "no known vulnerabilities."),
        "",
    ]
    if vulnerable:
        lines += ["| Package | Version | Advisory | Fixed in |", "|---|---|---|---|"]
        for package in vulnerable:
            for vuln in package["vulns"]:
                fixed = ", ".join(vuln.get("fix_versions") or []) or "no fix yet"
                lines.append(f"| {package['name']} | {package['version']} | {vuln['id']} | {fixed} |")
        lines.append("")
    skipped = [p["name"] for p in packages if "skip_reason" in p]
    if skipped:
        lines += [f"Not audited (the database knew nothing of them): {', '.join(skipped)}.", ""]
    lines.append(END)
    return "\n".join(lines)


def write(text: str, page: Path = PAGE) -> None:
    """Replace the audit section of ``page`` (appended when it has none)."""
    current = page.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + text + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    page.write_text(current)


def main(argv: list[str] | None = None) -> int:
    """Audit the release's pins; write the report, or say why there is none."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pip-audit", default=str(ROOT / ".venv-audit" / "bin" / "pip-audit"))
    parser.add_argument("--lock", type=Path, help="audit this lock instead of building the release's")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="videoproc-audit-") as folder:
        lock = args.lock or release_lock(Path(folder))
        report = audit(args.pip_audit, lock)
    packages = report["dependencies"]
    if "unreachable" in report:
        print(f"audit: the advisory database can't be reached from here ({report['unreachable']}); nothing audited.")
        return 0
    if packages and all("skip_reason" in p for p in packages):
        print(
            f"audit: the advisory database can't be reached from here: none of the {len(packages)} pinned packages "
            f"could be audited ({packages[0]['skip_reason']}). docs/security.md keeps its last report."
        )
        return 0
    text = section(report, lock)
    write(text)
    print(text)
    return 1 if any(p.get("vulns") for p in packages) else 0


if __name__ == "__main__":
    sys.exit(main())
