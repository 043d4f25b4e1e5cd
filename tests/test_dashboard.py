"""`bench dashboard`: the static site, loaded from disk in Debian's headless Chromium.

The browser is driven by Selenium through ``/usr/bin/chromedriver`` (never Selenium Manager,
which would download a driver); ``scripts/test`` installs ``chromium`` and
``chromium-driver``. Set ``BENCH_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to keep the
browser's screenshot of the page (that is how the one in ``docs/`` was made).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import nightly
import pytest

from harness.analysis import baseline, report
from harness.cli import main
from harness.dashboard import MARKER, build_site

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Ten nights of history (a throughput step at night 6, a second machine for the last
    three nights, a platform change on the last night), a baseline, two reports; the site.
    BENCH_HOME points at it while the module runs, and is restored after it."""
    root = tmp_path_factory.mktemp("dash")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_HOME", str(root))
        yield _build_site(root)


def _build_site(root: Path) -> Path:
    runs = root / "reports" / "runs"
    env = nightly.environment()
    nights = [
        nightly.write_night(
            runs, n, nightly.night_cells(n, rate_factor=0.7 if n >= 6 else 1.0), env=env
        )
        for n in range(9)
    ]
    other = nightly.environment(cpu_model="Intel Xeon 8480+", lock="2" * 64)
    for n in range(7, 10):
        nightly.write_night(
            runs, n, nightly.night_cells(n, rate_factor=1.6), env=other, run_id=f"n{n}-xeon",
            when=nightly.FIRST_NIGHT + timedelta(days=n, hours=-1),
        )  # fmt: skip
    last = nightly.write_night(
        runs, 9, nightly.night_cells(9, rate_factor=0.7), env={**env, "platform": "Linux-6.6"}
    )
    nights.append(last)
    baseline.accept(nights[0])
    for run_dir in (nights[0], last):
        report.write_report(run_dir)
    out = root / "site"
    code = main(["dashboard", "--runs-dir", str(runs), "--out", str(out)])
    assert code == 0
    return out


def test_site_is_self_contained(site: Path):
    page = (site / "index.html").read_text()
    assert (site / MARKER).is_file()
    # Nothing to fetch: no src= at all, every link is an anchor or a file of the site.
    assert re.findall(r'\ssrc="', page) == []
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs, "no links at all"
    for href in hrefs:
        if href.startswith("#") or href == "data:,":
            continue
        assert not re.match(r"[a-z]+://", href), href
        assert (site / href).is_file(), href
    assert "Content-Security-Policy" in page
    assert (site / "runs" / "20261110-020000-smoke" / "report.md").is_file()
    assert (site / "runs" / "20261110-020000-smoke" / "plots").is_dir()


def test_dashboard_in_headless_chromium(site: Path, tmp_path: Path, monkeypatch):
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not Path(tool).is_file():
            pytest.fail(
                f"{tool} is missing: install Debian's chromium and chromium-driver "
                "(scripts/test does: apt-get install -y chromium chromium-driver)"
            )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*BROWSER_ARGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get((site / "index.html").as_uri())
        assert driver.title == "transfer-bench · smoke"
        # The latest run's matrix: two datasets x three strategies; every cell listed.
        latest = driver.find_element(By.CSS_SELECTOR, "#latest h2").text
        assert latest == "Latest run: 20261110-020000-smoke"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#matrix tbody tr")) == 2
        assert len(driver.find_elements(By.CSS_SELECTOR, "#cells tbody tr")) == 6
        # Baseline verdicts: the slowed-down cell regressed against night 0.
        summary = driver.find_element(By.ID, "verdict-summary").text
        assert summary.startswith("FAIL: run 20261110-020000-smoke vs baseline")
        regressed = driver.find_elements(By.CSS_SELECTOR, "#verdict-table tr.verdict-regression")
        assert [r.find_element(By.TAG_NAME, "td").text for r in regressed] == [nightly.STEP_CELL]
        # Trends: one chart per cell, drawn (SVG with paths); the step is listed at night 6.
        trends = driver.find_elements(By.CSS_SELECTOR, "article.trend")
        assert len(trends) == 6
        for article in trends:
            svg = article.find_element(By.TAG_NAME, "svg")
            assert svg.size["width"] > 300 and svg.size["height"] > 100
            assert article.find_elements(By.CSS_SELECTOR, "svg path")
        step_cell = driver.find_element(
            By.CSS_SELECTOR, f'article.trend[data-cell="{nightly.STEP_CELL}"]'
        )
        steps = step_cell.find_elements(By.CSS_SELECTOR, "ul.steps li")
        assert [(s.get_attribute("data-metric"), s.get_attribute("data-run")) for s in steps] == [
            ("train_images_per_s", "20261107-020000-smoke")
        ]
        assert "-30" in steps[0].text or "-29" in steps[0].text or "-31" in steps[0].text
        assert "AMD EPYC 7B13" in steps[0].text and steps[0].get_attribute("class") == "worse"
        machines = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#machines li")]
        assert len(machines) == 2 and any("Intel Xeon 8480+" in m for m in machines)
        # Environment differences: newest pair first, then any two runs chosen in the page.
        rows = lambda: {  # noqa: E731
            r.find_elements(By.TAG_NAME, "td")[0].text
            for r in driver.find_elements(By.CSS_SELECTOR, "#env-diff tbody tr")
        }
        # (the two newest: the Xeon's and the EPYC's runs of night 9, one commit)
        assert {"platform", "cpu.model", "lock.digest"} <= rows()
        assert "git_commit" not in rows()
        Select(driver.find_element(By.ID, "env-a")).select_by_value("20261101-020000-smoke")
        Select(driver.find_element(By.ID, "env-b")).select_by_value("20261102-020000-smoke")
        assert rows() == {"git_commit"}
        Select(driver.find_element(By.ID, "env-b")).select_by_value("n8-xeon")
        assert {"cpu.model", "lock.digest", "git_commit"} <= rows()
        summary = driver.find_element(By.ID, "env-diff-summary").text
        assert "between 20261101-020000-smoke and n8-xeon" in summary
        # Runs: every run listed; the two with a report link to it, and the link opens.
        run_rows = driver.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
        assert len(run_rows) == 13
        links = driver.find_elements(By.CSS_SELECTOR, "#runs-table a")
        assert [a.text for a in links] == ["report.md", "report.md"]
        shot = os.environ.get("BENCH_DASHBOARD_SCREENSHOT")
        if shot:
            driver.execute_script("arguments[0].scrollIntoView();", step_cell)
            driver.save_screenshot(shot)
        problems = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert problems == [], problems
        href = links[0].get_attribute("href")
        driver.get(href)
        assert "# transfer-bench report: run `20261110-020000-smoke`" in driver.page_source
    finally:
        driver.quit()


def test_out_folder_that_is_not_a_dashboard_is_refused(site: Path, tmp_path: Path, capsys):
    runs = site.parent / "reports" / "runs"
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    code = main(["dashboard", "--runs-dir", str(runs), "--out", str(precious)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not a dashboard written by bench" in err
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]
    # An earlier dashboard is replaced whole (nothing stale left behind).
    again = tmp_path / "again"
    shutil.copytree(site, again)
    (again / "stale.html").write_text("old")
    result = build_site(again, runs)
    assert result.runs == 13 and not (again / "stale.html").exists()
    assert (again / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "precious"]
