"""``videoproc upload FILE [FILE ...]``: upload clips straight to S3, wait, download the results.

The token comes from ``VIDEOPROC_TOKEN``, or a login (``VIDEOPROC_EMAIL`` and
``VIDEOPROC_PASSWORD``, else a prompt); the API from ``--api`` or ``VIDEOPROC_API``.
Run the same command again after an interruption: each file's upload resumes where S3 has it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from client.uploader import Api, ClientError, State, default_state_path, upload

DONE = {"processed", "failed", "cancelled"}


def _login(api: Api) -> None:
    if token := os.environ.get("VIDEOPROC_TOKEN"):
        api.token = token
        return
    email = os.environ.get("VIDEOPROC_EMAIL") or input("email: ")
    password = os.environ.get("VIDEOPROC_PASSWORD") or getpass.getpass("password: ")
    api.login(email, password)


def _wait(api: Api, video_id: str, name: str, poll: float) -> dict[str, Any]:
    """Poll the video until it ends, with a progress bar of its processing."""
    with tqdm(total=100, desc=f"processing {name}", unit="%", leave=True) as bar:
        while True:
            video = api.call("GET", f"/api/videos/{video_id}")
            bar.update(video["progress"] - bar.n)
            if video["status"] in DONE:
                return video
            time.sleep(poll)


def _download(url: str, target: Path) -> None:
    with requests.get(url, stream=True, timeout=(10, 300)) as response:
        response.raise_for_status()
        total = int(response.headers.get("Content-Length") or 0) or None
        with (
            target.open("wb") as out,
            tqdm(total=total, desc=f"download {target.name}", unit="B", unit_scale=True) as bar,
        ):
            for chunk in response.iter_content(1024 * 1024):
                out.write(chunk)
                bar.update(len(chunk))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (1 when any file failed)."""
    parser = argparse.ArgumentParser(
        prog="videoproc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upload", help="upload files by the direct path (resumable)")
    up.add_argument("files", nargs="+", type=Path)
    up.add_argument("--api", default=os.environ.get("VIDEOPROC_API", "http://127.0.0.1:8000"))
    up.add_argument("--title", help="title of every file (default: the file's name)")
    up.add_argument("--wait", action="store_true", help="wait until each video is processed")
    up.add_argument(
        "--download", type=Path, metavar="DIR", help="download each processed video into DIR (implies --wait)"
    )
    up.add_argument("--parallel", type=int, default=4, help="parts in flight at once (default 4)")
    up.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    api = Api(args.api)
    try:
        _login(api)
    except ClientError as exc:
        print(f"videoproc: login failed: {exc}", file=sys.stderr)
        return 1
    state, failed = State(default_state_path()), 0
    for file in args.files:
        if not file.is_file():
            print(f"videoproc: {file}: no such file", file=sys.stderr)
            failed += 1
            continue
        try:
            with tqdm(total=file.stat().st_size, desc=f"upload {file.name}", unit="B", unit_scale=True) as bar:
                answer = upload(api, file, state, args.title, lambda done, _: bar.update(done - bar.n), args.parallel)
            print(f"{file}: video {answer['video_id']} {answer['status']}")
            if args.wait or args.download:
                video = _wait(api, answer["video_id"], file.name, args.poll)
                if video["status"] != "processed":
                    error = video.get("error") or {}
                    print(
                        f"{file}: {video['status']} {error.get('code', '')}: {error.get('message', '')}",
                        file=sys.stderr,
                    )
                    failed += 1
                    continue
                print(f"{file}: processed")
                if args.download:
                    args.download.mkdir(parents=True, exist_ok=True)
                    _download(video["processed_url"], args.download / f"{file.stem}.processed.mp4")
        except (ClientError, requests.RequestException) as exc:
            code = getattr(exc, "code", "network")
            print(f"videoproc: {file}: {code}: {exc} (run the same command again to resume)", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
