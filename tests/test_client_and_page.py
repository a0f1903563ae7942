"""What people use, on the real stack (nginx → gunicorn, moto server, a worker, FFmpeg):
the ``videoproc`` command and the page at ``/`` in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from client import uploader
from domain.extensions import get_settings
from ops.aws import ensure_bucket, ensure_queues
from tests.clips import ffprobe, make_clip
from tests.conftest import PASSWORD, ROOT, Worker, serving, unique_email, wait_for
from tests.test_direct_uploads import PART, big_clip  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e
BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def site(app: Flask, base_env: dict[str, str], start_worker: Callable[..., Worker]) -> Iterator[str]:
    """The web tier and a worker on a queue of their own; the bucket lets the site's pages PUT parts."""
    queue = f"site-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    env = {"SQS_QUEUE_NAME": queue, "UPLOAD_PART_BYTES": str(PART)}
    settings = get_settings(app).replace(SQS_QUEUE_NAME=queue)
    with app.app_context():
        ensure_queues(settings)
    start_worker("site", env)
    with serving(base_env, env) as url:
        with app.app_context():
            ensure_bucket(settings.replace(CORS_ORIGINS=(url,)))
        yield url


def token_for(url: str) -> str:
    email = unique_email()
    body = {"email": email, "password": PASSWORD, "password_confirm": PASSWORD}
    assert requests.post(f"{url}/api/auth/signup", json=body, timeout=10).status_code == 201
    answer = requests.post(f"{url}/api/auth/login", json={"email": email, "password": PASSWORD}, timeout=10)
    return str(answer.json()["access_token"])


