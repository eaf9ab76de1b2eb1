"""The playground page (``GET /``) in a real browser: Debian's ``chromium``, driven by selenium through
``chromedriver``, against ``lipsync serve``.

Two serves: the default lip-sync pipeline (random tiny weights) with API keys on, for the whole happy path
(key box, uploads with progress, SSE logs, the result playing, metrics and the random-weights warning), a bad
field value and a wrong key; and the test pipeline (``lipsync.testing.pipelines:reencode``, slowed down by its prompt
hook) with no keys, to cancel a running request. Every test also reads the browser's console: nothing but
the HTTP errors the test provoked may appear there.

The finished page's screenshot is written to ``build/test-artifacts/playground.png`` (``docs/playground.png``
in the README is one of these).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from lipsync.testing.media import make_face_video, make_speech
from lipsync.testing.stack import free_port, wait_until
from tests.support import ROOT

KEY = "playground:pg-secret"
ARTIFACTS = Path(os.environ.get("LIPSYNC_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
CLIP = {"frames": 20, "size": (256, 192)}  # 20 frames at 25 fps; sent with frame_rate=20: 16 frames, 0.8 s


# --- processes ------------------------------------------------------------------------------------------


@dataclass
class Served:
    base: str
    proc: subprocess.Popen
    data_dir: Path

    def logs(self) -> str:
        files = [self.data_dir / "serve.log", self.data_dir / "worker.log"]
        return "\n".join(f"===== {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in files if f.exists())

    def jobs_seen(self) -> float:
        """Requests the queue has ever held: queued + running + completed (from /metrics)."""
        text = httpx.get(f"{self.base}/metrics").text
        names = ("lipsync_requests_queued", "lipsync_requests_running", "lipsync_jobs_completed_total")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(names))


def _serve(data_dir: Path, **settings: str) -> Iterator[Served]:
    port = free_port()
    data_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    env.update({f"LIPSYNC_{k.upper()}": v for k, v in settings.items()}, PYTHONUNBUFFERED="1")
    with open(data_dir / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lipsync", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    served = Served(f"http://127.0.0.1:{port}", proc, data_dir)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"lipsync serve exited:\n{served.logs()}")
        try:
            return httpx.get(f"{served.base}/readyz", timeout=1).json().get("workers") == 1
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 120, "lipsync serve")
        yield served
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def lipsync_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("playground") / "data", api_keys=KEY)


@pytest.fixture(scope="module")
def slow_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("playground-slow") / "data", pipeline="lipsync.testing.pipelines:reencode")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("playground-media")
    return {
        "face": make_face_video(d / "face.mp4", **CLIP),
        "long_face": make_face_video(d / "long-face.mp4", frames=60, size=(96, 96)),
        "speech": make_speech(d / "speech.wav"),
        "still": _still(d / "face.png", (120, 96)),
    }


def _still(path: Path, size: tuple[int, int]) -> Path:
    import cv2
    import skimage.data

    rgb = cv2.resize(skimage.data.astronaut(), size, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("chromium and chromedriver are required (scripts/setup.sh: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


# --- page helpers ---------------------------------------------------------------------------------------


def wait_for(driver, predicate: Callable[[Any], Any], timeout: float, what: str, served: Served) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(predicate)
    except TimeoutException:
        logs = driver.execute_script("return document.getElementById('logs')?.textContent")
        console = "\n".join(e["message"] for e in driver.get_log("browser"))
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}\nconsole:\n{console}\npage logs:\n{logs}\n{served.logs()}"
        ) from None


def open_page(driver, served: Served, path: str = "/") -> None:
    driver.get(served.base + path)
    wait_for(driver, lambda d: d.find_element(By.ID, "form").is_displayed(), 15, "the form", served)


def text(driver, element_id: str) -> str:
    element = driver.find_element(By.ID, element_id)
    return element.text if element.is_displayed() else ""


def set_value(driver, field: str, value: str) -> None:
    element = driver.find_element(By.ID, f"field-{field}")
    if not element.is_displayed():  # its group is folded: open it, as a user would
        element.find_element(By.XPATH, "ancestor::details/summary").click()
    element.clear()
    element.send_keys(value)


def use_url(driver, field: str, url: str) -> None:
    driver.find_element(By.ID, f"field-{field}-mode-url").click()
    driver.find_element(By.ID, f"field-{field}-url").send_keys(url)


def set_key(driver, key: str) -> None:
    box = driver.find_element(By.ID, "api-key")
    box.clear()
    box.send_keys(key)


def console_errors(driver, allowed_statuses: tuple[int, ...] = ()) -> list[dict]:
    """SEVERE console entries, less the network errors for HTTP statuses the test asked for."""
    allowed = tuple(f"status of {code} " for code in allowed_statuses)
    return [
        entry for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not (entry.get("source") == "network" and any(a in entry["message"] for a in allowed))
    ]


def history(driver) -> list[str]:
    return [li.get_attribute("data-request-id") for li in driver.find_elements(By.CSS_SELECTOR, "#history li")]


# --- the tests ----------------------------------------------------------------------------------------------


def test_upload_submit_watch_and_play(browser, lipsync_serve, clips):
    driver, served = browser, lipsync_serve
    open_page(driver, served)
    assert driver.find_element(By.ID, "key-box").is_displayed()  # keys are configured
    set_key(driver, KEY)
    labels = [s.text for s in driver.find_elements(By.CSS_SELECTOR, "#groups summary")]
    assert labels == ["Inputs", "Speaker and length", "Output size and rate", "Long-video knobs", "Conditioning", "Edits",
                      "Seed", "Video cache"]
    hint = driver.find_element(By.ID, "field-vae_chunk_size-hint").get_attribute("textContent")
    assert "8n+1" in hint and "default 65" in hint  # description and default from /openapi.json

    driver.find_element(By.ID, "field-video").send_keys(str(clips["face"]))
    driver.find_element(By.ID, "field-audio").send_keys(str(clips["speech"]))
    for field in ("video", "audio"):
        wait_for(driver, lambda d: text(d, f"field-{field}-upload").startswith("uploaded"), 20, f"{field} upload", served)
        assert driver.find_element(By.ID, f"field-{field}-progress").get_attribute("value") == "1"
    set_value(driver, "frame_rate", "20")
    driver.find_element(By.ID, "submit").click()

    wait_for(driver, lambda d: "Fetching inputs" in text(d, "logs"), 30, "the request's logs", served)
    request_id = driver.find_element(By.ID, "run-id").text
    assert history(driver) == [request_id]
    metadata = wait_for(driver, lambda d: d.execute_script(
        "const v = document.getElementById('result-video');"
        "return v.readyState >= 2 && [v.videoWidth, v.videoHeight, v.duration];"), 240, "the result video", served)
    width, height, duration = metadata
    assert (width, height) == CLIP["size"]
    assert 0.8 - 0.01 <= duration <= 0.8 + 1024 / 22050 + 0.01  # 16 frames at 20 fps; audio may end an AAC frame later

    assert text(driver, "run-status") == "completed"
    assert "NOT A TRAINED MODEL" in text(driver, "weights-warning")  # the random-weights warning, up top
    facts = text(driver, "facts")
    assert "face coverage" in facts and "RANDOM" in facts
    assert re.search(r"face_track\s", text(driver, "stages"))  # stage times from the metrics
    assert driver.find_element(By.ID, "download").get_attribute("href").startswith(served.base + "/files/")
    assert "completed" in driver.find_element(By.CSS_SELECTOR, "#history li").text.lower()
    assert console_errors(driver) == []
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert fetched and all(url.startswith(served.base + "/") for url in fetched), fetched  # offline: own origin only

    save_screenshots(driver)


def test_a_click_on_the_first_frame_sets_the_speaker_point(browser, lipsync_serve, clips, tmp_path_factory):
    """speaker = point: the video's first frame is drawn at its own size; a click on the smaller face (B) sets
    {frame: 0, x, y} in the video's pixels, and the request lip-syncs that face (the metrics say so)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    from lipsync.testing.two_speakers import SIZE, make_two_speaker_clip

    driver, served = browser, lipsync_serve
    clip = make_two_speaker_clip(tmp_path_factory.mktemp("playground-two"))
    open_page(driver, served)
    set_key(driver, KEY)
    driver.find_element(By.ID, "field-video").send_keys(str(clip.video))
    driver.find_element(By.ID, "field-audio").send_keys(str(clips["speech"]))
    Select(driver.find_element(By.ID, "field-speaker")).select_by_value("point")
    canvas = driver.find_element(By.ID, "field-speaker-canvas")
    wait_for(driver, lambda d: canvas.get_attribute("data-ready") == "1", 20, "the video's first frame", served)
    assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == SIZE
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    x0, y0, x1, y1 = clip.boxes["B"]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = canvas.size["width"], canvas.size["height"]
    ActionChains(driver).move_to_element_with_offset(canvas, round(cx * w / SIZE[0] - w / 2),
                                                     round(cy * h / SIZE[1] - h / 2)).click().perform()
    x, y = (float(driver.find_element(By.ID, f"field-speaker-{k}").get_attribute("value")) for k in "xy")
    assert abs(x - cx) <= 2 * SIZE[0] / w + 1 and abs(y - cy) <= 2 * SIZE[1] / h + 1, (x, y, cx, cy)
    for field in ("video", "audio"):
        wait_for(driver, lambda d: text(d, f"field-{field}-upload").startswith("uploaded"), 20, f"{field} upload", served)
    driver.find_element(By.ID, "submit").click()
    wait_for(driver, lambda d: text(d, "run-status") == "completed", 240, "the request to complete", served)
    body = json.loads(driver.find_element(By.ID, "request-json").get_attribute("textContent"))
    assert body["speaker"] == {"frame": 0, "x": x, "y": y} and body["sync_mode"] == "cut_off", body
    metrics = driver.find_element(By.ID, "metrics-json").get_attribute("textContent")
    assert '"mode": "point"' in metrics and f"point ({x:g}, {y:g}) at frame 0" in metrics, metrics
    assert re.search(r"speaker\s+point: track \d+ \(frames 0-69\)", text(driver, "facts")), text(driver, "facts")
    assert console_errors(driver) == []


