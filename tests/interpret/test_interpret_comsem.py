"""ComSem: parsing, the summary (and the `evaluate` module), and the protocol on a hand-made atlas
against the loopback OpenAI-compatible server."""

import datasets
import pytest

from fake_openai import FakeOpenAI
from interp_fixtures import category_llm, is_judge
from hf_bae.interpret.atlas_format import atlas_from_rows
from hf_bae.interpret.comsem import ComSemConfig, parse_answer, parse_explanation, run_comsem, summarize_verdicts
from hf_bae.interpret.prompts import explain_prompt, judge_prompt
from hf_bae.interpret.client import LLMClient
from hf_bae.interpret.openai_backend import OpenAIBackend

SCORE = 0.987654321  # a distinctive activation value that must never reach a prompt


def sample(word, position=2, sentence=None):
    sentence = sentence or f"the {word} near a dog"
    start = sentence.index(word)
    return {"token": " " + word, "token_id": 0, "position": position, "context": sentence, "start": start,
            "end": start + len(word), "score": SCORE, "activation": SCORE, "row": 0, "row_position": position}


def feature_row(j, words, negatives=()):
    return {"feature": j, "frequency": 0.1, "is_dead": False, "is_dense": False, "selection_count": len(words),
            # unique sentences, so that no two prompts are the same (identical prompts are sent once)
            "samples": [sample(w, sentence=f"the {w} near a dog ({j}.{i})") for i, w in enumerate(words)],
            "non_activating": [sample(w, sentence=f"the {w} far from a dog ({j}.{i})") for i, w in enumerate(negatives)],
            "explanation": None, "comsem_score": None, "verdicts": [], "comsem_status": None,
            "balanced_accuracy": None, "judge_failures": 0}


ANIMALS = ["cat", "dog", "bird", "fish", "mouse"]


def hand_atlas():
    rows = [
        # 0: five animals to explain, 8 tests (7 animals + "red"), 3 colour negatives -> 7/8, specificity 1
        feature_row(0, ANIMALS + ["cat", "dog", "bird", "fish", "mouse", "cat", "dog", "red"], ["red", "blue", "green"]),
        feature_row(1, ["cat", "dog", "bird", "fish"]),  # too few samples (4 < 6)
        # 2: explained as animals; tests include "horse" (unparseable) and numbers; negatives are animals
        feature_row(2, ANIMALS + ["horse", "one", "two"], ["cat", "dog"]),
        # 3: its explainer call always fails (the rule matches "zebra")
        feature_row(3, ["zebra", "cat", "dog", "bird", "fish", "mouse"]),
        # 4: many samples: judged on max_test_samples of them
        feature_row(4, ["one", "two", "three", "four", "five", "six"] + ["one"] * 20),
    ]
    return atlas_from_rows(rows)


def client(server, cache=None, **kw):
    backend = OpenAIBackend(model="fake", base_url=server.base_url, api_key="k", timeout=2, max_retries=1,
                            backoff_base=0.01, concurrency=4)
    return LLMClient(backend, cache, progress=False, **kw)


def test_parsing_is_strict():
    assert parse_answer("Yes") == parse_answer(" yes. ") == parse_answer("**Yes**") == parse_answer('"YES"') == "yes"
    assert parse_answer("No!") == "no"
    for bad in ("Yes, because it is an animal", "Answer: Yes", "Maybe", "", None, "Y"):
        assert parse_answer(bad) == "unparseable"
    assert parse_explanation("Commonality: animal nouns.\nBecause ...") == "animal nouns"
    assert parse_explanation('"**verbs of speaking**"') == "verbs of speaking"
    assert parse_explanation("The commonality is: years") == "years"
    assert parse_explanation("   \n ") is None and parse_explanation("x" * 300) is None


