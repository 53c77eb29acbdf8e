"""The web console in a real browser: headless Chromium (Debian's, with chromedriver) driven
by Selenium. Browses the catalog (a provider's title made of HTML shows as text), signs in,
takes a free plan, watches a device's readings arrive in the live chart (the page's own
count), charts an hour of history and checks its points against the query API, downloads
the CSV, signs out; no console error on the way. Screenshots of each page go to SHOTS.

usage: console_browser.py BASE SUBSCRIBER_KEY DEVICE_KEY SHOTS
"""

import json
import os
import shutil
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

XSS = "<img src=x onerror=alert(1)>"
base, key, device, shots = sys.argv[1:5]
downloads = os.path.join(shots, "downloads")
shutil.rmtree(downloads, ignore_errors=True)
os.makedirs(downloads)

options = Options()
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1000"]:
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(
    service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)
driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                       {"behavior": "allow", "downloadPath": downloads})
# Pages re-render as they change: an element may go away between finding and reading it.
wait = WebDriverWait(driver, 30, ignored_exceptions=(NoSuchElementException,
                                                     StaleElementReferenceException))
seen_errors = []


def shot(name):
    driver.save_screenshot(os.path.join(shots, f"{name}.png"))
    seen_errors.extend(e for e in driver.get_log("browser") if e["level"] == "SEVERE")


def no_alert():
    try:
        alert = driver.switch_to.alert
        raise AssertionError(f"an alert ran: {alert.text}")
    except NoAlertPresentException:
        pass


def post(readings):
    req = urllib.request.Request(
        f"{base}/v1/datasets/traffic-counts/readings", data=json.dumps(readings).encode(),
        headers={"Authorization": f"Bearer {device}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 204, r.status


def api(path):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


try:
    # Anyone: the catalog, with a provider's HTML title as text.
    driver.get(base + "/")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#catalog > li")) >= 4)
    title = driver.find_element(By.CSS_SELECTOR, '[data-dataset="weather"] h2 a').text
    assert title == XSS, title
    assert not driver.find_elements(By.CSS_SELECTOR, "#catalog img")
    no_alert()
    shot("catalog")

    # Sign in: the key is exchanged for a session.
    driver.get(base + "/#/signin")
    wait.until(lambda d: d.find_element(By.ID, "key")).send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#signin-form button[type=submit]").click()
    wait.until(lambda d: d.current_url.endswith("#/me")
               and d.find_element(By.TAG_NAME, "h1").text == "Mobility Lab")
    assert key not in driver.page_source
    shot("account")

    # A free plan, then the live chart.
    driver.get(base + "/#/dataset/traffic-counts")
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-plan="open"]')).click()
    wait.until(lambda d: "Subscribed" in d.find_element(By.ID, "subscribe-status").text)
    wait.until(lambda d: d.find_element(By.ID, "live-count"))

    def counted():
        return int(driver.find_element(By.ID, "live-count").text)

    sent, deadline, n = 0, time.time() + 30, 0
    while counted() < 20:
        assert time.time() < deadline, f"the live chart counted {counted()} of {sent} sent"
        now = int(time.time() * 1000)
        post([{"sensor_id": f"br-{i}", "ts": now + i, "vehicle_count": (n + i) % 17}
              for i in range(5)])
        sent, n = sent + 5, n + 5
        time.sleep(0.2)  # the device's pace
    shot("live")

    # History: an hour in minute buckets, the same points as the query API gives.
    Select(driver.find_element(By.ID, "history-range")).select_by_value("1|1m")
    wait.until(lambda d: d.find_element(By.ID, "history-status").text.endswith("buckets")
               and "1m" in Select(d.find_element(By.ID, "history-range"))
               .first_selected_option.text)
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#history-rows tr")]
    shown = [(b, float(m)) for b, m in rows if m != ""]
    frm = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    answer = api(f"/v1/datasets/traffic-counts/aggregate?from={frm}&every=1m&fn=mean"
                 "&group_by=none&fields=vehicle_count")
    expected = [(b["bucket"], b["vehicle_count_mean"]) for b in answer["buckets"]
                if b["vehicle_count_mean"] is not None]
    assert len(shown) == len(expected) and all(
        a[0] == b[0] and abs(a[1] - b[1]) < 1e-9 for a, b in zip(shown, expected)
    ), (shown, expected)
    shot("history")

    # The CSV download, on the session.
    driver.find_element(By.ID, "history-csv").click()
    path = os.path.join(downloads, "traffic-counts.csv")
    wait.until(lambda d: os.path.exists(path)
               and not any(f.endswith(".crdownload") for f in os.listdir(downloads)))
    lines = open(path).read().splitlines()
    assert lines[0].startswith("sensor_id,ts,vehicle_count"), lines[0]
    assert len(lines) - 1 == sent, (len(lines) - 1, sent)

    # Sign out: the session ends.
    driver.find_element(By.ID, "signout").click()
    wait.until(lambda d: d.find_element(By.ID, "nav-signin").is_displayed())
    shot("signed-out")
    assert not seen_errors, seen_errors
    print(json.dumps({"sent": sent, "buckets": len(shown), "csv_rows": len(lines) - 1}))
finally:
    driver.quit()