def save_screenshots(driver) -> None:
    """The whole finished page (README's docs/playground.png is one), and the same page at phone width."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.execute_async_script(  # play it through once: the player then rests on its last frame
        "const [v, done] = [document.getElementById('result-video'), arguments[0]];"
        "v.addEventListener('ended', () => setTimeout(done, 300), {once: true});"
        "v.muted = true; v.play(); window.scrollTo(0, 0);")
    full = {"format": "png", "captureBeyondViewport": True}
    (ARTIFACTS / "playground.png").write_bytes(base64.b64decode(driver.execute_cdp_cmd("Page.captureScreenshot", full)["data"]))
    size = driver.get_window_size()
    driver.set_window_size(390, 844)
    try:
        widths = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"the page scrolls sideways at phone width: {widths}"
        phone = driver.execute_cdp_cmd("Page.captureScreenshot", full)["data"]
        (ARTIFACTS / "playground-phone.png").write_bytes(base64.b64decode(phone))
    finally:
        driver.set_window_size(size["width"], size["height"])


def test_bad_value_is_shown_beside_its_field_and_nothing_is_queued(browser, lipsync_serve):
    driver, served = browser, lipsync_serve
    open_page(driver, served)
    before, seen = history(driver), served.jobs_seen()
    set_key(driver, KEY)
    use_url(driver, "video", "https://example.com/face.mp4")
    use_url(driver, "audio", "https://example.com/speech.wav")
    set_value(driver, "vae_chunk_size", "10")
    driver.find_element(By.ID, "submit").click()

    error = wait_for(driver, lambda d: text(d, "field-vae_chunk_size-error"), 10, "the field's error", served)
    assert "8n+1" in error
    box = driver.find_element(By.ID, "field-vae_chunk_size-box")
    assert box.find_element(By.ID, "field-vae_chunk_size-error").is_displayed()  # beside the field, in its box
    assert driver.find_element(By.ID, "field-vae_chunk_size").get_attribute("aria-invalid") == "true"
    assert "vae_chunk_size" in text(driver, "form-error")
    assert driver.switch_to.active_element.get_attribute("id") == "field-vae_chunk_size"  # focus moved to it
    assert text(driver, "field-video-error") == ""  # only the field the 422 names
    assert history(driver) == before and served.jobs_seen() == seen
    assert console_errors(driver, allowed_statuses=(422,)) == []


def test_wrong_key_shows_the_401_message(browser, lipsync_serve):
    driver, served = browser, lipsync_serve
    open_page(driver, served)
    before, seen = history(driver), served.jobs_seen()
    use_url(driver, "video", "https://example.com/face.mp4")
    use_url(driver, "audio", "https://example.com/speech.wav")
    set_key(driver, "playground:wrong")
    driver.find_element(By.ID, "api-key").send_keys(Keys.ENTER)  # keyboard only: Enter submits the form

    error = wait_for(driver, lambda d: text(d, "api-key-error"), 10, "the key's error", served)
    assert error == "Unauthorized: missing or invalid API key"
    assert "unauthorized (HTTP 401)" in text(driver, "form-error")
    assert history(driver) == before and served.jobs_seen() == seen
    assert console_errors(driver, allowed_statuses=(401,)) == []
    set_key(driver, KEY)


def test_cancel_during_a_run_ends_cancelled(browser, slow_serve, clips):
    driver, served = browser, slow_serve
    open_page(driver, served, "/playground")
    assert not driver.find_element(By.ID, "key-box").is_displayed()  # no keys configured: no key box
    driver.find_element(By.ID, "field-video").send_keys(str(clips["long_face"]))
    driver.find_element(By.ID, "field-audio").send_keys(str(clips["speech"]))
    driver.find_element(By.ID, "field-use_custom_prompt").click()
    set_value(driver, "custom_prompt", "test:slow=0.2")  # 60 frames x 0.2 s: 12 s unless cancelled
    driver.find_element(By.ID, "submit").click()

    wait_for(driver, lambda d: text(d, "progress-label").startswith("encoding frame"), 30, "a progress line", served)
    assert float(driver.find_element(By.ID, "progress").get_attribute("value")) > 0
    assert text(driver, "run-status") == "running"
    driver.find_element(By.ID, "cancel").click()

    wait_for(driver, lambda d: text(d, "run-status") == "cancelled" and text(d, "run-error"), 15, "cancelled", served)
    assert text(driver, "run-error").startswith("client_cancelled:")
    request_id = driver.find_element(By.ID, "run-id").text
    status = httpx.get(f"{served.base}/pipio/lipsync/requests/{request_id}/status").json()
    assert status["status"] == "COMPLETED" and status["error_type"] == "client_cancelled"
    assert "client_cancelled" in driver.find_element(By.CSS_SELECTOR, "#history li").text
    assert not driver.find_element(By.ID, "result").is_displayed()
    assert console_errors(driver) == []


def test_an_image_for_the_video_field_and_reopening_a_request(browser, slow_serve, clips):
    driver, served = browser, slow_serve
    open_page(driver, served)
    cancelled = history(driver)[0]  # the previous test's request, kept in this tab's sessionStorage
    driver.find_element(By.ID, "field-video").send_keys(str(clips["still"]))
    driver.find_element(By.ID, "field-audio").send_keys(str(clips["speech"]))
    driver.find_element(By.ID, "submit").click()
    size = wait_for(driver, lambda d: d.execute_script(
        "const v = document.getElementById('result-video');"
        "return v.readyState >= 1 && [v.videoWidth, v.videoHeight];"), 60, "the result video", served)
    assert size == [120, 96]  # the still, re-encoded by the test pipeline
    assert history(driver)[1:] == [cancelled]

    driver.find_element(By.CSS_SELECTOR, f'#history li[data-request-id="{cancelled}"] button').click()
    wait_for(driver, lambda d: d.find_element(By.ID, "run-id").text == cancelled and text(d, "run-status") == "cancelled",
             15, "the re-opened request", served)
    assert not driver.find_element(By.ID, "result").is_displayed()
    assert console_errors(driver) == []
