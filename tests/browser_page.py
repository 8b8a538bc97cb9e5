"""Drive the demo page in a real headless Chromium, as a person would: choose digits, press Generate, read the grid.

Debian's `chromium` and `chromium-driver` packages (`apt-get install -y chromium chromium-driver`) are the browser;
Selenium drives them and never downloads a browser or driver of its own (SE_OFFLINE). The browser resolves no name but
the loopback address, and every request the page made is kept, so a test can show that it fetched nothing from
outside.

`python -m tests.browser_page --model pretrained/ddpm-mnist --out docs/demo.png` takes the documentation's screenshot.
"""

import argparse
import base64
import io
import json
import os
import shutil

import PIL.Image

CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"
WAIT_SECONDS = 60


def browser_available() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


class DemoPage:
    """One headless Chromium on the page at ``url``."""

    def __init__(self, url: str, width: int = 1280, height: int = 1100):
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: use the given binaries, fetch nothing
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which(CHROMIUM)
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--window-size={width},{height}",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        ):
            options.add_argument(flag)  # fmt: skip
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(shutil.which(CHROMEDRIVER)))
        self.requested: list[str] = []
        self.driver.get(url)
        self._wait_for("#generate")

    def close(self):
        self.driver.quit()

    def _find(self, css):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def _wait_for(self, css, condition=None):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        condition = condition or expected_conditions.presence_of_element_located
        return WebDriverWait(self.driver, WAIT_SECONDS).until(condition((By.CSS_SELECTOR, css)))

    def choose(self, digits: list[int], count: int | str, seed: int | str):
        """Tick exactly ``digits``, and type the count and the seed."""
        for box in self.driver.find_elements("css selector", "#digits input[type=checkbox]"):
            label = box.find_element("xpath", "./ancestor::label").text.strip()
            if box.is_selected() != (label in {str(d) for d in digits}):
                box.find_element("xpath", "./ancestor::label").click()
        for css, value in (("#count input", count), ("#seed textarea, #seed input", seed)):
            field = self._find(css)
            field.clear()
            field.send_keys(str(value))

    def generate(self) -> PIL.Image.Image:
        """Press Generate and return the grid the page shows, read back from the page's own image."""
        previous = self._grid_source()
        self._find("#generate").click()
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, WAIT_SECONDS).until(lambda _: self._grid_source() not in (None, previous))
        source = self._grid_source()
        data = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {"
            "  let s = ''; new Uint8Array(b).forEach(x => s += String.fromCharCode(x)); done(btoa(s)); });",
            source,
        )
        return PIL.Image.open(io.BytesIO(base64.b64decode(data)))

    def _grid_source(self) -> str | None:
        images = self.driver.find_elements("css selector", "#grid img")
        return images[0].get_attribute("src") if images else None

    def message(self) -> str:
        """The text of the message the page shows (an error toast), once it has its text."""
        from selenium.webdriver.support.ui import WebDriverWait

        def shown(driver):
            return " ".join(toast.text for toast in driver.find_elements("css selector", ".toast-body")).strip()

        return WebDriverWait(self.driver, WAIT_SECONDS).until(shown)

    def timing(self) -> str:
        return self._find("#timing").text

    def screenshot(self, path):
        self.driver.save_screenshot(str(path))

    def requests(self) -> list[str]:
        """Every URL the page has asked for so far (from the browser's own network log)."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requested.append(message["params"]["request"]["url"])
        return self.requested


def main(argv=None):
    parser = argparse.ArgumentParser(description="The demo page's screenshot, from a real headless Chromium.")
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--digits", default="2,3,5,7")
    parser.add_argument("--count", type=int, default=36)
    parser.add_argument("--seed", default="0")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from ddpm_pipeline.demo import Sampler, build_demo

    demo = build_demo(Sampler(args.model))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    page = DemoPage(url, height=1500)
    try:
        page.choose([int(d) for d in args.digits.split(",")], args.count, args.seed)
        page.generate()
        page.driver.execute_script("document.querySelector('#timing').scrollIntoView({block: 'end'})")
        page.screenshot(args.out)
        print(page.timing())
    finally:
        page.close()
        demo.close()


if __name__ == "__main__":
    main()
