from curation.parse import AnswerParser
from curation.recipe.sections import AnswerConfig

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
