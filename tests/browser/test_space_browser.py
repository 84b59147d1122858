"""The feature browser in a real browser: headless Chromium (Debian's `chromium`, installed by
scripts/test.sh) driven by Playwright. Opens the app, searches and clicks a feature, types text
(with HTML in it) in Try it, clicks a feature chip, and saves screenshots under the test's tmp dir."""

import os
from pathlib import Path

import pytest

from hf_bae.browser import FeatureBrowser
from space_fixtures import serve
from test_space import EVIL, browser, world  # noqa: F401  (module fixtures)

CHROMIUM = os.environ.get("HF_BAE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]

from playwright import sync_api  # the test extra; never `playwright install` (it downloads a browser)


@pytest.fixture(autouse=True)
def _chromium_is_installed():
    # A missing browser is a broken install, not a reason to skip: scripts/test.sh installs it.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/install_chromium.sh (Debian's `chromium`) or set HF_BAE_CHROMIUM.")


def test_click_a_feature_and_try_text_in_chromium(browser: FeatureBrowser, world, tmp_path):  # noqa: F811
    a = world["explained"][0]
    demo, url = serve(browser)
    try:
        with sync_api.sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = chromium.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(url)
            sync_api.expect(page.locator("#overview-summary")).to_contain_text("code-set entropy")
            page.screenshot(path=str(tmp_path / "1-overview.png"), full_page=True)

            # Features: search the explanation text, click the row, land on its page.
            page.get_by_role("tab", name="Features").click()
            query = page.locator("#table-query textarea, #table-query input").first
            query.fill("cats")
            query.press("Enter")
            sync_api.expect(page.locator("#table-info")).to_contain_text("1 matching features")
            page.locator("#feature-table [data-testid='cell-0-1']").click()
            sync_api.expect(page.locator("#feature-header")).to_contain_text(f"Feature {a}")
            sync_api.expect(page.locator("#feature-header")).to_contain_text(f"cats & dogs {EVIL}")  # shown as text
            assert page.locator("#feature-samples mark.fire").count() == 8
            page.screenshot(path=str(tmp_path / "2-feature.png"), full_page=True)

            # Try it: text with HTML in it is shown as text, never run or parsed as markup.
            page.get_by_role("tab", name="Try it").click()
            page.locator("#tryit-text textarea").fill(f"The cat sat on the mat. {EVIL}")
            page.locator("#tryit-run").click()
            chips = page.locator("#tryit-tokens .chip")
            sync_api.expect(chips.first).to_be_visible()
            sync_api.expect(page.locator("#tryit-tokens")).to_contain_text("cat")
            assert page.locator("#injected").count() == 0
            assert page.evaluate("window.__pwned === undefined")
            sync_api.expect(page.locator("#tryit-features")).to_contain_text("[ cat]")
            page.screenshot(path=str(tmp_path / "3-try-it.png"), full_page=True)

            # A feature chip opens that feature.
            target = chips.first.inner_text()
            chips.first.click()
            sync_api.expect(page.locator("#feature-header")).to_contain_text(f"Feature {target}")
            page.screenshot(path=str(tmp_path / "4-from-chip.png"), full_page=True)
            assert page.locator("#injected").count() == 0 and page.evaluate("window.__pwned === undefined")
            chromium.close()
    finally:
        demo.close()
    for name in ("1-overview", "2-feature", "3-try-it", "4-from-chip"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    print(f"\nscreenshots: {tmp_path}")
