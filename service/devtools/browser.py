"""Debian's headless Chromium, driven through Debian's chromium-driver (Selenium): what the dashboard's tests and
bench open the page in. Selenium is the `test` extra's; nothing at runtime imports this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def missing() -> list[str]:
    """What a browser session needs and this machine lacks."""
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        absent.append("selenium (the test extra)")
    return absent


def chromium(width: int = 1400, height: int = 1000, performance_log: bool = False) -> Any:
    """A headless Chromium session (a selenium WebDriver) whose console is logged; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    logs = {"browser": "ALL", **({"performance": "ALL"} if performance_log else {})}
    options.set_capability("goog:loggingPrefs", logs)
    # the driver Debian installs beside the browser, never one Selenium's manager would download
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
