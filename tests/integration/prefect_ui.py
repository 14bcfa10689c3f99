"""What a person does in the Prefect UI, as Selenium steps: open a deployment's run form, fill
it, submit, open the run, read its logs and its table artifact. ``v2`` is the React UI (Prefect's
default since 3.x, served under ``/v2``), ``v1`` the Vue UI served at the root.

Fields are found by their label, the way a person reads the form, never by position."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

T = TypeVar("T")

PAGE = 90.0  # seconds for a page of the UI to render (2 shared cores: ~10 s is common)


def wait_for(
    driver: WebDriver, what: str, probe: Callable[[], T | None], timeout: float = PAGE
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            found = probe()
            if found:
                return found
        except StaleElementReferenceException as exc:  # the page re-rendered under us
            last = exc
        except WebDriverException as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what} (at {driver.current_url})"
                + (f": {last.msg if hasattr(last, 'msg') else last}" if last else "")
            )
        time.sleep(0.3)


def open_page(driver: WebDriver, url: str, what: str, probe: Callable[[], T | None]) -> T:
    """Open ``url`` and wait for ``probe``; a page still blank after half the wait is loaded
    again once (on a busy machine the UI's first load now and then never renders), as a
    person would reload it."""
    driver.get(url)
    try:
        return wait_for(driver, what, probe, timeout=PAGE / 2)
    except AssertionError:
        driver.get(url)
        return wait_for(driver, what, probe)


def _xpath_text(text: str) -> str:
    return "'" + text + "'" if "'" not in text else '"' + text + '"'


def field_group(scope: WebDriver | WebElement, label: str) -> WebElement:
    """The block of one form field: its label (``label`` or ``label (Optional)``), description
    and input."""
    from selenium.webdriver.common.by import By

    optional = _xpath_text(f"{label} (Optional)")
    want = f"normalize-space()={_xpath_text(label)} or normalize-space()={optional}"
    lab = scope.find_element(By.XPATH, f".//label[{want}]")
    # v2 wraps a field in div.group, v1 in div.p-label
    return lab.find_element(
        By.XPATH,
        "./ancestor::div[contains(concat(' ', @class, ' '), ' group ')"
        " or contains(concat(' ', @class, ' '), ' p-label ')][1]",
    )


def run_name(driver: WebDriver) -> str:
    """The name the form gives the run (the box under "Run Name")."""
    from selenium.webdriver.common.by import By

    label = driver.find_element(By.XPATH, "//label[normalize-space()='Run Name']")
    return label.find_element(By.XPATH, "./following::input[1]").get_attribute("value") or ""


def type_into(element: WebElement, value: str) -> None:
    """Replace what a text box holds, as a person does: select all, type over it (the first
    key replaces the selection; the box is never left empty on the way)."""
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(value)


class RunFormV2:
    """The run form of a deployment in the v2 UI (``/v2/deployments/deployment/ID/run``)."""

    def __init__(
        self, driver: WebDriver, base_url: str, deployment_id: str, parameter: str = "job"
    ) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.base_url = base_url
        self.deployment_id = deployment_id
        labels = f"normalize-space()='{parameter}' or normalize-space()='{parameter} (Optional)'"
        open_page(
            driver,
            f"{base_url}/v2/deployments/deployment/{deployment_id}/run",
            f"the run form's {parameter} parameter",
            lambda: driver.find_elements(By.XPATH, f"//label[{labels}]"),
        )

    def run_name(self) -> str:
        return run_name(self.driver)

    def job_tabs(self) -> list[tuple[str, bool]]:
        """The job kinds offered, and which is selected."""
        from selenium.webdriver.common.by import By

        tablist = field_group(self.driver, "job").find_element(By.XPATH, ".//div[@role='tablist']")
        return [
            (tab.text, tab.get_attribute("aria-selected") == "true")
            for tab in tablist.find_elements(By.XPATH, "./button[@role='tab']")
        ]

    def choose_kind(self, kind: str) -> None:
        """Select the job kind's tab: a click, then the arrow keys (a click on another tab of
        a freshly opened form does not always take; see ``select`` below)."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        def tabs() -> list[WebElement]:
            group = field_group(self.driver, "job")
            return group.find_elements(By.XPATH, ".//div[@role='tablist'][1]/button[@role='tab']")

        names = [t.text for t in tabs()]
        assert kind in names, f"no {kind} tab in the job parameter: {names}"
        tabs()[names.index(kind)].click()
        for _ in range(10):
            states = [t.get_attribute("aria-selected") == "true" for t in tabs()]
            active = states.index(True)
            if names[active] == kind:
                return
            tab = tabs()[active]
            self.driver.execute_script("arguments[0].focus()", tab)
            key = Keys.ARROW_RIGHT if names.index(kind) > active else Keys.ARROW_LEFT
            ActionChains(self.driver).send_keys(key).perform()
            time.sleep(0.3)
        raise AssertionError(f"the {kind} tab could not be selected: {self.job_tabs()}")

    def selected_kind(self) -> str:
        return next(name for name, selected in self.job_tabs() if selected)

    def job_panel(self) -> WebElement:
        from selenium.webdriver.common.by import By

        return field_group(self.driver, "job").find_element(
            By.XPATH, ".//div[@role='tabpanel' and @data-state='active']"
        )

    def job_text(self, label: str, value: str) -> None:
        """Type ``value`` into the job's text (or number) field ``label``."""
        from selenium.webdriver.common.by import By

        box = field_group(self.job_panel(), label).find_element(
            By.XPATH, "./fieldset//textarea | ./fieldset//input"
        )
        type_into(box, value)

    def job_list(self, label: str, values: list[str]) -> None:
        """Make the job's list field ``label`` hold ``values``: edit the items there are, add
        the rest with "Add item"."""
        from selenium.webdriver.common.by import By

        def boxes() -> list[WebElement]:
            return field_group(self.job_panel(), label).find_elements(
                By.XPATH, "./fieldset//textarea"
            )

        for i, value in enumerate(values):
            if i >= len(boxes()):
                field_group(self.job_panel(), label).find_element(
                    By.XPATH, "./fieldset//button[normalize-space()='Add item']"
                ).click()
                wait_for(self.driver, f"item {i + 1} of {label}", lambda i=i: len(boxes()) > i)
            type_into(boxes()[i], value)
        assert len(boxes()) == len(values), f"{label} has more items than {values}"

    def flow_text(self, label: str, value: str) -> None:
        """Type into a flow-level parameter (``cluster``)."""
        from selenium.webdriver.common.by import By

        box = field_group(self.driver, label).find_element(By.XPATH, "./fieldset//textarea")
        type_into(box, value)

    def submit(self) -> None:
        submit(self.driver, lambda: runs_of(self.base_url, self.deployment_id))


