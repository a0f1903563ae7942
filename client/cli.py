"""The ``videoproc`` command: every route of the API a person or a script needs, over HTTP only."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from client.credentials import Credentials
from client.uploader import Api, ClientError, State, default_state_path, upload

DONE = {"processed", "failed", "cancelled"}
DEFAULT_API = "http://127.0.0.1:8000"

# Exit codes: what happened, for scripts.
OK = 0
FAILED = 1  # the work ended badly: a video failed or was cancelled, a file was not uploaded
USAGE = 2  # the command line is wrong (argparse's own)
AUTH = 3  # not logged in, or the token was refused
NOT_FOUND = 4  # no such video, endpoint or delivery (or not yours)
REFUSED = 5  # the API refused the request as it stands (400, 409, 413, 415, 422, 429)
UNAVAILABLE = 6  # the API or the network did not answer, or answered 5xx

DESCRIPTION = """\
Upload clips to a videoproc API, follow their processing, download the results,
and manage webhook endpoints.

First log in: videoproc login --api https://videos.example.com
The token is kept in $XDG_CONFIG_HOME/videoproc/credentials.json (mode 0600);
log in again to refresh it. VIDEOPROC_TOKEN and VIDEOPROC_API override it, and
VIDEOPROC_EMAIL with VIDEOPROC_PASSWORD log in without a prompt.
"""

EPILOG = """\
examples:
  videoproc upload match.mp4 --wait --download out/
  videoproc list
  videoproc status 3f0c… --watch
  videoproc webhooks add https://example.com/hooks --event video.processed
  videoproc --json list | jq '.items[].status'

exit status:
  0  done
  1  the work ended badly: a video failed or was cancelled, a file was not uploaded
  2  the command line is wrong
  3  not logged in, or the token was refused: run videoproc login
  4  no such video, endpoint or delivery
  5  the API refused the request (its code and message are printed)
  6  the API could not be reached, or failed (5xx): try again
"""


def exit_code(exc: Exception) -> int:
    """Return the exit status that says what ``exc`` means."""
    if isinstance(exc, ClientError):
        if exc.status == 401:
            return AUTH
        if exc.status == 404:
            return NOT_FOUND
        if exc.status >= 500 or exc.status == 0:
            return UNAVAILABLE
        return REFUSED
    return UNAVAILABLE  # requests' connection errors and timeouts


class Out:
    """Where answers go: people get lines of text, ``--json`` gets one JSON document on stdout."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def result(self, data: Any, text: Callable[[Any], str] | None = None) -> None:
        if self.json:
            print(json.dumps(data, indent=2))
        elif text is not None:
            line = text(data)
            if line:
                print(line)

    def error(self, exc: Exception, what: str = "") -> None:
        code = getattr(exc, "code", "network")
        prefix = f"{what}: " if what else ""
        if self.json:
            print(json.dumps({"error": {"code": code, "message": f"{prefix}{exc}"}}), file=sys.stderr)
        else:
            print(f"videoproc: {prefix}{code}: {exc}", file=sys.stderr)

    def bar(self, **kwargs: Any) -> tqdm:
        """A progress bar on stderr (none with ``--json``)."""
        return tqdm(disable=self.json, **kwargs)


def video_line(video: dict[str, Any]) -> str:
    progress = f"{video['progress']:>3}%" if video["status"] == "processing" else ""
    error = f"  {video['error']['code']}" if video.get("error") else ""
    return f"{video['id']}  {video['status']:<10} {progress:>4}  {video['title']}{error}"


def quote(identifier: str) -> str:
    """An id as one path segment: ``../x`` can't reach another route."""
    return urllib.parse.quote(identifier, safe="")


def wait(api: Api, out: Out, video_id: str, name: str, poll: float) -> dict[str, Any]:
    """Poll the video until it ends, with a progress bar of its processing."""
    with out.bar(total=100, desc=f"processing {name}", unit="%", leave=True) as bar:
        while True:
            video = api.call("GET", f"/api/videos/{quote(video_id)}")
            bar.update(video["progress"] - bar.n)
            if video["status"] in DONE:
                return video
            time.sleep(poll)


