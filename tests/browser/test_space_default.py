"""The Space's default: with no atlas given it builds (once) a small BAE and its atlas on the embedded
model and corpus, offline, with the library, and then starts from that cache."""

import pytest
import torch

from hf_bae.browser import FeatureBrowser
from hf_bae.space import SpaceArguments, browser_from_arguments, default_inputs


@pytest.mark.slow
def test_default_atlas_is_built_once_then_reused(tmp_path, monkeypatch):
    torch.set_num_threads(2)
    cache = tmp_path / "default"
    model_dir, atlas_dir = default_inputs(cache, train_tokens=4096, atlas_texts=12, progress=False)
    browser = FeatureBrowser.from_paths([atlas_dir], [model_dir])  # checks the atlas belongs to the dictionary
    atlas = browser.atlas(None)
    d = browser.dictionaries[atlas.name]
    assert d.kind == "BAE" and d.config.layer == 6 and len(atlas) == d.num_features == 4 * 576
    assert atlas.meta("num_tokens") > 0 and not list(cache.parent.glob("*.partial-*"))
    rows, _ = browser.table(None, sort_by="frequency", descending=True, hide_dead=True, page_size=1000)
    page = browser.feature(None, next(r[0] for r in rows if r[4] > 0))  # always-on features have no samples
    assert "<mark" in page.samples_html and len(page.neighbours) == 10
    result = browser.try_it(None, "The Congress shall assemble.")
    assert [row[1] for row in result.per_token][:3] == ["The", " Congress", " shall"]

    # A second start reuses the cache: nothing is trained again.
    import hf_bae.training

    monkeypatch.setattr(hf_bae.training, "train", lambda *a, **k: pytest.fail("the default atlas was rebuilt"))
    again = browser_from_arguments(SpaceArguments(cache_dir=str(cache)))
    assert again.describe() == browser.describe()
