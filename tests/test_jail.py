"""The jail of every media process, proved from inside: hostile commands through ``python -m media.jail``.

Each test runs what an attacker with code execution inside FFmpeg would run (a Python
script, Debian's own python3 being in the jail's read-only ``/usr``) with secrets in the
parent's environment, and asserts on what it could reach.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from media import jail, runner
from media.probe import probe
from media.sandbox import Resources, Sandbox
from tests.conftest import ROOT


def _jail_works() -> bool:
    """Whether a jail can be made here (bubblewrap installed and namespaces allowed)."""
    try:
        jail.check()
    except jail.JailUnavailable:
        return False
    return True


pytestmark = [
    pytest.mark.system,  # bubblewrap and FFmpeg
    pytest.mark.skipif(not _jail_works(), reason="bubblewrap can't make namespaces here"),
]
SECRETS = {"SECRET_KEY": "jail-test-secret-key-0123456789", "DATABASE_URL": "postgresql://owner:hunter2@db/videoproc"}


def in_jail(scratch: Path, script: str, *read: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python) through ``python -m media.jail`` with secrets in the parent's environment."""
    (scratch / "evil.py").write_text(script)
    argv = [sys.executable, "-m", "media.jail", "--scratch", str(scratch)]
    for path in read:
        argv += ["--read", path]
    argv += ["--", "/usr/bin/python3", str(scratch / "evil.py")]
    env = {**os.environ, **SECRETS}
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_no_secret_is_readable_anywhere_inside(tmp_path: Path) -> None:
    (tmp_path / "etc-videoproc").mkdir()
    result = in_jail(
        tmp_path,
        """
import os, signal
def late(*_):
    raise TimeoutError
signal.signal(signal.SIGALRM, late)
seen = [repr(dict(os.environ))]
for root, dirs, files in os.walk("/", onerror=lambda e: None):
    if root.startswith(("/usr", "/sys")):
        dirs[:] = []
        continue
    for name in files:
        path = os.path.join(root, name)
        if os.path.islink(path) or not os.path.isfile(path):  # no pipes, devices or sockets: they block
            continue
        try:
            signal.alarm(2)
            with open(path, "rb") as f:
                seen.append(f.read(1 << 20).decode("latin-1"))
        except (OSError, TimeoutError):
            pass
        finally:
            signal.alarm(0)
with open("seen", "w") as f:  # too much for a pipe: into the scratch directory, read from outside
    f.write("\\n".join(seen))
print("searched", len(seen))
""",
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split("searched")[-1]) > 20, "it read the jail's files, its /proc included"
    seen = (tmp_path / "seen").read_text()
    for value in SECRETS.values():
        assert value not in seen, "a secret is readable inside the jail"


