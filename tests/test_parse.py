from curation.parse import AnswerParser
from curation.recipe import AnswerConfig

LABELS = {
    "upregulated": ["up", "increased"],
    "downregulated": ["down", "decreased"],
    "not differentially expressed": ["unchanged", "no change"],
}


def parser(**kwargs):
    return AnswerParser(AnswerConfig(**{"labels": LABELS, "tag": "answer", **kwargs}))


def test_tag_wins_over_reasoning():
    p = parser()
    text = "It could be upregulated or downregulated... <answer>Downregulated</answer>"
    assert p(text) == "downregulated"


def test_last_tag_and_synonyms_and_whitespace():
    p = parser()
    assert p("<answer>up</answer> wait, no: <answer>  NO   CHANGE. </answer>") == "not differentially expressed"


def test_unclosed_tag_from_stop_sequence():
    assert parser()("<think>hmm</think><answer>increased") == "upregulated"


def test_last_mention_without_tag():
    assert parser()("Options: upregulated, downregulated. I think it is downregulated.") == "downregulated"


def test_longest_synonym_first():
    p = AnswerParser(AnswerConfig(labels={"regulated": [], "not regulated": []}, tag=None))
    assert p("the gene is not regulated") == "not regulated"


def test_word_boundaries():
    # "upside" must not be read as "up"
    assert parser()("the upside is unclear") is None


def test_tag_with_unknown_label_is_unparsed():
    assert parser()("upregulated... <answer>sideways</answer>") is None


def test_empty_and_none():
    p = parser()
    assert p("") is None and p(None) is None and p("<answer></answer>") is None


def test_regex_free_text():
    p = AnswerParser(AnswerConfig(regex=r"Final answer:\s*(\w+)", tag=None))
    assert p("blah Final answer: Paris. Final answer: Lyon") == "lyon"


def test_case_sensitive():
    p = AnswerParser(AnswerConfig(labels=["Up", "Down"], tag=None, case_sensitive=True))
    assert p("it went Down") == "Down" and p("it went down") is None


def test_void_rows_are_samples_with_no_answer():
    """adaptive deepconf's cut traces (pipeline.cut_rows): present, unanswered, never the majority."""
    from types import SimpleNamespace

    import numpy as np

    from curation.parse import AnswerCodes, parse_chunk

    texts = ["up", "up", "down", "down", "down", "up"]  # question 0: reference + 2 samples; question 1 likewise
    chunk = SimpleNamespace(
        n_questions=2,
        text=texts,
        finish_reason=["stop", "early_stop", "early_stop", "stop", "stop", "stop"],
        slots=np.array([[0, 1, 2], [3, 4, 5]]),
        planned=np.ones((2, 3), dtype=bool),
    )
    parser = AnswerParser(AnswerConfig(labels={"up": [], "down": []}, tag=None))
    codes = AnswerCodes(["up", "down"])
    whole = parse_chunk(chunk, parser, codes, 2, "reference")
    assert whole.majority_codes.tolist() == [codes.encode("up"), codes.encode("down")]
    void = np.array([False, True, True, False, False, False])
    cut = parse_chunk(chunk, parser, codes, 2, "reference", void=void)
    assert cut.trace_answers[1] is None and cut.trace_answers[2] is None and cut.trace_answers[0] == "up"
    assert cut.sample_codes.tolist()[0] == [-1, -1] and cut.majority_codes[0] == -1
    assert not cut.failed.any()  # present, so the question is not failed
    assert cut.sample_codes.tolist()[1] == whole.sample_codes.tolist()[1]
