"""curation.reasoning: thinking and answer apart, and the answer's first token found in the token arrays."""

import pytest

from curation.reasoning import DEFAULT_MARKERS, Markers, capture, span_bounds, split_inline

# vLLM --reasoning-parser deepseek_r1, non-streamed: logprobs.content covers every output token,
# `reasoning` and `content` are the parser's split (content keeps what follows </think>)
R1_TOKENS = ["<think>", "\n", "The", " gene", " is", " up", ".", "\n", "</think>", "\n\n", "<answer>", "up", "</answer>", "<|im_end|>"]


def test_separated_reasoning_is_located_in_the_tokens():
    span = capture("\n\n<answer>up</answer>", "\nThe gene is up.\n", R1_TOKENS)
    assert span.alignment == "ok" and span.answer_start == 9  # the first token after </think>
    assert span.text == "\n\n<answer>up</answer>" and span.reasoning == "\nThe gene is up.\n"


def test_template_opened_think_output_holds_only_the_end_marker():
    tokens = R1_TOKENS[1:]  # the chat template wrote <think> into the prompt
    assert capture("<answer>up</answer>", "The gene is up.", tokens).answer_start == 8
    inline = capture("".join(tokens[:-1]), None, tokens)  # llama-server reasoning_format none, /v1/completions, TGI
    assert (inline.reasoning, inline.text, inline.answer_start, inline.alignment) == ("The gene is up.", "<answer>up</answer>", 8, "ok")


def test_inline_thinking_with_both_markers_and_a_straddling_token():
    tokens = ["<think>", "hm", "</think>\n\n", "<answer>", "down", "</answer>"]  # a tokenizer that merges the marker and newlines
    span = capture("".join(tokens), None, tokens)
    assert (span.reasoning, span.text, span.answer_start, span.alignment) == ("hm", "<answer>down</answer>", 3, "ok")


def test_marker_token_missing_from_the_arrays_falls_back_to_the_answer_at_the_end():
    # a llama-server stream sends no chunk for the </think> its parser consumed
    tokens = [t for t in R1_TOKENS if t not in ("<think>", "</think>")]
    span = capture("<answer>up</answer>", "The gene is up.", tokens)
    assert span.alignment == "ok" and span.answer_start == tokens.index("<answer>")  # whitespace before the answer counts as thinking here


def test_answer_tokens_that_do_not_reproduce_the_text_are_unaligned_not_guessed():
    span = capture("<answer>down</answer>", "The gene is up.", R1_TOKENS)
    assert span.alignment == "unaligned" and span.answer_start is None and span.text == "<answer>down</answer>"
    assert capture("<answer>up</answer>", "thought", []).alignment == "unaligned"  # no token strings to look in


def test_unfinished_thinking_has_no_answer():
    tokens = ["<think>", "The", " gene", " is"]
    separated = capture(None, "The gene is", tokens)  # vLLM: content null, all in reasoning
    assert (separated.text, separated.alignment, separated.answer_start) == ("", "unfinished", 4)
    inline = capture("<think>The gene is <answer>up</answer>", None, None)  # an answer-looking string inside the thinking
    assert (inline.text, inline.reasoning, inline.alignment) == ("", "The gene is <answer>up</answer>", "unfinished")
    # the template opened <think> and the output never closed it: only the recipe can say it is thinking
    assert capture("The gene is", None, ["The", " gene", " is"]).alignment == "ok"
    assert capture("The gene is", None, ["The", " gene", " is"], expect_thinking=True).alignment == "unfinished"


def test_a_trace_without_thinking_is_all_answer_without_a_search():
    span = capture("<answer>up</answer>", None, ["<answer>", "up", "</answer>"])
    assert (span.reasoning, span.answer_start, span.alignment) == (None, 0, "ok")
    assert capture("<answer>up</answer>", "", None).answer_start == 0


def test_harmony_channels_and_stop_sequences():
    tokens = ["<|channel|>", "analysis", "<|message|>", "Think", " more", "<|end|>", "<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "up", "<|return|>"]
    span = capture("up", "Think more", tokens)
    assert span.answer_start == 11 and span.alignment == "ok"
    inline = split_inline("".join(tokens))
    assert inline == ("Think more", "up", True)
    stopped = capture("<answer>up", "x", ["x", "</think>", "<answer>", "up", "</answer>"], stop=["</answer>"])
    assert stopped.answer_start == 2 and stopped.alignment == "ok"


def test_configurable_markers():
    markers = (Markers("<reasoning>", "</reasoning>"),)
    span = capture("<reasoning>a b</reasoning>c", None, ["<reasoning>", "a", " b", "</reasoning>", "c"], markers=markers)
    assert (span.reasoning, span.text, span.answer_start) == ("a b", "c", 4)
    assert capture("<think>a</think>c", None, None, markers=markers).reasoning is None
    assert DEFAULT_MARKERS[0] == Markers("<think>", "</think>")


@pytest.mark.parametrize(
    "span,start,alignment,bounds",
    [("whole", 3, "ok", (0, 10)), ("answer", 3, "ok", (3, 10)), ("thinking", 3, "ok", (0, 3)), ("answer", None, "unaligned", None),
     ("answer", 10, "unfinished", (10, 10)), ("whole", None, "unaligned", (0, 10))],
)
def test_span_bounds(span, start, alignment, bounds):
    assert span_bounds(10, start, alignment, span) == bounds


def test_deepconf_offline_scores_agree_with_the_online_window_arithmetic():
    import numpy as np

    from curation.deepconf import lowest_group_confidence, token_confidence
    from curation.score import METRICS, ScoringInputs, TokenArrays

    rng = np.random.default_rng(3)
    traces = []
    for length in (3, 40, 257):
        traces.append([sorted(-rng.uniform(0.01, 6.0, size=int(rng.integers(1, 6))), reverse=True) for _ in range(length)])
    traces[1][7] = []  # a token without alternatives is left out, as WindowConfidence.push leaves it
    logprobs = [[row[0] if row else -1.0 for row in trace] for trace in traces]
    arrays = TokenArrays.from_lists(logprobs, traces)
    inputs = ScoringInputs(arrays, np.zeros(3, dtype=int), np.zeros((3, 0), dtype=int), group_window=16, tail_tokens=10)
    lowest = METRICS["deepconf_lowest_group"].fn(inputs)
    bottom = METRICS["deepconf_bottom10_group"].fn(inputs)
    tail = METRICS["deepconf_tail"].fn(inputs)
    for j, trace in enumerate(traces):
        assert -lowest[j] == pytest.approx(lowest_group_confidence(trace, 16), rel=1e-12)
        confidences = [token_confidence(row) for row in trace if row]
        assert -tail[j] == pytest.approx(np.mean(confidences[-10:]), rel=1e-12)
        if len(confidences) >= 16:
            groups = sorted(np.mean(confidences[i : i + 16]) for i in range(len(confidences) - 15))
            assert -bottom[j] == pytest.approx(np.mean(groups[: int(np.ceil(0.1 * len(groups)))]), rel=1e-12)
        else:
            assert -bottom[j] == -lowest[j] == pytest.approx(np.mean(confidences))
    assert (lowest >= bottom).all() or np.allclose(lowest, bottom)  # the lowest window is at least as uncertain