UNKNOWN_CREATE_ERROR = "Unknown error while creating flow run."


def runs_of(base_url: str, deployment_id: str) -> int:
    """How many flow runs the deployment has, asked of the server's API (not the UI)."""
    import json
    import urllib.request

    body = json.dumps({"deployments": {"id": {"any_": [deployment_id]}}}).encode()
    request = urllib.request.Request(
        f"{base_url}/api/flow_runs/count",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return int(json.load(resp))


def console_errors(driver: WebDriver) -> list[str]:
    """The browser console's warnings and errors since the last call (failed requests show
    there with their status)."""
    from selenium.common.exceptions import WebDriverException

    try:
        entries = driver.get_log("browser")
    except WebDriverException:  # a driver started without console logging
        return []
    return [e["message"] for e in entries if e.get("level") in ("WARNING", "SEVERE")]


def submit(driver: WebDriver, runs: Callable[[], int], attempts: int = 3) -> None:
    """Click Submit and wait for the UI to leave the form for the deployment's runs (both UIs
    do once the run is created). On a busy machine a click now and then does nothing at all (no
    run, no message); a person clicks again, and so does this, at most ``attempts`` times.

    The v2 form now and then answers the first run of a fresh browser with "Unknown error while
    creating flow run." and no run is made (``runs`` -- the deployment's run count, from the
    API -- did not change): a person clicks again, and so does this. Any other message ends
    the wait with that message and the browser console's errors."""
    from selenium.webdriver.common.by import By

    for _ in range(attempts):
        before = runs()
        console_errors(driver)  # only what this click causes is reported
        driver.find_element(By.XPATH, "//button[normalize-space()='Submit']").click()
        try:
            wait_for(driver, "the deployment's runs", lambda: "tab=Runs" in driver.current_url, 30)
            return
        except AssertionError:
            toasts = [t.text for t in driver.find_elements(By.XPATH, "//*[@data-sonner-toast]")]
            toasts += [t.text for t in driver.find_elements(By.CSS_SELECTOR, ".p-toast")]
            toasts = [t for t in toasts if t]
            console = console_errors(driver)
            if toasts == [UNKNOWN_CREATE_ERROR] and runs() == before:
                print(f"submit: {UNKNOWN_CREATE_ERROR!r}, no run made; console: {console}")
                for close in driver.find_elements(By.XPATH, "//*[@data-sonner-toast]//button"):
                    close.click()
                continue
            assert not toasts, f"submitting the form said: {toasts}; console: {console}"
    raise AssertionError(f"Submit did not create a run after {attempts} clicks")


class RunFormV1:
    """The run form in the v1 UI (``/deployments/deployment/ID/run``)."""

    def __init__(self, driver: WebDriver, base_url: str, deployment_id: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.base_url = base_url
        self.deployment_id = deployment_id
        open_page(
            driver,
            f"{base_url}/deployments/deployment/{deployment_id}/run",
            "the run form's job parameter",
            lambda: driver.find_elements(By.XPATH, "//label[normalize-space()='job']"),
        )

    def job_box(self) -> WebElement:
        """The job parameter's input: a JSON text box, not a form."""
        from selenium.webdriver.common.by import By

        return field_group(self.driver, "job").find_element(By.TAG_NAME, "textarea")

    def job_json(self) -> str:
        return self.job_box().get_attribute("value") or ""

    def type_job_json(self, text: str) -> None:
        type_into(self.job_box(), text)

    def run_name(self) -> str:
        return run_name(self.driver)

    def flow_text(self, label: str, value: str) -> None:
        from selenium.webdriver.common.by import By

        box = field_group(self.driver, label).find_element(By.XPATH, ".//textarea | .//input")
        type_into(box, value)

    def submit(self) -> None:
        submit(self.driver, lambda: runs_of(self.base_url, self.deployment_id))


def open_run_from_list(driver: WebDriver, names: tuple[str, ...]) -> str:
    """After submitting: the page lists the deployment's runs; click the run that carries one of
    ``names`` (the form's run name, or the job's name once the run renamed itself) and return
    the flow run id from the page's address."""
    from selenium.webdriver.common.by import By

    def link() -> WebElement | None:
        for a in driver.find_elements(By.XPATH, "//a[contains(@href,'/runs/flow-run/')]"):
            if a.text.strip() in names:
                return a
        return None

    wait_for(driver, f"a run named {' or '.join(names)} in the list", link).click()
    wait_for(driver, "the flow run page", lambda: "/runs/flow-run/" in driver.current_url)
    # The address changes before the list is gone: until then the list's state badges (other
    # runs' "Completed") would read as this run's.
    wait_for(driver, "the runs list to give way to the run's page", lambda: link() is None)
    return driver.current_url.split("/runs/flow-run/")[1].split("?")[0].split("/")[0]


def wait_for_state(driver: WebDriver, states: tuple[str, ...], timeout: float = 240) -> str:
    """The run page's state badge, once it reads one of ``states`` (the page is reloaded now
    and then, as a person would)."""
    from selenium.webdriver.common.by import By

    xpath = " | ".join(f"//*[normalize-space()={_xpath_text(s)}]" for s in states)

    def badge() -> str | None:
        shown = [e.text.strip() for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()]
        return shown[0] if shown else None

    deadline = time.monotonic() + timeout
    while True:
        try:
            return wait_for(driver, f"the run to be {' or '.join(states)}", badge, timeout=10)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        driver.refresh()


def wait_for_text(
    driver: WebDriver, url: str, needles: tuple[str, ...], what: str, timeout: float = 120
) -> str:
    """Open ``url`` and return the page's text once it holds every one of ``needles``,
    reloading now and then (a finished run's logs arrive in batches; its page does not poll)."""
    deadline = time.monotonic() + timeout
    while True:
        driver.get(url)
        try:
            return wait_for(
                driver,
                what,
                lambda: next(
                    (t for t in [page_text(driver)] if all(n in t for n in needles)), None
                ),
                timeout=min(15.0, max(1.0, deadline - time.monotonic())),
            )
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def read_table(driver: WebDriver, first_column: str) -> list[dict[str, str]]:
    """The rows of the table whose first header is ``first_column``, as header -> cell text,
    once it has rows."""
    from selenium.webdriver.common.by import By

    def rows() -> list[dict[str, str]] | None:
        found = driver.find_elements(
            By.XPATH, f"//table[.//th[1][normalize-space()={_xpath_text(first_column)}]]"
        )
        if not found:
            return None
        header = [th.text.strip() for th in found[0].find_elements(By.TAG_NAME, "th")]
        cells = [
            [td.text.strip() for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in found[0].find_elements(By.XPATH, ".//tbody/tr")
        ]
        return [dict(zip(header, row, strict=True)) for row in cells] or None

    return wait_for(driver, f"the table of {first_column}s", rows)


def page_text(driver: WebDriver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text
