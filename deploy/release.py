"""Build the release an instance installs: the wheel and the pinned requirements, in one tarball.

Usage: python -m deploy.release [--out dist]   (``make release``)

The tarball holds ``videoproc-<version>-py3-none-any.whl``, ``requirements.lock`` (every
package ``requirements.txt`` resolves to, transitive ones included, each pinned) and
``RELEASE.json`` (version and commit). ``deploy/bootstrap.sh`` installs it into a virtualenv.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def release_version(root: Path = ROOT) -> str:
    """Return ``<project version>-<commit>`` (``-dirty`` when the work tree has changes)."""
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return f"{version}-{commit or 'nogit'}" + ("-dirty" if dirty.stdout.strip() else "")


def lock(requirements: Path, python: str = sys.executable) -> list[str]:
    """Resolve ``requirements`` as pip would on a clean machine; return ``name==version`` lines."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [python, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        subprocess.run([*command, "--report", str(report), "-r", str(requirements)], check=True)
        installs = json.loads(report.read_text())["install"]
    return sorted(f"{item['metadata']['name']}=={item['metadata']['version']}" for item in installs)


def build(out: Path, root: Path = ROOT) -> Path:
    """Build the wheel, lock the requirements and write ``out/videoproc-<version>.tar.gz``; return its path."""
    version = release_version(root)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp)
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels)]
        subprocess.run([*pip_wheel, str(root)], check=True)
        (wheel,) = wheels.glob("videoproc-*.whl")
        files = {
            wheel.name: wheel.read_bytes(),
            "requirements.lock": ("\n".join(lock(root / "requirements.txt")) + "\n").encode(),
            "RELEASE.json": json.dumps({"version": version, "wheel": wheel.name}).encode(),
        }
    path = out / f"videoproc-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def checksum(path: Path) -> str:
    """Return the release's SHA-256, as the bootstrap checks it before unpacking (``RELEASE_SHA256``)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Build the release and print its path."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    built = build(args.out)
    print(f"{built}\nsha256 {checksum(built)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
