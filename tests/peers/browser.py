"""A headless browser driven by Selenium for the console's tests: Chromium (Debian's, with
chromedriver) or Firefox ESR (Debian's, with geckodriver built from crates.io). Screenshots
of each page, the page's console errors, an accessibility check with axe-core (from npm,
checked against the registry's published digest, injected into the page), signing in and
out with a key."""

import base64
import hashlib
import io
import json
import os
import tarfile
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.options import Options as ChromeOptions
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.firefox.options import Options as FirefoxOptions
from selenium.webdriver.firefox.service import Service as FirefoxService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

AXE_VERSION = "4.14.1"
AXE_INTEGRITY = ("sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFoo"
                 "JpZe37OgudVGtQ==")
CACHE = Path(__file__).resolve().parents[2] / "target" / "peers-cache"


def axe_source():
    """axe-core's axe.min.js, fetched once from the npm registry into target/."""
    path = CACHE / f"axe-core-{AXE_VERSION}.min.js"
    if not path.exists():
        url = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"
        with urllib.request.urlopen(url, timeout=60) as r:
            tgz = r.read()
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
        assert digest == AXE_INTEGRITY, f"axe-core {AXE_VERSION} is not what npm published"
        with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
            source = t.extractfile("package/axe.min.js").read()
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source)
    return path.read_text()


def chromium(downloads):
    options = ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=ChromeService(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")),
        options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": downloads})
    return driver


def firefox(downloads):
    options = FirefoxOptions()
    options.binary_location = os.environ.get("FIREFOX", "/usr/bin/firefox-esr")
    for arg in ["-headless", "--width=1280", "--height=1000"]:
        options.add_argument(arg)
    for name, value in [
        ("browser.download.folderList", 2), ("browser.download.dir", downloads),
        ("browser.download.useDownloadDir", True),
        ("browser.download.always_ask_before_handling_new_types", False),
        ("browser.helperApps.neverAsk.saveToDisk",
         "text/csv,application/vnd.apache.parquet,application/octet-stream"),
    ]:
        options.set_preference(name, value)
    # WebDriver BiDi: how Firefox reports the page's console errors. Prompts wait for the
    # test to answer them.
    options.enable_bidi = True
    options.unhandled_prompt_behavior = "ignore"
    geckodriver = os.environ.get("GECKODRIVER", str(CACHE.parent / "peers-tools/bin/geckodriver"))
    return webdriver.Firefox(service=FirefoxService(geckodriver), options=options)


class Browser:
    def __init__(self, engine, base, shots):
        self.engine, self.base, self.shots = engine, base, shots
        os.makedirs(shots, exist_ok=True)
        for old in Path(shots).glob("*.png"):
            old.unlink()
        self.downloads = os.path.join(shots, "downloads")
        os.makedirs(self.downloads, exist_ok=True)
        for f in os.listdir(self.downloads):
            os.remove(os.path.join(self.downloads, f))
        self.driver = {"chromium": chromium, "firefox": firefox}[engine](self.downloads)
        self.logged = []
        if engine == "firefox":
            self.driver.script.add_console_message_handler(
                lambda m: m.level == "error" and self.logged.append(
                    {"level": "SEVERE", "message": m.text}))
            self.driver.script.add_javascript_error_handler(
                lambda e: self.logged.append({"level": "SEVERE", "message": e.text}))
        # Pages re-render as they change: an element may go away between finding and
        # reading it; a dialog opens a moment after the click that asks for it.
        self.wait = WebDriverWait(self.driver, 30, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException, NoAlertPresentException))
        self.errors = []
        # Console lines a test provoked on purpose (a refusal it asked for).
        self.expected = []
        self.axe = axe_source()
        self.checked = {}

    def quit(self):
        self.driver.quit()

    def go(self, hash_path):
        self.driver.get(f"{self.base}/{hash_path}")

    def find(self, css):
        return self.wait.until(lambda d: d.find_element(By.CSS_SELECTOR, css))

    def text(self, css):
        return self.find(css).text

    def until_text(self, css, part):
        """The text of `css` once it contains `part` (the last text seen if it never does)."""
        seen = [None]

        def has(d):
            seen[0] = d.find_element(By.CSS_SELECTOR, css).text
            return part in seen[0]
        try:
            self.wait.until(has)
        except TimeoutException:
            raise AssertionError(f"{css} never showed {part!r}; it shows {seen[0]!r}") from None
        return seen[0]

    def fill(self, css, value):
        field = self.find(css)
        field.clear()
        field.send_keys(value)

    def click(self, css):
        self.find(css).click()

    def button(self, text):
        """The button whose text is `text`."""
        return self.wait.until(lambda d: next(
            b for b in d.find_elements(By.TAG_NAME, "button") if b.text == text))

    def rows(self, table_id):
        """The cells of each body row of the table (or table body) `table_id`."""
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in self.driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tr")]
        return [row for row in rows if row]

    def alert(self):
        """The dialog the page opened (confirm, prompt), once it is open."""
        return self.wait.until(lambda d: d.switch_to.alert)

    def no_alert(self):
        try:
            alert = self.driver.switch_to.alert
            raise AssertionError(f"an alert ran: {alert.text}")
        except NoAlertPresentException:
            pass

    def console_errors(self):
        if self.engine == "chromium":
            return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        taken, self.logged = self.logged, []
        return taken

    def screenshot(self, path):
        """The whole page, not only what the window shows."""
        if self.engine == "firefox":
            self.driver.save_full_page_screenshot(path)
            return
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        png = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"],
                     "height": min(size["height"], 8000), "scale": 1}})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(png))

    def shot(self, name):
        """A screenshot of the page, its console errors kept, and axe-core's serious or
        critical findings on it (none allowed)."""
        self.screenshot(os.path.join(self.shots, f"{name}.png"))
        self.errors.extend(e for e in self.console_errors()
                           if not any(part in e["message"] for part in self.expected))
        self.driver.execute_script(self.axe)
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, { resultTypes: ['violations'] })"
            ".then((r) => done(JSON.stringify(r.violations)), (e) => done(JSON.stringify(String(e))));")
        violations = json.loads(result)
        assert isinstance(violations, list), violations
        bad = [{"id": v["id"], "impact": v["impact"], "help": v["help"],
                "nodes": [n["html"][:120] for n in v["nodes"][:3]]}
               for v in violations if v["impact"] in ("serious", "critical")]
        assert not bad, f"{name}: accessibility violations {json.dumps(bad, indent=1)}"
        self.checked[name] = [f"{v['id']} ({v['impact']})" for v in violations]

    def sign_in(self, key, name):
        self.go("#/signin")
        self.fill("#key", key)
        self.click("#signin-form button[type=submit]")
        self.wait.until(lambda d: d.current_url.endswith("#/me")
                        and d.find_element(By.TAG_NAME, "h1").text == name)
        assert key not in self.driver.page_source

    def sign_out(self):
        self.click("#signout")
        self.wait.until(lambda d: d.find_element(By.ID, "nav-signin").is_displayed())

    def downloaded(self, name):
        path = os.path.join(self.downloads, name)
        self.wait.until(lambda d: os.path.exists(path) and os.path.getsize(path) > 0 and not any(
            f.endswith((".crdownload", ".part")) for f in os.listdir(self.downloads)))
        with open(path, "rb") as f:
            return f.read()


def api(base, key, path, body=None, method=None):
    """One API call with a key, as a device or script would make it: (status, JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