def test_no_connection_to_the_database_redis_aws_or_the_metadata_service(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    moto = base_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[-1]
    targets = {"postgres": ("127.0.0.1", 5432), "redis": ("127.0.0.1", 6379), "moto": ("127.0.0.1", int(moto))}
    targets["metadata"] = ("169.254.169.254", 80)
    for host, port in list(targets.values())[:3]:  # each answers from outside: the walls are what stop it
        socket.create_connection((host, port), timeout=5).close()
    result = in_jail(
        tmp_path,
        f"""
import json, socket
results = {{}}
for name, (host, port) in {json.dumps(targets)}.items():
    try:
        socket.create_connection((host, port), timeout=3).close()
        results[name] = "connected"
    except OSError as exc:
        results[name] = type(exc).__name__
print(json.dumps(results))
""",
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert set(results) == set(targets) and "connected" not in results.values(), results


def test_no_write_outside_the_scratch_directory(tmp_path: Path) -> None:
    scratch, outside = tmp_path / "scratch", tmp_path / "outside"
    scratch.mkdir()
    outside.mkdir()
    result = in_jail(
        scratch,
        f"""
import os
for path in ["/usr/evil", "/etc/evil", "/evil", {str(outside / "evil")!r}, "/opt/videoproc/evil", "/proc/sys/evil"]:
    try:
        with open(path, "w") as f:
            f.write("x")
        print("wrote", path)
    except OSError as exc:
        print("refused", path, type(exc).__name__)
with open("mine", "w") as f:
    f.write("ok")
""",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" not in result.stdout and result.stdout.count("refused") == 6, result.stdout
    assert list(outside.iterdir()) == [] and (scratch / "mine").read_text() == "ok"


def test_no_capabilities_no_new_privileges_and_only_the_jails_processes(tmp_path: Path) -> None:
    result = in_jail(
        tmp_path,
        f"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
data = (Data * 2)()
assert libc.capget(ctypes.byref(Header(0x20080522, 0)), data) == 0  # _LINUX_CAPABILITY_VERSION_3
names = ("effective", "permitted", "inheritable")
sets = {{name: getattr(data[0], name) | getattr(data[1], name) << 32 for name in names}}
sets["bounding"] = sum(1 << cap for cap in range(64) if libc.prctl(23, cap, 0, 0, 0) == 1)  # PR_CAPBSET_READ
sets["ambient"] = sum(1 << cap for cap in range(64) if libc.prctl(47, 1, cap, 0, 0) == 1)  # PR_CAP_AMBIENT_IS_SET
sets["no_new_privs"] = libc.prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
alive = []
for pid in [*range(2, 4096), {os.getpid()}]:  # the test's own PID among them, as numbered outside
    try:
        os.kill(pid, 0)
        alive.append(pid)
    except ProcessLookupError:
        pass
sets.update(pid=os.getpid(), others=alive, proc=os.path.exists("/proc"))
sets["nested_userns"] = libc.unshare(0x10000000)  # CLONE_NEWUSER: the kernel's widest door, shut
print(json.dumps(sets))
""",
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert {k: seen[k] for k in ("effective", "permitted", "inheritable", "bounding", "ambient")} == dict.fromkeys(
        ("effective", "permitted", "inheritable", "bounding", "ambient"), 0
    )
    assert seen["no_new_privs"] == 1
    assert (seen["pid"], seen["others"]) == (1, []), "the jailed command is PID 1, alone: no other process exists"
    assert seen["proc"] is False, "no /proc at all: nothing of the host's or its own to read"
    assert seen["nested_userns"] == -1, "no user namespace inside the jail (--disable-userns)"


def test_ffmpeg_still_encodes_in_the_jail(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "media.jail", "--scratch", str(tmp_path), "--", "ffmpeg", "-hide_banner"]
    argv += ["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=d=2:s=320x240:r=25", "-c:v", "libx264", "out.mp4"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    info = probe(str(tmp_path / "out.mp4"), Sandbox(jail=True))
    assert (info.width, info.height) == (320, 240) and info.duration == pytest.approx(2.0, abs=0.1)


@pytest.fixture
def unix_http(tmp_path: Path) -> Iterator[Callable[[Path], tuple[str, int]]]:
    """Serve a folder over HTTP on a unix socket, as the worker's relay does; return (socket, a free port)."""
    servers: list[socketserver.ThreadingUnixStreamServer] = []

    def serve(folder: Path) -> tuple[str, int]:
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

            def address_string(self) -> str:
                return "unix"

            def log_message(self, *args: object) -> None:
                pass

        path = str(tmp_path / "relay.sock")
        server = socketserver.ThreadingUnixStreamServer(path, Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return path, port

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_relay_is_the_jails_only_way_out(
    tmp_path: Path, clip: Callable[[str], Path], unix_http: Callable[[Path], tuple[str, int]]
) -> None:
    source = clip("small.mp4")
    sock, port = unix_http(source.parent)
    url = f"http://127.0.0.1:{port}/{source.name}"
    info = probe(url, Sandbox(jail=True), relay=(sock, port))  # ffprobe in the jail reads through the relay
    assert info.width > 0 and info.duration > 0
    with pytest.raises(Exception, match=r"Connection refused|Failed to resolve|Cannot assign"):
        probe(url, Sandbox(jail=True))  # without it, the URL leads nowhere


def test_a_jail_that_cant_be_made_is_the_hosts_fault_never_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = jail.Jail(scratch=str(tmp_path), read=(str(tmp_path / "gone"),))  # bubblewrap can't bind it
    with pytest.raises(runner.FFmpegError) as caught:
        runner.run(["ffprobe", "-version"], jail=broken)
    assert (caught.value.reason, caught.value.blame) == ("jail", runner.HOST), "retried elsewhere, not refused"
    which = jail.shutil.which
    monkeypatch.setattr(jail.shutil, "which", lambda name, *args: None if name == "bwrap" else which(name, *args))
    with pytest.raises(jail.JailUnavailable, match="apt-get install bubblewrap"):
        jail.check()  # /readyz says so (ops/readiness.py)


@pytest.mark.parametrize("relayed", [False, True], ids=["plain", "through-the-relay-forwarder"])
def test_limits_and_verdicts_survive_the_jail(tmp_path: Path, relayed: bool) -> None:
    relay = None
    if relayed:  # the forwarder is PID 1 and the command its child: their ends must read the same
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(tmp_path / "relay.sock"))  # the socket file the jail binds
        relay = (str(tmp_path / "relay.sock"), 18999)
    confined = jail.Jail(scratch=str(tmp_path), relay=relay)
    with pytest.raises(runner.FFmpegError) as crashed:
        runner.run(["/usr/bin/python3", "-c", "import ctypes; ctypes.string_at(0)"], jail=confined)  # a real fault
    assert crashed.value.reason == "crashed" and crashed.value.blame == runner.SUSPECT
    with pytest.raises(runner.FFmpegError) as spun:
        runner.run(["sh", "-c", "while :; do :; done"], limits=Resources(cpu_seconds=1, wall_seconds=30), jail=confined)
    assert spun.value.reason == "cpu" and spun.value.blame == runner.FILE
    with pytest.raises(runner.FFmpegError) as failed:
        runner.run(["sh", "-c", "echo broken >&2; exit 3"], jail=confined)
    assert (failed.value.returncode, failed.value.reason, failed.value.stderr) == (3, None, "broken")


def test_the_worker_never_follows_what_ffmpeg_left_in_its_folder(tmp_path: Path) -> None:
    from media.pipeline import _write_new, plain_file

    secret = tmp_path / "elsewhere"
    secret.write_text("another job's original")
    (tmp_path / "poster.jpg").symlink_to(secret)  # what a compromised FFmpeg could leave for the upload
    with pytest.raises(runner.FFmpegError, match="not a plain file") as caught:
        plain_file(tmp_path / "poster.jpg")
    assert caught.value.blame == runner.FILE
    (tmp_path / "pieces.txt").symlink_to(secret)  # and for the join's listing, written by the worker
    _write_new(tmp_path / "pieces.txt", "file 'a.mp4'\n")
    assert secret.read_text() == "another job's original" and not (tmp_path / "pieces.txt").is_symlink()
    assert plain_file(tmp_path / "pieces.txt") == tmp_path / "pieces.txt"
