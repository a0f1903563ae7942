"""The jail every FFmpeg and ffprobe runs in: bubblewrap, from Debian's packages.

Usage: python -m media.jail --scratch DIR [--read PATH]... [--relay SOCKET:PORT] -- CMD [ARGS...]

It runs CMD exactly as the product runs FFmpeg (the same walls, the same rlimits through
``media.runner``), so operators can check a host and the tests can prove the walls:

- new user, PID, network, IPC, UTS and cgroup namespaces: only the jail's own processes are
  visible (the command is PID 1: when it ends, whatever it started ends with it; and its
  parent reaps it, so the runner still sees its CPU time), the only network is the jail's
  own loopback (no PostgreSQL, Redis, AWS endpoint or instance metadata), and its ``/proc``
  is the jail's, never the host's;
- a mount namespace holding the system's ``/usr`` (and the few files of ``/etc`` the dynamic
  linker and fontconfig read) read-only, the paths in ``--read`` read-only at their own
  paths, ``--scratch`` the only writable directory (and the working directory), a minimal
  ``/dev``, and everything else read-only; nothing else of the host: no ``/etc/videoproc``,
  no ``/opt/videoproc``, no home, no ``/tmp``;
- an empty environment but ``media.sandbox.child_env``'s harmless variables;
- no capabilities, ``no_new_privs``, a new session (no terminal to inject into), and death
  with the parent.

``--relay SOCKET:PORT`` is the worker's loopback relay (tasks/relay.py) for a jail with no
network: a forwarder inside the jail listens on 127.0.0.1:PORT (the URL FFmpeg was given)
and carries each connection to the relay's unix socket, which the worker serves.

bubblewrap rather than nsjail (not in Debian 12) or ``systemd-run`` (needs the system
manager and privileges the worker must not have): unprivileged, one exec, about 3 ms.
It builds no seccomp filter itself (it loads a compiled one), so none is set: the
namespaces, the read-only system and ``no_new_privs`` are the walls.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from media.sandbox import child_env

# What a dynamically linked FFmpeg reads outside /usr: the linker's cache and Debian's alternatives
# (libblas), fontconfig's configuration (drawtext). Nothing in them is secret.
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/fonts")
MERGED = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
FORWARDER_PYTHON = "/usr/bin/python3"
# Runs inside the jail: listen on 127.0.0.1:PORT, carry each connection to the relay's unix socket,
# run the command as a child and end as it ended (its exit status, or its signal).
FORWARDER = r"""
import signal, socket, subprocess, sys, threading
port, path, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
server = socket.create_server(("127.0.0.1", port))
def pump(a, b):
    try:
        while data := a.recv(262144):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
def serve():
    while True:
        client, _ = server.accept()
        upstream = socket.socket(socket.AF_UNIX)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
child = subprocess.Popen(argv)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, f: child.send_signal(s))
code = child.wait()
sys.exit(128 - code if code < 0 else code)  # PID 1 can't signal itself: a signal is 128 + it, as bubblewrap says
"""


class JailUnavailable(RuntimeError):
    """bubblewrap is not installed, or this host does not let it make namespaces."""


@dataclass(frozen=True)
class Jail:
    """The walls of one media process: what it may read and write, and the relay it may reach."""

    scratch: str | None = None  # the only writable directory, and the working directory
    read: tuple[str, ...] = ()  # files and directories it may read, at their own paths
    relay: tuple[str, int] | None = None  # (the relay's unix socket, the loopback port FFmpeg was given)

    def command(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """Return the argv that runs ``argv`` inside the jail, with ``env`` (``child_env()`` by default)."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise JailUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        # --disable-userns: no user namespace inside it (the kernel's widest door for a compromised FFmpeg)
        cmd = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1", "--die-with-parent"]
        cmd += ["--new-session"]
        cmd += ["--cap-drop", "ALL", "--clearenv"]
        env = {**(child_env() if env is None else env), "PATH": "/usr/local/bin:/usr/bin:/bin"}
        for name, value in env.items():
            cmd += ["--setenv", name, value]
        cmd += ["--ro-bind", "/usr", "/usr"]
        for top in MERGED:
            if os.path.islink(top):
                cmd += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                cmd += ["--ro-bind", top, top]
        for path in SYSTEM_FILES:
            cmd += ["--ro-bind-try", path, path]
        cmd += ["--dev", "/dev"]
        for path in self.read:
            cmd += ["--ro-bind", str(path), str(path)]
        if self.relay:
            cmd += ["--ro-bind", self.relay[0], self.relay[0]]
        if self.scratch:
            cmd += ["--bind", self.scratch, self.scratch]
        cmd += ["--remount-ro", "/", "--chdir", self.scratch or "/"]  # bubblewrap's own root is read-only too
        argv = list(argv)
        if argv and "/" not in argv[0]:
            argv[0] = shutil.which(argv[0]) or argv[0]  # the jail's PATH is /usr's, but name the program plainly
        if self.relay:
            argv = [FORWARDER_PYTHON, "-I", "-S", "-c", FORWARDER, str(self.relay[1]), self.relay[0], *argv]
        return [*cmd, "--", *argv]


def check() -> None:
    """Make a jail and run ``true`` in it; raise ``JailUnavailable`` saying why when that fails."""
    probe = subprocess.run(Jail().command(["/usr/bin/true"]), capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        raise JailUnavailable(f"bubblewrap can't make the jail here: {probe.stderr.strip()[-300:]}")


def main(argv: list[str] | None = None) -> int:
    """Run one command in the jail under the product's default probe limits; exit as it exited."""
    from media import runner
    from media.sandbox import Resources

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", help="the only writable directory (and the working directory)")
    parser.add_argument("--read", action="append", default=[], help="a file or directory it may read")
    parser.add_argument("--relay", help="SOCKET:PORT: the relay's unix socket, served inside on 127.0.0.1:PORT")
    parser.add_argument("--wall-seconds", type=float, default=300.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: python -m media.jail [options] -- CMD [ARGS...]")
    relay = None
    if args.relay:
        socket_path, _, port = args.relay.rpartition(":")
        relay = (socket_path, int(port))
    jail = Jail(scratch=args.scratch, read=tuple(args.read), relay=relay)
    try:
        out = runner.run(command, limits=Resources(wall_seconds=args.wall_seconds), capture=True, jail=jail)
    except runner.FFmpegError as exc:
        sys.stderr.write(exc.stderr + "\n")
        return exc.returncode if exc.returncode and exc.returncode > 0 else 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