def test_the_client_resumes_and_the_command_waits_and_downloads(
    site: str,
    big_clip: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = uploader.Api(site, token_for(site))
    state = uploader.State(tmp_path / "state" / "uploads.json")
    sent: list[int] = []
    real_put = requests.Session.put

    def flaky_put(session: requests.Session, url: str, data: bytes, **kwargs: Any) -> Any:
        number = int(url.split("partNumber=")[1].split("&")[0])
        if number == 3 and len(sent) < 10:  # the network dies at the last part, every try
            raise requests.ConnectionError("dropped")
        sent.append(number)
        return real_put(session, url, data=data, **kwargs)

    monkeypatch.setattr(requests.Session, "put", flaky_put)
    monkeypatch.setattr(uploader.time, "sleep", lambda _: None)
    with pytest.raises(uploader.ClientError, match="could not be sent"):
        uploader.upload(api, big_clip, state, parallel=1)
    assert sorted(sent) == [1, 2] and state.get(big_clip), "the upload is remembered"

    sent.extend([0] * 10)  # the network is back
    progress: list[tuple[int, int]] = []
    answer = uploader.upload(api, big_clip, state, progress=lambda done, total: progress.append((done, total)))
    assert sorted(n for n in sent if n) == [1, 2, 3], "parts 1 and 2 were not sent again"
    assert progress[0] == (2 * PART, big_clip.stat().st_size), "the bar starts where S3 is"
    assert progress[-1][0] == big_clip.stat().st_size and answer["status"] in ("queued", "processing")
    assert state.get(big_clip) is None
    monkeypatch.undo()

    # The command itself: upload, wait, download.
    env = {**os.environ, "VIDEOPROC_API": site, "VIDEOPROC_TOKEN": api.token or "", "XDG_STATE_HOME": str(tmp_path)}
    out = tmp_path / "out"
    small = make_clip(tmp_path / "walk.mp4", 640, 360, 3)
    run = subprocess.run(
        [sys.executable, "-m", "client.cli", "upload", str(small), "--download", str(out), "--poll", "0.5"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "processed" in run.stdout and "100%" in run.stderr, "progress bars on the terminal"
    streams = ffprobe(out / "walk.processed.mp4")["streams"]
    video = next(s for s in streams if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (1280, 720)

    bad = subprocess.run(
        [sys.executable, "-m", "client.cli", "upload", str(tmp_path / "missing.mp4")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "no such file" in bad.stderr


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (BROWSER and DRIVER):
        pytest.skip("chromium and chromium-driver are not installed (deploy/install_system.sh --browser)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=412,915"):
        options.add_argument(flag)  # a phone-sized window
    options.add_argument("--autoplay-policy=no-user-gesture-required")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def sign_up(browser: Any, site: str) -> None:
    """Open the page and sign up a new account through its form."""
    from selenium.webdriver.common.by import By

    browser.get(site + "/")
    assert browser.title == "videoproc"
    browser.find_element(By.ID, "email").send_keys(unique_email())
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "signup").click()
    wait_for(lambda: browser.find_element(By.ID, "uploader").is_displayed(), timeout=20)


def test_the_page_signs_up_uploads_with_progress_and_plays_the_result(
    site: str,
    browser: Any,
    big_clip: Path,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By

    sign_up(browser, site)
    # Every control is labelled, and the file input can be reached by keyboard.
    labels = {e.get_attribute("for") for e in browser.find_elements(By.CSS_SELECTOR, "label[for]")}
    assert {"email", "password", "files", "webhook-url"} <= labels
    # A webhook endpoint first: its secret is shown once, and the processed video's delivery is listed below.
    browser.find_element(By.ID, "webhook-url").send_keys("http://127.0.0.1:9/hook")
    browser.find_element(By.ID, "webhook-add").click()
    secret = wait_for(lambda: browser.find_element(By.ID, "webhook-secret-value").text, timeout=20)
    assert secret.startswith("whsec_") and browser.find_element(By.ID, "webhook-secret").is_displayed()
    wait_for(lambda: "127.0.0.1:9/hook" in browser.find_element(By.ID, "endpoints").text, timeout=20)
    assert browser.find_element(By.ID, "files").get_attribute("tabindex") in (None, "0")

    # Every value the bar is given, not samples of it: on loopback all parts can finish between two
    # timer ticks. <progress value> is a reflected attribute, so each assignment is a mutation, and
    # the records' old values with the last new one are the whole history.
    browser.execute_script(
        "window.seen = []; new MutationObserver((records) => { for (const r of records) "
        "window.seen.push(Number(r.oldValue)); const bar = records.at(-1).target; "
        "window.seen.push(Number(bar.getAttribute('value'))); }).observe(document.getElementById("
        "'transfers'), {subtree: true, attributeFilter: ['value'], attributeOldValue: true});"
    )
    browser.find_element(By.ID, "files").send_keys(str(big_clip))
    wait_for(lambda: "queued for processing" in browser.find_element(By.ID, "transfers").text, timeout=60)
    seen = browser.execute_script("return window.seen")
    size = big_clip.stat().st_size
    assert any(0 < v < size for v in seen) and max(seen) == size, f"the bar moved through the upload: {seen[:50]}"

    player = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#videos video"), timeout=240, interval=0.5)[0]
    assert "processed" in browser.find_element(By.ID, "videos").text
    assert player.get_attribute("poster").startswith("http")
    browser.execute_script("arguments[0].muted = true; arguments[0].play();", player)
    wait_for(lambda: browser.execute_script("return arguments[0].currentTime", player) > 0.5, timeout=30)
    assert browser.execute_script("return arguments[0].videoWidth", player) == 1280
    browser.find_element(By.XPATH, "//button[text()='Recent deliveries']").click()
    deliveries = browser.find_element(By.CSS_SELECTOR, "#endpoints .deliveries")
    wait_for(lambda: "video.processed pending" in deliveries.text, timeout=20)
    browser.refresh()
    wait_for(lambda: "127.0.0.1:9/hook" in browser.find_element(By.ID, "endpoints").text, timeout=20)
    assert secret not in browser.page_source, "the secret was shown once"
    if os.environ.get("VIDEOPROC_SCREENSHOTS"):  # docs/page.png: the whole page, phone-wide
        browser.execute_script("arguments[0].pause(); arguments[0].currentTime = 8;", player)
        browser.set_window_size(412, 1280)
        time.sleep(1)
        browser.save_screenshot(str(ROOT / os.environ["VIDEOPROC_SCREENSHOTS"] / "page.png"))


KEPT_FILES = """
const done = arguments[arguments.length - 1];
const open = indexedDB.open("videoproc", 1);
open.onupgradeneeded = () => open.result.createObjectStore("files");
open.onsuccess = () => {
  const count = open.result.transaction("files").objectStore("files").count();
  count.onsuccess = () => done(count.result);
};
"""


def interrupted_upload(browser: Any, site: str, clip: Path) -> None:
    """Sign up and pick ``clip`` while the network drops every part: started, the file kept, nothing in S3."""
    from selenium.webdriver.common.by import By

    sign_up(browser, site)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*partNumber=*"]})
    browser.find_element(By.ID, "files").send_keys(str(clip))
    started = "return Object.keys(localStorage).some((k) => k.startsWith('videoproc.upload.'))"
    wait_for(lambda: browser.execute_script(started) and browser.execute_async_script(KEPT_FILES) == 1, timeout=20)
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})


def test_logging_out_revokes_the_token_and_leaves_nothing_in_the_browser(
    site: str,
    browser: Any,
    big_clip: Path,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By

    interrupted_upload(browser, site, big_clip)  # an upload left to resume
    token = browser.execute_script("return localStorage.getItem('videoproc.token')")

    browser.find_element(By.ID, "logout").click()
    wait_for(lambda: browser.execute_script("return Object.keys(localStorage).length") == 0, timeout=10)
    assert browser.execute_async_script(KEPT_FILES) == 0, "the kept file is gone"
    refused = requests.get(f"{site}/api/videos", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "token_revoked")


def test_a_reload_resumes_the_upload_without_picking_the_file_again(
    site: str,
    browser: Any,
    big_clip: Path,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By

    interrupted_upload(browser, site, big_clip)
    browser.refresh()  # the user reloads; nobody picks the file again
    wait_for(lambda: "queued for processing" in browser.find_element(By.ID, "transfers").text, timeout=60)
    wait_for(lambda: browser.execute_async_script(KEPT_FILES) == 0, timeout=10)  # the copy is gone once done
    token = browser.execute_script("return localStorage.getItem('videoproc.token')")
    page = requests.get(f"{site}/api/videos", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert [v["status"] != "uploading" for v in page["items"]] == [True], "one video, its upload completed"
