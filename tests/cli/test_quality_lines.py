"""What `curate run`, `score` and `merge` say of the kept traces' quality: the summary line and the at-chance warning."""

from curation.commands.run import quality_line, quality_warning


def check(auroc, interval, n=40, wrong=10):
    return {"measured": False, "selection_metric_check": {"auroc": auroc, "interval": interval, "n": n, "wrong": wrong, "at_chance": interval is None or interval[0] <= 0.5 <= interval[1]}}


def test_warns_in_plain_words_when_the_metric_is_at_chance():
    warning = quality_warning(check(0.53, [0.41, 0.66]), "cocoa_ppl")
    assert "cocoa_ppl does not separate right from wrong answers on the 40 labelled questions" in warning
    assert "no better than a random one" in warning and "[0.410, 0.660]" in warning
    assert quality_warning(check(0.71, [0.62, 0.80]), "cocoa_ppl") is None
    assert "all wrong" in quality_warning(check(None, None, n=5, wrong=5), "msp")
    assert quality_warning({"measured": False}, "msp") is None  # no labels: nothing to check against


def test_summary_line_states_the_guarantee_or_says_unmeasured():
    assert "unmeasured" in quality_line({"measured": False})
    quality = {"measured": True, "guarantee": {"fdr": 0.1, "scope": "overall", "score": "metric"}, "labels": {"calibration": 50},
               "per_class": {"a": {"too_few_labels": False}, "b": {"too_few_labels": True}}}
    line = quality_line(quality)
    assert "expected share of wrong answers at most 0.1 over the whole split (50 calibration labels)" in line
    assert "too few labels to keep any of: b" in line
