"""Wait until a URL answers (any HTTP status), then exit 0; exit 1 after the timeout.

Usage: python -m deploy.wait_for URL [--timeout SECONDS] [--ok-only]
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request


def answers(url: str, ok_only: bool) -> bool:
    """Return whether ``url`` answers (with 2xx when ``ok_only``)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return not ok_only
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Poll the URL twice a second until it answers or time runs out."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--ok-only", action="store_true", help="wait for a 2xx answer")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if answers(args.url, args.ok_only):
            return 0
        time.sleep(0.5)
    print(f"wait_for: {args.url} did not answer within {args.timeout:g}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
