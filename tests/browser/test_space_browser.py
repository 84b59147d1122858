"""The feature browser in a real browser: headless Chromium (Debian's `chromium`, installed by
scripts/test.sh) driven by Playwright. Opens the app, searches and clicks a feature, types text
(with HTML in it) in Try it, clicks a feature chip, and saves screenshots under the test's tmp dir."""

import contextlib
import os
from pathlib import Path

import pytest

from hf_bae.browser import FeatureBrowser
from space_fixtures import serve
from test_space import EVIL, browser, world  # noqa: F401  (module fixtures)

CHROMIUM = os.environ.get("HF_BAE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]

from playwright import sync_api  # the test extra; never `playwright install` (it downloads a browser)


@contextlib.contextmanager
def app_page(app):
    """The app served on 127.0.0.1 and opened in headless Chromium; yields the page, closes both after."""
    demo, url = serve(app)
    try:
        with sync_api.sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = chromium.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(url)
            yield page
            chromium.close()
    finally:
        demo.close()


@pytest.fixture(autouse=True)
def _chromium_is_installed():
    # A missing browser is a broken install, not a reason to skip: scripts/test.sh installs it.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/install_chromium.sh (Debian's `chromium`) or set HF_BAE_CHROMIUM.")


def test_click_a_feature_and_try_text_in_chromium(browser: FeatureBrowser, world, tmp_path):  # noqa: F811
    a = world["explained"][0]
    with app_page(browser) as page:
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
        # One context per document (issue 16), each with its sample's token marked.
        documents = {s["row"] for s in world["bae_rows"][a]["samples"]}
        assert page.locator("#feature-samples ol.samples.top mark.fire").count() == len(documents)
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
    for name in ("1-overview", "2-feature", "3-try-it", "4-from-chip"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    print(f"\nscreenshots: {tmp_path}")


@pytest.fixture(scope="module")
def rich_browser(world):  # noqa: F811
    """Atlases in the newer schema (`event`, `logit_effects`, per-token `token_values`), samples in
    corpus order, for the BAE and the SAE of `world`."""
    from space_fixtures import build_atlas

    r = world["root"]
    bae_rows = build_atlas(r / "bae-rich", world["model"], world["tokenizer"], world["bae"], rich=True)
    sae_rows = build_atlas(r / "sae-rich", world["model"], world["tokenizer"], world["sae"], rich=True)
    rich = FeatureBrowser.from_paths([str(r / "bae-rich"), str(r / "sae-rich")], [str(r / "bae"), str(r / "sae")])
    return rich, bae_rows, sae_rows


def test_feature_page_search_and_try_it_in_chromium(rich_browser, tmp_path):
    app, bae_rows, sae_rows = rich_browser
    j = max(range(len(sae_rows)), key=lambda f: len({s["row"] for s in sae_rows[f]["samples"]}))
    record = sae_rows[j]
    rows = {s["row"] for s in record["samples"]}
    off = next(r["feature"] for r in bae_rows if r["event"] == "off" and r["samples"] and r["frequency"] < 1)
    on_cat = {r["feature"] for r in sae_rows if any(s["token"].strip().lower() == "cat" for s in r["samples"])}
    with app_page(app) as page:
        sync_api.expect(page.locator("#overview-summary")).to_contain_text("code-set entropy")
        page.locator("#atlas-choice input").first.click()
        page.get_by_role("option", name="SAE").click()

        # Search by token text: which features have a sample on "cat"?
        page.get_by_role("tab", name="Features").click()
        page.locator("#table-search-in").get_by_label("token").check()
        query = page.locator("#table-query textarea, #table-query input").first
        query.fill("cat")
        query.press("Enter")
        sync_api.expect(page.locator("#table-info")).to_contain_text(f"{len(on_cat)} matching features")
        page.screenshot(path=str(tmp_path / "5-search.png"), full_page=True)

        # The feature page: histogram, logit effects, contexts sorted, one per document, shaded.
        page.get_by_role("tab", name="Feature", exact=True).click()
        box = page.locator("#feature-id input")
        box.fill(str(j))
        box.press("Enter")
        header = page.locator("#feature-header")
        sync_api.expect(header).to_contain_text(f"Feature {j}")
        assert page.locator("#feature-header svg.histogram rect.bar").count() >= 5
        promoted = page.locator("#feature-header ol.logit-list.promoted li")
        sync_api.expect(promoted).to_have_count(10)
        assert page.locator("#feature-header ol.logit-list.suppressed li").count() == 10
        first = record["logit_effects"]["promoted"][0]
        assert repr(first["token"]) in promoted.first.inner_text() and f"{first['value']:+.3g}" in promoted.first.inner_text()
        items = page.locator("#feature-samples ol.samples.top > li")
        assert items.count() == len(rows)  # one per document
        values = [float(v) for v in items.evaluate_all("els => els.map(e => e.dataset.value)")]
        assert values == sorted(values, reverse=True) and values[0] == pytest.approx(max(s["activation"] for s in record["samples"]), rel=1e-5)
        shades = page.locator("#feature-samples ol.samples.top span.act").evaluate_all(
            "els => els.map(e => getComputedStyle(e).backgroundColor)")
        assert len(shades) > len(rows) and sum(not s.endswith(", 0)") for s in shades) >= 2  # several tokens shaded, not only the mark
        assert page.locator("#feature-samples").inner_text().count("stored per token") == 1
        page.screenshot(path=str(tmp_path / "6-feature-rich.png"), full_page=True)

        # A usually-on BAE code: its event is "off", from the atlas's event column.
        page.locator("#atlas-choice input").first.click()
        page.get_by_role("option", name="BAE").click()
        box.fill(str(off))
        box.press("Enter")
        sync_api.expect(header).to_contain_text(f"Feature {off}")
        sync_api.expect(header).to_contain_text("Usual state: on")
        sync_api.expect(header).to_contain_text(f"off in {100 * (1 - bae_rows[off]['frequency']):.3g} % of tokens")
        page.screenshot(path=str(tmp_path / "7-bae-off-event.png"), full_page=True)

        # Try it (the SAE): values on chips, a token's top features with explanations, the rare-only toggle.
        page.locator("#atlas-choice input").first.click()
        page.get_by_role("option", name="SAE").click()
        page.get_by_role("tab", name="Try it").click()
        rare = next(r for r in sae_rows if 0 < r["frequency"] < 0.1 and r["samples"])
        page.locator("#tryit-text textarea").fill(rare["samples"][0]["context"])  # a text a rare feature fires on
        page.locator("#tryit-run").click()
        sync_api.expect(page.locator("#tryit-tokens .chips .chip").first).to_be_visible()
        n_all = page.locator("#tryit-tokens .chips .chip").count()
        page.locator("#tryit-tokens .tok-cell .tok-text").nth(1).click()
        sync_api.expect(page.locator("#tryit-tokens .selected-token")).to_contain_text("features fire")
        assert page.locator("#tryit-tokens .selected-token tr").count() >= 2
        page.screenshot(path=str(tmp_path / "8-try-it-token.png"), full_page=True)
        page.locator("#tryit-rare input").check()
        sync_api.expect(page.locator("#tryit-notice")).to_contain_text("Rare features only")
        dense = {r["feature"] for r in sae_rows if r["frequency"] >= 0.1}
        shown = {int(x) for x in page.locator("#tryit-tokens .chips .chip").evaluate_all("els => els.map(e => e.dataset.feature)")}
        assert rare["feature"] in shown and not shown & dense and page.locator("#tryit-tokens .chips .chip").count() <= n_all
        page.screenshot(path=str(tmp_path / "9-try-it-rare.png"), full_page=True)
    for name in ("5-search", "6-feature-rich", "7-bae-off-event", "8-try-it-token", "9-try-it-rare"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    print(f"\nscreenshots: {tmp_path}")


def test_steer_and_compare_in_chromium(rich_browser, tmp_path):
    """Try it's steering (issue 16, item 3) and the Compare tab (item 2) through the real page."""
    app, bae_rows, sae_rows = rich_browser
    j = max(range(len(sae_rows)), key=lambda f: sae_rows[f]["logit_effects"]["promoted"][0]["value"])
    promoted = sae_rows[j]["logit_effects"]["promoted"][0]["token_id"]
    with app_page(app) as page:
        sync_api.expect(page.locator("#overview-summary")).to_contain_text("code-set entropy")
        page.locator("#atlas-choice input").first.click()
        page.get_by_role("option", name="SAE").click()

        # Steer with the SAE feature whose direct logit effect is largest: its top promoted token rises.
        page.get_by_role("tab", name="Try it").click()
        page.locator("#tryit-text textarea").fill("The president spoke to the congress about the")
        page.locator("#steer-feature input").fill(str(j))
        strength = page.locator("#steer-strength input[type='number']")
        strength.fill("8")
        strength.press("Enter")
        page.locator("#steer-run").click()
        result = page.locator("#steer-result .steering")
        sync_api.expect(result).to_be_visible()
        sync_api.expect(result).to_contain_text("strength 8 × the site's typical activation norm")
        assert float(result.get_attribute("data-kl")) > 0
        before = page.locator("#steer-result table.steer-before tr[data-token-id]")
        after = page.locator("#steer-result table.steer-after tr[data-token-id]")
        assert before.count() == 10 and after.count() == 10
        rows = after.evaluate_all("els => els.map(e => [parseInt(e.dataset.tokenId), parseFloat(e.dataset.before), parseFloat(e.dataset.after)])")
        hit = [r for r in rows if r[0] == promoted]
        assert hit and hit[0][2] > hit[0][1], (promoted, rows)  # its probability rose
        assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
        page.screenshot(path=str(tmp_path / "10-steer.png"), full_page=True)

        # Compare: BAE's features with their nearest SAE features by decoder cosine; an SAE id opens it.
        page.get_by_role("tab", name="Compare").click()
        sync_api.expect(page.locator("#compare-info")).to_contain_text("64 features of BAE")
        table_rows = page.locator("#compare-result table.compare tr[data-feature]")
        sync_api.expect(table_rows).to_have_count(25)
        cosines = table_rows.first.locator("ol.nearest li").evaluate_all("els => els.map(e => parseFloat(e.dataset.cosine))")
        assert len(cosines) == 5 and cosines == sorted(cosines, reverse=True)
        sync_api.expect(page.locator("#compare-result .compare-summary")).to_contain_text("Mean best cosine")
        page.screenshot(path=str(tmp_path / "11-compare.png"), full_page=True)
        target = table_rows.first.locator("ol.nearest button.chip").first
        b_id = target.get_attribute("data-open")
        target.click()
        header = page.locator("#feature-header")
        sync_api.expect(header).to_contain_text(f"Feature {b_id}")
        sync_api.expect(header).to_contain_text("SAE")
        page.screenshot(path=str(tmp_path / "12-from-compare.png"), full_page=True)
    for name in ("10-steer", "11-compare", "12-from-compare"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    print(f"\nscreenshots: {tmp_path}")
