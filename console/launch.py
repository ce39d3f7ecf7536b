"""Starting the console: the Streamlit command line (`python -m console.launch`, what
`evolora console` runs), the same in a background process for tests and scripts, and a
headless-browser screenshot of one page.

    python -m console.launch --host 127.0.0.1 --port 8501
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:  # selenium is a dev dependency: the tests and the screenshot script
    from selenium.webdriver.chrome.webdriver import WebDriver

APP = Path(__file__).resolve().parent / "app.py"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless and quiet: no GPU, no sync, no updates, no network of its own.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def streamlit_command(host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """`streamlit run console/app.py` bound to `host:port`, headless, without telemetry."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            # A failure the page did not turn into a sentence still shows no traceback.
            "--client.showErrorDetails", "none", "--client.toolbarMode", "minimal"]


@contextmanager
def running_console(env: dict[str, str], port: int, timeout_s: float = 120.0
                    ) -> Iterator[str]:
    """The console in a background process on 127.0.0.1:`port` until the block ends."""
    process = subprocess.Popen(streamlit_command("127.0.0.1", port),
                               env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"the console did not start: {output[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def chromium(profile_dir: Path, width: int = 1400, height: int = 1000) -> WebDriver:
    """A headless Debian chromium under selenium (no browser download), empty profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise RuntimeError("needs Debian's chromium and chromium-driver: "
                           "`apt-get install -y chromium chromium-driver`")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--window-size={width},{height}",
                 f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def screenshot_progress(url: str, out: Path, timeout_s: float = 120.0) -> Path:
    """A PNG of the console's progress page at `url`, once its charts have drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(Path(profile), height=1600)
        try:
            driver.get(f"{url}/progress")
            wait = WebDriverWait(driver, timeout_s)
            wait.until(lambda d: any(word in d.find_element(By.TAG_NAME, "body").text
                                     for word in ("Decisions", "No finished cycle")))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "canvas, svg.marks")
                       or "No finished cycle" in d.find_element(By.TAG_NAME, "body").text)
            time.sleep(1.5)  # the charts' first paint
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the evolora web console (Streamlit).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    args = parser.parse_args()
    command = streamlit_command(args.host, args.port)
    # Replaced, not wrapped: a signal to this process reaches Streamlit itself.
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
