"""The web demo (examples/app.py): its API through gradio_client, and the page in a real browser (headless Debian
Chromium driven by Selenium): upload a WAV, type a transcript, submit, read the rendered result, save a screenshot.

The browser tests skip, with the reason, only where Chromium or ChromeDriver is not installed (`make test` installs
both). Set CMT_SCREENSHOT_DIR to keep the screenshots (the README's is made that way)."""

import importlib.util
import os
import shutil
import socket
from pathlib import Path

import pytest
from transformers import RobertaTokenizerFast, Wav2Vec2FeatureExtractor

from modeling_cmt import CMTForSequenceClassification, CMTProcessor


gradio_client = pytest.importorskip("gradio_client", reason="the app extra (gradio) is not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
LABELS = {0: "angry", 1: "happy", 2: "neutral", 3: "sad"}
TEXT = "The book was pleasant but the game was disappointing."
APP = Path(__file__).resolve().parents[2] / "examples" / "app.py"


def _import_app():
    spec = importlib.util.spec_from_file_location("cmt_test_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config, tokenizer_dir):
    folder = tmp_path_factory.mktemp("app-checkpoint")
    CMTForSequenceClassification(tiny_config(id2label=LABELS)).save_pretrained(folder)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    CMTProcessor(
        feature_extractor=extractor, tokenizer=RobertaTokenizerFast.from_pretrained(tokenizer_dir)
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(checkpoint):
    """The app on a free loopback port, in this process; its URL."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app_module = _import_app()
    app = app_module.build_app(app_module.CMTDemo(str(checkpoint)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from benchmarks.recordings import build_recording, write_srt, write_wav

    folder = tmp_path_factory.mktemp("app-files")
    utterance, _ = build_recording(1, seed=4, pause_seconds=(0.3, 0.4))
    long, truth = build_recording(14, seed=5)
    (folder / "empty.wav").write_bytes(b"")
    return {
        "utterance": write_wav(folder / "utterance.wav", utterance),
        "long": write_wav(folder / "long.wav", long),
        "long_srt": write_srt(folder / "long.srt", truth),
        "empty": folder / "empty.wav",
    }


# --- API (gradio_client) ---------------------------------------------------------------------------------------------


def test_api_classifies_an_utterance_with_heatmap(server, files):
    client = gradio_client.Client(server, verbose=False)
    scores, heatmap, timeline, _, status = client.predict(
        gradio_client.handle_file(str(files["utterance"])), TEXT, None, False, api_name="/classify"
    )
    assert scores["label"] in LABELS.values()
    assert {entry["label"] for entry in scores["confidences"]} == set(LABELS.values())
    assert sum(entry["confidence"] for entry in scores["confidences"]) == pytest.approx(1.0, abs=1e-4)
    assert heatmap and Path(heatmap).stat().st_size > 10_000 and timeline is None
    assert f'transcript (typed): "{TEXT}"' in status


def test_api_draws_the_timeline_of_a_long_recording(server, files):
    client = gradio_client.Client(server, verbose=False)
    scores, heatmap, timeline, rows, status = client.predict(
        gradio_client.handle_file(str(files["long"])),
        "",
        gradio_client.handle_file(str(files["long_srt"])),
        False,
        api_name="/classify",
    )
    assert heatmap is None and Path(timeline).stat().st_size > 10_000
    assert sum(entry["confidence"] for entry in scores["confidences"]) == pytest.approx(1.0, abs=1e-4)
    table = rows.get("value", rows)  # a visibility update carries the table as its value
    assert "segments" in status and len(table["data"]) >= 13
    assert {row[4] for row in table["data"]} == {"transcript"}


def test_api_errors_are_messages(server, files):
    client = gradio_client.Client(server, verbose=False)
    with pytest.raises(Exception, match=r"empty \(0 bytes\)"):
        client.predict(gradio_client.handle_file(str(files["empty"])), TEXT, None, False, api_name="/classify")


# --- the page in Chromium --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        reason = (
            f"Chromium / ChromeDriver not installed ({', '.join(missing)}): apt-get install chromium chromium-driver"
        )
        print(f"SKIPPED browser tests: {reason}")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1300", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _screenshot(driver, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CMT_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    driver.save_screenshot(str(path))
    return path


def _upload_and_submit(driver, server: str, audio: Path, text: str | None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server)
    wait = WebDriverWait(driver, 30)
    upload = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    upload.send_keys(str(audio))
    if text is not None:
        box = driver.find_element(By.CSS_SELECTOR, "#text textarea")
        box.send_keys(text)
    wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#submit"))).click()
    return wait


def test_browser_upload_type_submit_shows_the_result(browser, server, files, tmp_path):
    from selenium.webdriver.common.by import By

    wait = _upload_and_submit(browser, server, files["utterance"], TEXT)
    wait.until(lambda driver: "s of audio" in driver.find_element(By.ID, "status").text)
    status = browser.find_element(By.ID, "status").text
    assert TEXT in status and any(label in status for label in LABELS.values())
    scores = browser.find_element(By.ID, "scores").text
    assert all(label in scores for label in LABELS.values())  # one bar per label
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#heatmap img"))
    image = browser.find_element(By.CSS_SELECTOR, "#heatmap img")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 300
    assert _screenshot(browser, "app.png", tmp_path).stat().st_size > 20_000


def test_browser_empty_upload_says_so(browser, server, files, tmp_path):
    from selenium.webdriver.common.by import By

    wait = _upload_and_submit(browser, server, files["empty"], TEXT)
    # the output components say "Error" first; the message itself comes in a toast a moment later
    wait.until(lambda driver: "0 bytes" in driver.find_element(By.TAG_NAME, "body").text
               or "No audio" in driver.find_element(By.TAG_NAME, "body").text)  # fmt: skip
    body = browser.find_element(By.TAG_NAME, "body").text
    _screenshot(browser, "app_empty_upload.png", tmp_path)
    assert "empty (0 bytes)" in body or "No audio" in body, body[-2000:]
