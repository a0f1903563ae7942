"""Build the release an instance installs: the wheel and the pinned requirements, in one tarball.

Usage: python -m deploy.release [--out dist]   (``make release``)

The tarball holds ``videoproc-<version>-py3-none-any.whl``, ``wheels/`` (every package
``requirements.txt`` resolves to, transitive ones included, as wheels for the instances'
platforms: CPython 3.11 on manylinux, x86_64 and aarch64), ``requirements.lock`` (each of those
pinned, with the SHA-256 of every wheel of it) and ``RELEASE.json`` (version and commit).
``deploy/bootstrap.sh`` installs it into a virtualenv with ``--no-index --require-hashes``: a
boot needs no package index but Debian's.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The instances: Debian 12 (glibc 2.36) and its own python3.11 (3.11.2), on Intel/AMD or Graviton.
MACHINES = ("x86_64", "aarch64")
GLIBC = 36
PYTHON = "3.11.2"
# pip evaluates environment markers for the Python that runs it, whatever --platform and
# --python-version say (redis needs async-timeout below 3.11.3 only): this runs pip with the
# instance's markers instead.
PIP_AS_INSTANCE = """
import json, sys
from pip._vendor.packaging import markers
instance = {**markers.default_environment(), **json.loads(sys.argv.pop(1))}
markers.default_environment = lambda: dict(instance)
from pip._internal.cli.main import main
sys.exit(main())
"""
WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def release_version(root: Path = ROOT) -> str:
    """Return ``<project version>-<commit>`` (``-dirty`` when the work tree has changes)."""
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return f"{version}-{commit or 'nogit'}" + ("-dirty" if dirty.stdout.strip() else "")


def platforms(machine: str) -> list[str]:
    """Return the wheel platform tags a Debian 12 instance on ``machine`` accepts (manylinux up to glibc 2.36)."""
    return [f"manylinux2014_{machine}", *(f"manylinux_2_{minor}_{machine}" for minor in range(17, GLIBC + 1))]


def pip_as_instance(machine: str, command: str) -> list[str]:
    """Return the argv of a pip ``command`` that selects wheels and evaluates markers as an instance on ``machine``."""
    instance = {
        "python_version": PYTHON.rsplit(".", 1)[0],
        "python_full_version": PYTHON,
        "implementation_name": "cpython",
        "implementation_version": PYTHON,
        "platform_python_implementation": "CPython",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
    }
    argv = [sys.executable, "-c", PIP_AS_INSTANCE, json.dumps(instance), command, "--only-binary=:all:"]
    argv += ["--python-version", PYTHON, "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for tag in platforms(machine):
        argv += ["--platform", tag]
    return argv


def download(requirements: Path, machine: str, dest: Path) -> dict[str, str]:
    """Download into ``dest``, as wheels only, what ``requirements`` resolves to for Debian 12's Python on ``machine``.

    Return ``{file name: sha256}`` of every wheel.
    """
    command = [*pip_as_instance(machine, "download"), "--quiet", "--dest", str(dest)]
    subprocess.run([*command, "-r", str(requirements)], check=True)
    return {path.name: checksum(path) for path in sorted(dest.glob("*.whl"))}


def lock(wheels: dict[str, dict[str, str]]) -> list[str]:
    """Return ``requirements.lock``'s lines: ``name==version`` with every wheel's hash, per machine when it differs.

    ``wheels`` maps each machine to ``{file name: sha256}`` of the wheels it installs. A package
    that only one machine needs carries a ``platform_machine`` marker; two machines resolving
    one package to two versions is an error (the lock would not be one release).
    """
    pins: dict[str, tuple[str, set[str], set[str]]] = {}
    for machine, files in wheels.items():
        for filename, digest in files.items():
            match = WHEEL.match(filename)
            if not match:
                raise ValueError(f"{filename} is not a wheel's name")
            name = re.sub(r"[-_.]+", "-", match["name"]).lower()
            version, hashes, machines = pins.setdefault(name, (match["version"], set(), set()))
            if version != match["version"]:
                raise ValueError(f"{name} resolves to {version} and {match['version']} on different machines")
            hashes.add(digest)
            machines.add(machine)
    lines = []
    for name, (version, hashes, machines) in sorted(pins.items()):
        marker = ""
        if machines != set(wheels):
            marker = " ; " + " or ".join(f"platform_machine == '{m}'" for m in sorted(machines))
        lines.append(f"{name}=={version}{marker}" + "".join(f" --hash=sha256:{h}" for h in sorted(hashes)))
    return lines


def build(out: Path, root: Path = ROOT, machines: tuple[str, ...] = MACHINES) -> Path:
    """Build the wheel, gather and lock the dependencies' wheels and write ``out/videoproc-<version>.tar.gz``.

    Return its path. ``machines`` narrows the platforms (a test that boots one machine).
    """
    version = release_version(root)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        own, deps = Path(tmp) / "own", Path(tmp) / "wheels"
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(own)]
        subprocess.run([*pip_wheel, str(root)], check=True)
        (wheel,) = own.glob("videoproc-*.whl")
        wheels = {machine: download(root / "requirements.txt", machine, deps / machine) for machine in machines}
        files = {
            wheel.name: wheel.read_bytes(),
            "requirements.lock": ("\n".join(lock(wheels)) + "\n").encode(),
            "RELEASE.json": json.dumps({"version": version, "wheel": wheel.name, "machines": machines}).encode(),
        }
        path = out / f"videoproc-{version}.tar.gz"
        # Wheels are zip files already: compressing them again costs time and saves nothing.
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
            added: set[str] = set()  # a pure wheel serves every machine: once is enough
            for machine, names in wheels.items():
                for name in sorted(set(names) - added):
                    info = tar.gettarinfo(deps / machine / name, arcname=f"wheels/{name}")
                    info.mode, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, "", ""
                    with (deps / machine / name).open("rb") as f:
                        tar.addfile(info, f)
                    added.add(name)
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
