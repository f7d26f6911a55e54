"""The playground page (GET /) in a real browser: headless Chromium driven by Selenium, against
`python -m service` with an API key on and the built-in family.

Chromium and its driver come from Debian (`.ci/run` installs them, with FEWSTEP_REQUIRE_BROWSER=1
so that a missing browser fails there instead of skipping). FEWSTEP_SCREENSHOT=PATH saves a
screenshot of the page at the end of the main test.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from service.images import mask_of, resized_mask, resized_rgb
from service.testing import Service

pytestmark = pytest.mark.slow

KEY = "playground-test-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def keyed_service(redis_server, tmp_path_factory):
    svc = Service(redis_server.url, log_dir=tmp_path_factory.mktemp("logs"), queue_prefix="playground", api_key=KEY, torch_threads=1)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("FEWSTEP_REQUIRE_BROWSER"):
            pytest.fail("FEWSTEP_REQUIRE_BROWSER is set but chromium / chromedriver are not installed")
        pytest.skip("needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000", "--disable-background-networking", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 60, what: str = ""):
    """Poll a JS expression until it is truthy; return its value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script("return " + script)
        if value:
            return value
        time.sleep(0.05)
    shown = driver.execute_script("const e = document.getElementById('error'); return e ? e.textContent : null")
    raise AssertionError(f"timed out waiting for {what or script}; error box: {shown!r}")


def top_card(driver) -> dict:
    return driver.execute_script(
        """const c = document.querySelector('#results .result'); if (!c) return null;
        const facts = {}; c.querySelectorAll('dd').forEach(d => facts[d.dataset.fact] = d.textContent);
        return {facts, images: [...c.querySelectorAll('img')].map(i => i.src)};"""
    )


