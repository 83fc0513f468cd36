"""The simulator's directives, which every failure test relies on."""

from __future__ import annotations

import pytest
from parley_sim.script import parse_script, words

pytestmark = pytest.mark.unit


def test_directives_are_parsed_and_removed_from_the_echo():
    s = parse_script("hello [[sim:status=429]] [[sim:retry-after=2]] [[sim:reasoning]]")
    assert (s.status, s.retry_after, s.reasoning) == (429, "2", True)
    assert s.reply() == "Echo: hello"


@pytest.mark.parametrize("text", ["Echo: a  b\n c", "x", " lead", "trail "])
def test_words_concatenate_back_exactly(text: str):
    assert "".join(words(text)) == text