def download(out: Out, url: str, target: Path) -> None:
    with requests.get(url, stream=True, timeout=(10, 300)) as response:
        response.raise_for_status()
        total = int(response.headers.get("Content-Length") or 0) or None
        partial = target.with_name(target.name + ".part")
        with (
            partial.open("wb") as sink,
            out.bar(total=total, desc=f"download {target.name}", unit="B", unit_scale=True) as bar,
        ):
            for chunk in response.iter_content(1024 * 1024):
                sink.write(chunk)
                bar.update(len(chunk))
        partial.replace(target)  # never a truncated file under the final name


def ended_badly(video: dict[str, Any]) -> str:
    error = video.get("error") or {}
    return f"{video['status']} {error.get('code', '')}: {error.get('message', '')}".rstrip(": ")


# Commands: each returns its exit status.


def cmd_login(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    email = args.email or os.environ.get("VIDEOPROC_EMAIL") or input("email: ")
    password = os.environ.get("VIDEOPROC_PASSWORD") or getpass.getpass("password: ")
    api.login(email, password)
    creds.save(api.url, api.token or "", email)
    out.result({"api": api.url, "email": email}, lambda d: f"logged in to {d['api']} as {d['email']}")
    return OK


def cmd_logout(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    if api.token:
        with contextlib.suppress(ClientError, requests.RequestException):  # an expired token is logged out already
            api.call("POST", "/api/auth/logout")
    creds.forget()
    out.result({"logged_out": True}, lambda _: "logged out")
    return OK


def cmd_upload(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    state, failed, results = State(default_state_path()), 0, []
    for file in args.files:
        if not file.is_file():
            out.error(FileNotFoundError("no such file"), str(file))
            failed += 1
            continue
        try:
            with out.bar(total=file.stat().st_size, desc=f"upload {file.name}", unit="B", unit_scale=True) as bar:
                answer = upload(api, file, state, args.title, lambda done, _: bar.update(done - bar.n), args.parallel)
            if not out.json:
                print(f"{file}: video {answer['video_id']} {answer['status']}")
            result: dict[str, Any] = {"file": str(file), **answer}
            if args.wait or args.download:
                video = wait(api, out, answer["video_id"], file.name, args.poll)
                result["video"] = video
                if video["status"] != "processed":
                    out.error(ClientError(ended_badly(video), video["status"]), str(file))
                    failed += 1
                    results.append(result)
                    continue
                if not out.json:
                    print(f"{file}: processed")
                if args.download:
                    args.download.mkdir(parents=True, exist_ok=True)
                    target = args.download / f"{file.stem}.processed.mp4"
                    download(out, video["processed_url"], target)
                    result["downloaded"] = str(target)
            results.append(result)
        except (ClientError, requests.RequestException) as exc:
            out.error(
                ClientError(f"{exc} (run the same command again to resume)", getattr(exc, "code", "network")), str(file)
            )
            failed += 1
    if out.json:
        out.result({"uploads": results})
    return FAILED if failed else OK


def cmd_list(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    page = api.call("GET", "/api/videos", params={"page": args.page, "per_page": args.per_page})

    def text(p: dict[str, Any]) -> str:
        lines = [video_line(v) for v in p["items"]]
        lines.append(f"page {p['page']} of {max(p['pages'], 1)}, {p['total']} videos")
        return "\n".join(lines)

    out.result(page, text)
    return OK


def cmd_status(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    video = api.call("GET", f"/api/videos/{quote(args.id)}")
    if args.watch and video["status"] not in DONE:
        video = wait(api, out, args.id, video["title"], args.poll)
    out.result(video, video_line)
    if args.watch and video["status"] != "processed":
        return FAILED
    return OK


def cmd_download(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    video = api.call("GET", f"/api/videos/{quote(args.id)}")
    if video["status"] != "processed" or not video.get("processed_url"):
        out.error(
            ClientError(f"only a processed video can be downloaded; this one is {video['status']}", "not_processed")
        )
        return REFUSED
    target = args.output or Path(f"{args.id}.mp4")
    if target.is_dir():
        target = target / f"{args.id}.mp4"
    download(out, video["processed_url"], target)
    out.result({"id": args.id, "file": str(target)}, lambda d: f"{d['file']}")
    return OK


def _video_action(method: str, suffix: str, done: str) -> Callable[..., int]:
    def run(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
        video = api.call(method, f"/api/videos/{quote(args.id)}{suffix}")
        out.result(
            video or {"id": args.id, "deleted": True}, lambda v: video_line(v) if "status" in v else f"{args.id} {done}"
        )
        return OK

    return run


def endpoint_line(e: dict[str, Any]) -> str:
    state = f"disabled: {e['disabled_reason']}" if e.get("disabled_at") else "enabled"
    return f"{e['id']}  {e['url']}  {','.join(e['events'])}  {state}"


def cmd_hooks_add(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    body: dict[str, Any] = {"url": args.url}
    if args.event:
        body["events"] = args.event
    endpoint = api.call("POST", "/api/webhooks", json=body)
    out.result(endpoint, lambda e: f"{endpoint_line(e)}\nsecret: {e['secret']}  (shown once: keep it now)")
    return OK


def cmd_hooks_list(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    answer = api.call("GET", "/api/webhooks")
    out.result(answer, lambda a: "\n".join(endpoint_line(e) for e in a["items"]) or "no endpoints")
    return OK


def cmd_hooks_remove(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    api.call("DELETE", f"/api/webhooks/{quote(args.id)}")
    out.result({"id": args.id, "deleted": True}, lambda d: f"{d['id']} removed")
    return OK


def cmd_hooks_rotate(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    endpoint = api.call("POST", f"/api/webhooks/{quote(args.id)}/rotate-secret")
    out.result(
        endpoint, lambda e: f"secret: {e['secret']}  (the old one signs too until {e['previous_secret_expires_at']})"
    )
    return OK


def cmd_hooks_enable(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    endpoint = api.call("POST", f"/api/webhooks/{quote(args.id)}/enable")
    out.result(endpoint, endpoint_line)
    return OK


def cmd_hooks_deliveries(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    page = api.call("GET", f"/api/webhooks/{quote(args.id)}/deliveries", params={"per_page": args.per_page})

    def text(p: dict[str, Any]) -> str:
        lines = []
        for d in p["items"]:
            tries = ", ".join(str(a["status_code"] or a["error"]) for a in d["attempts"]) or "not tried yet"
            later = f"  next {d['next_attempt_at']}" if d["next_attempt_at"] else ""
            lines.append(f"{d['id']}  {d['event_type']:<16} {d['status']:<9} {d['video_id']}  [{tries}]{later}")
        return "\n".join(lines) or "no deliveries"

    out.result(page, text)
    return OK


def cmd_hooks_redeliver(api: Api, out: Out, args: argparse.Namespace, creds: Credentials) -> int:
    delivery = api.call("POST", f"/api/webhooks/{quote(args.id)}/deliveries/{quote(args.delivery_id)}/redeliver")
    out.result(delivery, lambda d: f"{d['id']} sent again")
    return OK


def parser() -> argparse.ArgumentParser:
    """Return the command line's parser; its help is plain text."""
    formatter = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(prog="videoproc", description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter)
    top.add_argument("--api", help=f"the API's URL (default: the login's, VIDEOPROC_API, or {DEFAULT_API})")
    top.add_argument("--json", action="store_true", help="print the API's answers as JSON, for scripts; no bars")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[..., int], help: str, parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        return p

    login = command("login", cmd_login, "log in and keep the token (mode 0600)")
    login.add_argument("--email", help="default: VIDEOPROC_EMAIL, else asked")
    command("logout", cmd_logout, "revoke the token and forget it")
    up = command("upload", cmd_upload, "upload files by the direct path (run it again to resume)")
    up.add_argument("files", nargs="+", type=Path, metavar="FILE")
    up.add_argument("--title", help="title of every file (default: the file's name)")
    up.add_argument("--wait", action="store_true", help="wait until each video is processed")
    up.add_argument("--download", type=Path, metavar="DIR", help="download each processed video into DIR (waits)")
    up.add_argument("--parallel", type=int, default=4, help="parts in flight at once (default 4)")
    ls = command("list", cmd_list, "list your videos, newest first")
    ls.add_argument("--page", type=int, default=1)
    ls.add_argument("--per-page", type=int, default=20)
    status = command("status", cmd_status, "show a video's status")
    status.add_argument("id", metavar="ID")
    status.add_argument("--watch", action="store_true", help="follow it to the end with a progress bar")
    get = command("download", cmd_download, "download a processed video")
    get.add_argument("id", metavar="ID")
    get.add_argument("-o", "--output", type=Path, help="file or directory (default: ID.mp4 here)")
    for name, method, suffix, done, text in (
        ("cancel", "POST", "/cancel", "cancelled", "cancel a waiting or processing video"),
        ("retry", "POST", "/retry", "queued again", "queue a failed video again"),
        ("delete", "DELETE", "", "deleted", "delete a video and its files"),
    ):
        command(name, _video_action(method, suffix, done), text).add_argument("id", metavar="ID")
    hooks = command("webhooks", cmd_hooks_list, "manage webhook endpoints (add, list, remove, rotate, deliveries)")
    hsub = hooks.add_subparsers(dest="action", metavar="ACTION")
    add = command("add", cmd_hooks_add, "add an endpoint; prints its secret once", hsub)
    add.add_argument("url", metavar="URL")
    add.add_argument(
        "--event", action="append", help="video.processed, video.failed or video.cancelled (repeat; default all)"
    )
    command("list", cmd_hooks_list, "list your endpoints", hsub)
    command("remove", cmd_hooks_remove, "remove an endpoint", hsub).add_argument("id", metavar="ID")
    command("enable", cmd_hooks_enable, "turn a disabled endpoint back on", hsub).add_argument("id", metavar="ID")
    command("rotate", cmd_hooks_rotate, "new secret; the old one signs too for 24 h", hsub).add_argument(
        "id", metavar="ID"
    )
    deliveries = command("deliveries", cmd_hooks_deliveries, "an endpoint's recent deliveries and their attempts", hsub)
    deliveries.add_argument("id", metavar="ID")
    deliveries.add_argument("--per-page", type=int, default=20)
    again = command("redeliver", cmd_hooks_redeliver, "send a delivery again now", hsub)
    again.add_argument("id", metavar="ID")
    again.add_argument("delivery_id", metavar="DELIVERY_ID")
    for p in (up, status):
        p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return its exit status (see ``videoproc --help``)."""
    args = parser().parse_args(argv)
    out, creds = Out(args.json), Credentials()
    saved = creds.load()
    url = args.api or os.environ.get("VIDEOPROC_API") or (saved or {}).get("api") or DEFAULT_API
    api = Api(url)
    if args.command != "login":
        kept = saved.get("token") if saved and saved.get("api") == api.url else None
        api.token = os.environ.get("VIDEOPROC_TOKEN") or kept
    try:
        if args.command not in ("login", "logout") and not api.token:
            if os.environ.get("VIDEOPROC_EMAIL") and os.environ.get("VIDEOPROC_PASSWORD"):
                api.login(os.environ["VIDEOPROC_EMAIL"], os.environ["VIDEOPROC_PASSWORD"])
            else:
                out.error(ClientError(f"not logged in to {api.url}: run videoproc login", "not_logged_in", 401))
                return AUTH
        return int(args.run(api, out, args, creds))
    except (ClientError, requests.RequestException) as exc:
        out.error(exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("videoproc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
