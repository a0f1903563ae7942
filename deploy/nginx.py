"""Render nginx's configuration from the settings, and run nginx in the foreground.

Usage: python -m deploy.nginx [--listen 127.0.0.1:8000] [--upstream unix:instance/gunicorn.sock]
                              [--prefix instance/nginx] [--workers 1] [--user NAME]
                              [--trusted-proxy CIDR ...] [--render-only]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import string
import sys
from pathlib import Path

from config import Settings, load_settings
from config.settings import INSTANCE_DIR

TEMPLATE = Path(__file__).with_name("nginx.conf.template")


class _Template(string.Template):
    delimiter = "@@"


def render(
    listen: str,
    upstream: str,
    prefix: Path,
    workers: str = "1",
    user: str | None = None,
    trusted: list[str] | None = None,
    settings: Settings | None = None,
) -> str:
    """Return nginx.conf for these addresses, with the body limits of ``settings``.

    ``user`` is who nginx's workers run as when the master starts as root; ``trusted``
    are the load balancers' networks, whose X-Forwarded-For names the client.
    """
    s = settings or load_settings()
    real_ip = "".join(f"    set_real_ip_from {cidr};\n" for cidr in trusted or [])
    if real_ip:
        real_ip += "    real_ip_header X-Forwarded-For;\n    real_ip_recursive on;\n"
    return _Template(TEMPLATE.read_text()).substitute(
        user=f"user {user};" if user else "",
        real_ip=real_ip,
        uploads_per_address=s.UPLOADS_PER_ADDRESS,
        listen=listen,
        upstream=upstream,
        prefix=str(prefix),
        workers=workers,
        json_body=f"{-(-s.MAX_JSON_BYTES // 1024)}k",
        upload_body=f"{-(-s.UPLOAD_MAX_CONTENT_LENGTH // 1024)}k",
        max_upload=s.MAX_UPLOAD_BYTES,
    )


def nginx_binary() -> str:
    """Return the path of nginx (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        sys.exit("nginx is not installed: run `make system` (or apt-get install nginx-light)")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--upstream", default=f"unix:{INSTANCE_DIR / 'gunicorn.sock'}")
    parser.add_argument("--prefix", type=Path, default=INSTANCE_DIR / "nginx")
    parser.add_argument("--workers", default="1")
    parser.add_argument(
        "--user",
        default=pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None,
        help="workers' user when started as root (default: root's own stack runs as root; use www-data on servers)",
    )
    parser.add_argument(
        "--trusted-proxy", action="append", default=[], metavar="CIDR", help="a load balancer's network (repeatable)"
    )
    parser.add_argument("--render-only", action="store_true", help="print the configuration and exit")
    args = parser.parse_args(argv)
    prefix = args.prefix.resolve()
    upstream = args.upstream
    if upstream.startswith("unix:"):
        upstream = f"unix:{Path(upstream[len('unix:') :]).resolve()}"
    conf = render(args.listen, upstream, prefix, args.workers, args.user, args.trusted_proxy)
    if args.render_only:
        print(conf)
        return
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(conf)
    binary = nginx_binary()
    os.execv(binary, [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"])


if __name__ == "__main__":
    main()