def decode(src: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def requested_hosts(driver) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def severe_console(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_playground_draws_steers_inpaints_and_shows_errors(keyed_service, browser, tmp_path):
    svc, d = keyed_service, browser
    d.get(svc.url + "/")
    d.execute_script(f"localStorage.setItem('fewstep-api-key', '{KEY}')")
    d.get_log("browser"), d.get_log("performance")  # the first visit ran without the key: forget it
    d.refresh()
    wait_for(d, "window.fewstep && window.fewstep.models.length > 0", what="the model list")
    assert d.execute_script("return document.getElementById('model').value") == "shapes"

    # a prompt draws an image (4 steps: through a job and its progress stream)
    prompt = d.find_element("id", "prompt")
    prompt.clear()
    prompt.send_keys("a yellow circle on a black background")
    d.find_element("id", "run").click()
    wait_for(d, "document.querySelectorAll('#results .result img').length > 0", what="the first image")
    first = top_card(d)
    assert decode(first["images"][0]).shape == (16, 16, 3)
    assert first["facts"]["steps"] == "4" and first["facts"]["prompt"] == "a yellow circle on a black background"
    assert first["facts"]["network evaluations"] == "4 per image"

    # moving the slider redraws while it moves; the last image carries the last guidance
    d.execute_script("document.getElementById('new-seed').checked = false")
    frames_before = d.execute_script("return window.fewstep.frames.length")
    started = time.time()
    values = [round(0.05 * k, 2) for k in range(0, 81)]  # 0 -> 4 over ~3 s
    for g in values:
        d.execute_script("const s = document.getElementById('guidance'); s.value = arguments[0]; s.dispatchEvent(new Event('input'));", g)
        time.sleep(0.035)
    dragged = time.time() - started
    wait_for(d, "!window.fewstep.live.inflight && !window.fewstep.live.pending", what="the last redraw")
    frames = d.execute_script("return window.fewstep.frames.slice(arguments[0])", frames_before)
    during = [f for f in frames if f - frames[0] <= dragged * 1000] if frames else []
    fps = len(during) / dragged
    print(f"\n[playground] slider drag: {len(frames)} images shown in {dragged:.2f} s of dragging ({fps:.1f} per second)")
    assert len(frames) >= 2, "the image was not redrawn while the slider moved"
    last = top_card(d)
    assert float(last["facts"]["guidance"]) == 4.0
    info = httpx.post(svc.url + "/v1/png-info", json={"image": last["images"][0]}, headers={"X-API-Key": KEY}, timeout=30).json()
    assert info["settings"]["guidance"] == 4.0 and info["settings"]["seed"] == int(last["facts"]["seed"])
    d.execute_script("const s = document.getElementById('guidance'); s.value = 0; s.dispatchEvent(new Event('input'));")
    wait_for(d, "!window.fewstep.live.inflight && !window.fewstep.live.pending && document.querySelector('#results dd[data-fact=guidance]').textContent === '0'", what="the gamma 0 redraw")
    assert not np.array_equal(decode(top_card(d)["images"][0]), decode(last["images"][0])), "guidance 0 and 4 drew the same image"

    # inpainting: paint the left half of the mask; the unpainted pixels come back unchanged
    source = Image.new("RGB", (64, 64), (30, 120, 200))
    for x in range(40, 60):
        for y in range(10, 50):
            source.putpixel((x, y), (240, 200, 30))
    path = tmp_path / "source.png"
    source.save(path)
    d.find_element("css selector", ".tabs button[data-mode=inpaint]").click()
    d.find_element("id", "file").send_keys(str(path))
    wait_for(d, "window.fewstep.image !== null", what="the uploaded image")
    from selenium.webdriver import ActionChains

    canvas = d.find_element("id", "mask")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    chain = ActionChains(d).move_to_element_with_offset(canvas, -100, -110).click_and_hold()
    for y in range(-110, 111, 20):
        chain = chain.move_to_element_with_offset(canvas, -100, y).move_to_element_with_offset(canvas, -20, y)
    chain.release().perform()
    results_before = d.execute_script("return document.querySelectorAll('#results .result').length")
    d.find_element("id", "run").click()
    wait_for(d, f"document.querySelectorAll('#results .result').length > {results_before}", what="the inpainted image")
    sent = d.execute_script("return window.fewstep.lastRequest")
    assert sent["path"] == "/v1/inpaint"
    sent_image = Image.open(io.BytesIO(base64.b64decode(sent["body"]["image"].split(",", 1)[1])))
    sent_mask = mask_of(Image.open(io.BytesIO(base64.b64decode(sent["body"]["mask"].split(",", 1)[1]))))
    assert 0.2 < sent_mask.mean() < 0.6, f"the painted mask covers {sent_mask.mean():.2f} of the image"
    kept = ~mask_of(Image.open(io.BytesIO(resized_mask(sent_mask, 16))))
    expected = np.asarray(Image.open(io.BytesIO(resized_rgb(sent_image, 16))).convert("RGB"))
    out = decode(top_card(d)["images"][0])
    assert kept.any() and np.array_equal(out[kept], expected[kept])

    # the page loaded and ran with no console errors and no request to another host
    assert severe_console(d) == []
    foreign = {u for u in requested_hosts(d) if not (u.startswith(svc.url) or u.startswith("data:") or u.startswith("blob:"))}
    assert not foreign, foreign

    # a guidance sweep from the page: one seed at five gammas, side by side
    d.find_element("css selector", ".tabs button[data-mode=generate]").click()
    cards = d.execute_script("return document.querySelectorAll('#results .result').length")
    d.find_element("id", "sweep").click()
    wait_for(d, f"document.querySelectorAll('#results .result').length > {cards}", what="the sweep")
    sweep = top_card(d)
    assert len(sweep["images"]) == 5 and sweep["facts"]["guidance"] == "0, 1, 2, 3, 4"
    assert len({decode(src).tobytes() for src in sweep["images"]}) == 5

    # a PNG dropped on the page brings back its settings
    d.execute_script("document.getElementById('seed').value = 7; document.getElementById('prompt').value = 'something else';"
                     "const g = document.getElementById('guidance'); g.value = 2.5; document.getElementById('live').checked = false;")
    d.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0].split(',')[1]), c => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        document.getElementById('settings-drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));""",
        first["images"][0],
    )
    wait_for(d, "document.getElementById('seed').value === String(arguments_seed)".replace("arguments_seed", first["facts"]["seed"]), what="the dropped PNG's settings")
    assert d.execute_script("return document.getElementById('prompt').value") == "a yellow circle on a black background"
    assert float(d.execute_script("return document.getElementById('guidance').value")) == float(first["facts"]["guidance"])
    if os.environ.get("FEWSTEP_SCREENSHOT"):
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(os.environ["FEWSTEP_SCREENSHOT"])

    # an API error is shown: a wrong key
    key = d.find_element("id", "api-key")
    key.clear()
    key.send_keys("wrong-key")
    d.find_element("id", "prompt").click()  # the key field's change event reloads the models
    text = wait_for(d, "!document.getElementById('error').hidden && document.getElementById('error').textContent", what="the error message")
    assert "401" in text and "API key" in text


def test_the_api_docs_work_offline(keyed_service, browser):
    d = browser
    d.get_log("performance")
    for path, ready in (("/docs", "document.querySelector('.swagger-ui .opblock')"), ("/redoc", "document.querySelector('[data-section-id]') || document.querySelector('.api-content')")):
        d.get(keyed_service.url + path)
        wait_for(d, ready, what=f"{path} rendered")
    foreign = {u for u in requested_hosts(d) if not (u.startswith(keyed_service.url) or u.startswith("data:") or u.startswith("blob:"))}
    assert not foreign, foreign