def test_summary_matches_a_hand_computation():
    # feature 0: positives Y Y N -> 2/3; negatives N Y -> specificity 1/2; precision 2/3
    # feature 1: positives Y unparseable -> 1/2; no negatives
    # feature 2: only negatives -> not scored
    f = [0, 0, 0, 0, 0, 1, 1, 2]
    s = ["positive"] * 3 + ["negative"] * 2 + ["positive"] * 2 + ["negative"]
    a = ["yes", "yes", "no", "no", "yes", "yes", "unparseable", "no"]
    out = summarize_verdicts(f, s, a, num_features=10, threshold=0.6, num_bins=4)
    assert out["comsem_score"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert out["features_scored"] == 2 and out["interpretable_count"] == 1
    assert out["interpretable_fraction"] == pytest.approx(0.1)
    assert out["histogram"] == {"bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0], "counts": [0, 0, 2, 0]}
    assert out["unparseable"] == 1 and out["verdicts"] == 8
    bp = out["beyond_paper"]
    assert bp["features_with_negatives"] == 2 and bp["specificity"] == pytest.approx((0.5 + 1.0) / 2)
    assert bp["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2) and bp["precision"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="answer"):
        summarize_verdicts([0], ["positive"], ["maybe"])
    with pytest.raises(ValueError, match="split"):
        summarize_verdicts([0], ["pos"], ["yes"])


def test_evaluate_module_loads_offline_and_matches():
    import evaluate

    comsem = evaluate.load("metrics/comsem")
    got = comsem.compute(predictions=["yes", "yes", "no", "yes"], references=["positive"] * 4, feature_ids=[0, 0, 1, 1],
                         num_features=4)
    assert got["comsem_score"] == 0.75 and got["interpretable_count"] == 2 and got["interpretable_fraction"] == 0.5
    f, s, a = [0, 0, 0, 1], ["positive", "negative", "positive", "negative"], ["yes", "yes", "no", "no"]
    assert comsem.compute(predictions=a, references=s, feature_ids=f, threshold=0.3) == summarize_verdicts(f, s, a, threshold=0.3)


def test_protocol_on_a_hand_made_atlas(tmp_path):
    atlas = hand_atlas()
    with FakeOpenAI(responder=category_llm, rules=[("zebra", ["500"] * 10)]) as server:
        run = run_comsem(atlas, client(server), ComSemConfig(num_negatives=3), progress=False)
        prompts = [r["prompt"] for r in server.requests]
    by = {r.feature: r for r in run.results}
    assert by[0].explanation == "animal words" and by[0].comsem_score == pytest.approx(7 / 8)
    assert [v["sample_index"] for v in by[0].verdicts if v["split"] == "positive"] == list(range(5, 13))
    assert [v["answer"] for v in by[0].verdicts if v["split"] == "negative"] == ["no"] * 3
    assert by[0].balanced_accuracy == pytest.approx((7 / 8 + 1) / 2)
    assert by[1].status == "too_few_samples" and by[1].explanation is None
    assert by[2].comsem_score == pytest.approx(0 / 3)  # horse: unparseable, one/two: No
    assert sum(v["answer"] == "unparseable" for v in by[2].verdicts) == 1
    assert [v["answer"] for v in by[2].verdicts if v["split"] == "negative"] == ["yes", "yes"]
    assert by[3].status == "explain_failed" and by[3].verdicts == []
    assert by[4].comsem_score == 1.0 and len(by[4].verdicts) == 8  # capped at max_test_samples
    s = run.summary
    assert s["features_scored"] == 3 and s["features_selected"] == 5 and s["unparseable"] == 1
    assert s["status_counts"] == {"scored": 3, "too_few_samples": 1, "explain_failed": 1}
    assert run.ledger["failed"] == {"server_error": 1} and run.ledger["retried"] == {"server_error": 1}
    # Explainers see 5 samples, judges one; nobody sees an activation value.
    assert all(str(SCORE)[:6] not in p for p in prompts)
    explain = [p for p in prompts if not is_judge(p) and "zebra" not in p]
    assert len(explain) == 3 and all(p.count("Token:") == 5 for p in explain)
    assert all(p.count("Token:") == 1 for p in prompts if is_judge(p))


def test_dry_run_counts_calls_and_resume_pays_nothing_twice(tmp_path):
    atlas = hand_atlas()
    cache = tmp_path / "cache.sqlite"
    with FakeOpenAI(responder=category_llm) as server:
        dry = run_comsem(atlas, client(server, cache, dry_run=True), ComSemConfig(num_negatives=3), progress=False)
        assert server.count() == 0
        assert dry.ledger["would_call"] == 4  # the explainer calls of features 0, 2, 3, 4
        assert dry.summary["judge_calls_pending_explanations"] == (8 + 3) + (3 + 2) + (1 + 0) + 8
        assert dry.status_counts() == {"pending": 4, "too_few_samples": 1}
        # A run cut short by --max_calls, then resumed: every call is made exactly once.
        first = run_comsem(atlas, client(server, cache, max_calls=10), ComSemConfig(num_negatives=3), progress=False)
        assert server.count() == 10 and first.ledger["failed"]["budget_exhausted"] > 0
        second = run_comsem(atlas, client(server, cache), ComSemConfig(num_negatives=3), progress=False)
        total = 4 + 11 + 5 + 1 + 8
        assert server.count() == total and second.ledger["cache_hits"] == 10
        dry = run_comsem(atlas, client(server, cache, dry_run=True), ComSemConfig(num_negatives=3), progress=False)
        assert dry.ledger["would_call"] == 0 and dry.summary == {**second.summary}


def test_bad_atlases():
    with FakeOpenAI() as server:
        with pytest.raises(ValueError, match="empty"):
            run_comsem(hand_atlas().select([]), client(server), progress=False)
        with pytest.raises(ValueError, match="not a feature atlas"):
            run_comsem(datasets.Dataset.from_dict({"feature": [0]}), client(server), progress=False)
        assert server.count() == 0


def test_chance_level_explanations_are_not_interpretable():
    # feature 0: "any word" — Yes on all 8 positives and all 8 negatives: score 1, balanced accuracy exactly 0.5
    # feature 1: one answer better than chance (9/16 right): 0.5625, still not interpretable at 0.6
    # feature 2: 8/8 Yes, 2/8 No on negatives: 0.625, interpretable
    # feature 3: No on everything: 0.5
    f, s, a = [], [], []
    for j, pos_yes, neg_no in ((0, 8, 0), (1, 8, 1), (2, 8, 2), (3, 0, 8)):
        for i in range(8):
            f += [j, j]
            s += ["positive", "negative"]
            a += ["yes" if i < pos_yes else "no", "no" if i < neg_no else "yes"]
    out = summarize_verdicts(f, s, a, num_features=4)
    bp = out["beyond_paper"]
    assert bp["balanced_accuracy_threshold"] == 0.6
    assert bp["interpretable_count_balanced_accuracy"] == 1  # only feature 2
    assert out["interpretable_count"] == 3  # the paper's score alone: "any word" scores 1 and counts
    yes_to_all = summarize_verdicts([0] * 16, ["positive", "negative"] * 8, ["yes"] * 16)
    assert yes_to_all["beyond_paper"]["balanced_accuracy"] == 0.5
    assert yes_to_all["beyond_paper"]["interpretable_count_balanced_accuracy"] == 0
    for bad in (0.5, 0.3, 1.5):
        with pytest.raises(ValueError, match="above chance"):
            summarize_verdicts(f, s, a, balanced_accuracy_threshold=bad)
        with pytest.raises(ValueError, match="above chance"):
            ComSemConfig(balanced_accuracy_threshold=bad)
    import evaluate

    metric = evaluate.load("metrics/comsem")
    got = metric.compute(predictions=a, references=s, feature_ids=f, num_features=4)
    assert got["beyond_paper"]["interpretable_count_balanced_accuracy"] == 1
    assert metric.compute(predictions=a, references=s, feature_ids=f,
                          balanced_accuracy_threshold=0.55)["beyond_paper"]["interpretable_count_balanced_accuracy"] == 2
    with pytest.raises(ValueError, match="above chance"):
        metric.compute(predictions=a, references=s, feature_ids=f, balanced_accuracy_threshold=0.5)


def test_off_events_are_described_as_such_in_both_prompts():
    samples = [("cat", 2, "the cat sat")] * 5
    on, off, old = explain_prompt(samples, "on"), explain_prompt(samples, "off"), explain_prompt(samples)
    assert on == old and "switches OFF" not in on[-1]["content"]  # the protocol's prompt, unchanged
    assert off[:-1] == on[:-1] and off[-1]["content"].startswith("These tokens are where a feature switches OFF")
    assert off[-1]["content"].count("Token:") == 5
    judge_on, judge_off = judge_prompt(samples[0], "animals", "on"), judge_prompt(samples[0], "animals", "off")
    assert judge_on == judge_prompt(samples[0], "animals", None) and "switches OFF" not in judge_on[-1]["content"]
    assert "switches OFF" in judge_off[-1]["content"] and judge_off[-1]["content"].count("Token:") == 1
    with pytest.raises(ValueError, match="event"):
        explain_prompt(samples, "sometimes")

    # In a run: the "off" feature's explainer and judge prompts carry the note, the "on" one's do not.
    rows = [feature_row(0, ANIMALS + ["cat", "dog"], ["red"]), feature_row(1, ANIMALS + ["fish", "bird"], ["blue"])]
    rows[0]["event"], rows[1]["event"] = "on", "off"
    with FakeOpenAI(responder=category_llm) as server:
        run = run_comsem(atlas_from_rows(rows), client(server), ComSemConfig(num_negatives=1), progress=False)
        prompts = [r["prompt"] for r in server.requests]
    assert [r.status for r in run.results] == ["scored", "scored"]
    noted = [p for p in prompts if "switches OFF" in p]
    # feature 1: 1 explainer + 2 positives + 1 negative, all noted; feature 0: none
    assert len(noted) == 4 and all("(1." in p for p in noted)
    assert not any("switches OFF" in p for p in prompts if "(0." in p)


def test_difference_to_random_has_an_interval_that_excludes_zero_only_for_a_real_gap():
    from hf_bae.interpret.bootstrap import difference_interval
    from hf_bae.interpret.report import compare_with_random, results_table

    assert difference_interval([0.9], [0.1, 0.2]) is None and difference_interval([0.9, 0.8], []) is None
    same = [0.0, 0.5, 1.0, 0.75, 0.25] * 8
    diff, lo, hi = difference_interval(same, list(reversed(same)))
    assert diff == pytest.approx(0.0) and lo < 0 < hi
    ahead = [min(1.0, v + 0.3) for v in same]
    diff, lo, hi = difference_interval(ahead, same)
    assert 0 < lo < diff < hi and difference_interval(ahead, same) == [diff, lo, hi]  # seeded

    def report(name, kind, scores, bal):
        out = summarize_verdicts(list(range(len(scores))), ["positive"] * len(scores), ["yes"] * len(scores))
        return {"name": name, "dictionary_type": kind, "num_features": 40, "dead_features": 0, "dense_features": 0,
                "features_interpreted": 40, "features_too_few_samples": 0, "features_scored": len(scores),
                "comsem_score": sum(scores) / len(scores), "threshold": 0.5, "interpretable_count": 1,
                "interpretable_fraction": 0.1, "beyond_paper": out["beyond_paper"], "unparseable": 0,
                "judge_failures": 0, "status_counts": {}, "judge": {"backend": "b"}, "judge_calibration": None,
                "per_feature": {"comsem_score": scores, "balanced_accuracy": bal}}

    reports = [report("bae", "BAE", ahead, ahead), report("random", "random", same, same)]
    compare_with_random(reports)
    assert reports[0]["vs_random"]["comsem_score"] == difference_interval(ahead, same)
    assert "vs_random" not in reports[1]
    row = next(line for line in results_table(reports).splitlines() if line.startswith("| bae"))
    assert f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]" in row
    assert summarize_verdicts([0, 1], ["positive"] * 2, ["yes", "no"])["per_feature"]["comsem_score"] == [1.0, 0.0]


def test_bootstrap_intervals_bracket_the_means_and_are_reproducible():
    from hf_bae.interpret.bootstrap import mean_interval

    assert mean_interval([0.4]) is None and mean_interval([]) is None
    assert mean_interval([0.5] * 10) == [0.5, 0.5]
    values = [0.0, 0.2, 0.9, 1.0, 0.5, 0.3, 0.7, 0.1]
    lo, hi = mean_interval(values)
    assert lo < sum(values) / len(values) < hi and 0.0 <= lo and hi <= 1.0
    assert mean_interval(values) == [lo, hi] and mean_interval(values, seed=1) != [lo, hi]
    wide, narrow = mean_interval([0.0, 1.0] * 5), mean_interval([0.0, 1.0] * 500)
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0])  # shrinks like 1/sqrt(n)
    # feature 0 all yes / all no on negatives (balanced accuracy 1.0), feature 1 yes on everything (0.5)
    f = [0, 0, 1, 1, 2, 2]
    s = ["positive", "negative"] * 3
    a = ["yes", "no", "yes", "yes", "yes", "no"]
    out = summarize_verdicts(f, s, a, num_features=4, threshold=0.5)
    assert out["comsem_score_interval"] == [1.0, 1.0]
    # 3 of 4 features interpretable by score, the unscored fourth counting as not interpretable
    lo, hi = out["interpretable_fraction_interval"]
    assert out["interpretable_fraction"] == 0.75 and lo <= 0.75 <= hi and lo < hi
    bp = out["beyond_paper"]
    assert bp["interpretable_count_balanced_accuracy"] == 2 and isinstance(bp["interpretable_count_balanced_accuracy"], int)
    assert bp["interpretable_fraction_balanced_accuracy"] == pytest.approx(2 / 3)
    lo, hi = bp["balanced_accuracy_interval"]
    assert lo <= bp["balanced_accuracy"] <= hi


def test_feature_samples_are_nested_so_a_larger_rerun_reuses_the_cache():
    from hf_bae.interpret.comsem import select_features

    for m, sizes in ((300, (20, 50, 100)), (1000, (20, 50, 100, 500)), (2304, (20, 50, 100, 500))):
        samples = [set(select_features(m, k, 0)) for k in sizes]
        assert [len(s) for s in samples] == list(sizes)
        assert all(a <= b for a, b in zip(samples, samples[1:]))  # (random.sample fails this for 1000: 20 vs 100)
    assert select_features(50, 100, 0) == list(range(50))
