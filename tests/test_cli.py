"""The ``videoproc`` command against the real stack: log in, upload, follow, download, manage, with exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from client import cli
from tests.clips import ffprobe, make_clip
from tests.conftest import PASSWORD, ROOT, unique_email
from tests.test_client_and_page import site  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e


def videoproc(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_is_plain_text_and_names_every_command() -> None:
    env = {"XDG_CONFIG_HOME": "/nonexistent"}
    top = videoproc("--help", env=env)
    assert top.returncode == 0
    for command in ("login", "upload", "list", "status", "download", "cancel", "retry", "delete", "webhooks"):
        assert f"    {command}" in top.stdout, command
    assert "exit status:" in top.stdout and "``" not in top.stdout and ":func:" not in top.stdout
    hooks = videoproc("webhooks", "--help", env=env)
    assert all(a in hooks.stdout for a in ("add", "list", "remove", "deliveries")) and "``" not in hooks.stdout
    assert videoproc("status", env=env).returncode == 2, "a missing argument is a usage error"


def test_the_command_covers_the_api(
    site: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every command, in this process (measured by coverage); the login through the installed entry point."""
    email = unique_email()
    body = {"email": email, "password": PASSWORD, "password_confirm": PASSWORD}
    assert requests.post(f"{site}/api/auth/signup", json=body, timeout=10).status_code == 201
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_STATE_HOME": str(tmp_path / "state")}
    for name in ("VIDEOPROC_TOKEN", "VIDEOPROC_API", "VIDEOPROC_EMAIL", "VIDEOPROC_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    def data(*args: str) -> Any:
        code, out, err = run("--json", *args)
        assert code == 0, err
        return json.loads(out)

    assert run("--api", site, "list")[0] == 3, "not logged in"
    login = videoproc("--api", site, "login", "--email", email, env={**env, "VIDEOPROC_PASSWORD": PASSWORD})
    assert login.returncode == 0, login.stderr
    kept = tmp_path / "config" / "videoproc" / "credentials.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert json.loads(kept.read_text())["api"] == site, "the login remembers the API: no --api from here"

    hook = data("webhooks", "add", "http://127.0.0.1:9/hook", "--event", "video.processed")
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["video.processed"]
    assert "secret: whsec_" in run("webhooks", "rotate", hook["id"])[1]

    clip = make_clip(tmp_path / "walk.mp4", 640, 360, 3)
    uploaded = data("upload", str(clip))["uploads"][0]
    video_id = uploaded["video_id"]
    code, out, err = run("status", video_id, "--watch", "--poll", "0.5")
    assert code == 0, err
    assert video_id in out and "processed" in out and "100%" in err, "a progress bar, then the status"

    listed = data("list")
    assert [v["id"] for v in listed["items"]] == [video_id] and listed["items"][0]["status"] == "processed"
    assert "1 videos" in run("list")[1]
    code, out, err = run("download", video_id, "-o", str(tmp_path))
    assert code == 0, err
    streams = ffprobe(tmp_path / f"{video_id}.mp4")["streams"]
    assert next((s["width"], s["height"]) for s in streams if s["codec_type"] == "video") == (1280, 720)

    cancelled = data("cancel", video_id)  # no optimize worker here: its optimize stage waits, and is cancelled
    assert cancelled["status"] == "processed" and cancelled["optimization"]["status"] == "cancelled"
    code, _, err = run("--json", "cancel", video_id)
    assert code == 5 and json.loads(err)["error"]["code"] == "not_cancellable"
    assert run("retry", video_id)[0] == 5
    assert run("status", "00000000-0000-0000-0000-000000000000")[0] == 4
    assert run("upload", str(tmp_path / "missing.mp4"))[0] == 1

    deliveries = data("webhooks", "deliveries", hook["id"])["items"]
    assert [(d["event_type"], d["video_id"]) for d in deliveries] == [("video.processed", video_id)]
    assert "video.processed" in run("webhooks", "deliveries", hook["id"])[1]
    code, _, err = run("webhooks", "redeliver", hook["id"], deliveries[0]["id"])
    assert code == 5 and "delivery_pending" in err, "it is still being tried (no webhook worker here)"
    assert run("webhooks", "enable", hook["id"])[0] == 0
    assert run("webhooks", "remove", "../../videos/" + video_id)[0] == 4, "an id is one path segment"
    assert [e["id"] for e in data("webhooks", "list")["items"]] == [hook["id"]]
    assert hook["id"] in run("webhooks")[1], "webhooks alone lists them"
    assert run("webhooks", "remove", hook["id"])[0] == 0
    assert run("webhooks", "remove", hook["id"])[0] == 4

    assert run("delete", video_id)[0] == 0
    assert run("status", video_id)[0] == 4
    monkeypatch.setenv("VIDEOPROC_TOKEN", "not-a-token")
    assert run("list")[0] == 3, "a refused token"
    monkeypatch.delenv("VIDEOPROC_TOKEN")
    assert run("logout")[0] == 0 and not kept.exists()
    monkeypatch.setenv("VIDEOPROC_API", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("VIDEOPROC_TOKEN", "any")
    assert run("list")[0] == 6, "the API unreachable"
