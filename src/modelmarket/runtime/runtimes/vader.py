"""VADER rule-based sentiment (PyPI ``vaderSentiment``), with its lexicons shipped as model artifacts.

Input ``text`` BYTES [-1], each element UTF-8 text. Outputs ``scores`` FP32 [-1, 4] (neg, neu, pos, compound)
and ``label`` BYTES [-1]: ``positive`` when compound >= 0.05, ``negative`` when compound <= -0.05, else
``neutral`` (the thresholds of the VADER paper).

Parameters (manifest ``parameters:``):

- ``lexicon``: artifact path of the word lexicon (default ``vader_lexicon.txt``)
- ``emoji_lexicon``: artifact path of the emoji lexicon (default ``emoji_utf8_lexicon.txt``)

Both must be among the version's artifacts.

Bounds on one call (``VaderRuntime.input_limits``, and one more that needs the text). VADER's time grows with
the square of one element's length in words, where each emoji counts as the words of its name (``😹`` is "cat
face with tears of joy", six words in four bytes). Measured on the 2-core development machine (best of three,
shared with other work, load ~4): the costliest patterns found (repeated emoji with sentiment words in their
names, "OK BUT" repeated, capitals) take about 50 ms at 500 words, 0.1-0.2 s at 1,000 and 1 s at 2,000; 4 kB of
repeated ``😹`` (6,000 words) took 3.8 s. Plain English: 80 ms at 1,000 words. So:

- ``MAX_WORDS_PER_ELEMENT`` = 1,000 words per element, emoji names included: worst element 0.1-0.2 s;
- ``MAX_ELEMENT_BYTES`` = 16 KiB per element, a cheap check the gateway can make before decoding;
- ``MAX_ELEMENTS_PER_CALL`` = 32: a call of 32 worst-case elements measured 4.9 s; ordinary text far less.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import InputLimits, Runtime, Tensor, artifact_parameter, bytes_tensor, text_element

__all__ = [
    "MAX_ELEMENTS_PER_CALL",
    "MAX_ELEMENT_BYTES",
    "MAX_WORDS_PER_ELEMENT",
    "VaderRuntime",
    "sentiment_label",
    "vader_word_count",
]

POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05
MAX_WORDS_PER_ELEMENT = 1_000
MAX_ELEMENT_BYTES = 16 * 1024
MAX_ELEMENTS_PER_CALL = 32
DEFAULT_LEXICON = "vader_lexicon.txt"
DEFAULT_EMOJI_LEXICON = "emoji_utf8_lexicon.txt"
_SCORE_KEYS = ("neg", "neu", "pos", "compound")


def sentiment_label(compound: float) -> bytes:
    """The label VADER's authors recommend for a compound score."""
    if compound >= POSITIVE_THRESHOLD:
        return b"positive"
    if compound <= NEGATIVE_THRESHOLD:
        return b"negative"
    return b"neutral"


def vader_word_count(text: str, emoji_names: Mapping[str, str]) -> int:
    """The words VADER scores in ``text``: whitespace-separated words, each emoji counted as the words of its name."""
    if text.isascii():
        return len(text.split())
    words = 0
    plain: list[str] = []
    for char in text:
        name = emoji_names.get(char)
        if name is None:
            plain.append(char)
        else:
            words += len(name.split())
            plain.append(" ")
    return words + len("".join(plain).split())


class VaderRuntime(Runtime):
    name: ClassVar[str] = "vader"
    parameter_names: ClassVar[frozenset[str]] = frozenset({"lexicon", "emoji_lexicon"})
    input_limits: ClassVar[InputLimits] = InputLimits(
        max_elements_per_call=MAX_ELEMENTS_PER_CALL,
        max_element_bytes=MAX_ELEMENT_BYTES,
        max_call_bytes=MAX_ELEMENTS_PER_CALL * MAX_ELEMENT_BYTES,
    )

    _analyzer: SentimentIntensityAnalyzer
    _input_name: str

    @classmethod
    def validate_parameters(cls, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        super().validate_parameters(parameters, artifacts)
        artifact_parameter(parameters, "lexicon", DEFAULT_LEXICON, artifacts)
        artifact_parameter(parameters, "emoji_lexicon", DEFAULT_EMOJI_LEXICON, artifacts)

    def load(self) -> None:
        params = self.spec.parameters
        lexicon = self.spec.artifact(params.get("lexicon", DEFAULT_LEXICON), "lexicon")
        emoji = self.spec.artifact(params.get("emoji_lexicon", DEFAULT_EMOJI_LEXICON), "emoji_lexicon")
        for path in (lexicon, emoji):
            if not path.is_file():
                raise InvalidInput(f"lexicon {path.name!r} of model {self.spec.name!r} is missing")
        # vaderSentiment joins the names to its own package directory; absolute paths win that join.
        self._analyzer = SentimentIntensityAnalyzer(
            lexicon_file=str(lexicon.resolve()), emoji_lexicon=str(emoji.resolve())
        )
        self._input_name = self.spec.inputs[0].name if self.spec.inputs else "text"

    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        self.check_inputs(inputs)
        tensor = next((t for t in inputs if t.name == self._input_name), None)
        if tensor is None:
            raise InvalidInput(f"missing input {self._input_name!r}")
        items = tensor.data.reshape(-1)
        texts = [text_element(item, index) for index, item in enumerate(items)]
        for index, text in enumerate(texts):
            words = vader_word_count(text, self._analyzer.emojis)
            if words > MAX_WORDS_PER_ELEMENT:
                raise InvalidInput(
                    f"input {tensor.name!r}: element {index} has {words:,} words (an emoji counts as the words of its"
                    f" name); the limit is {MAX_WORDS_PER_ELEMENT:,} per element: send sentences or paragraphs as"
                    " separate elements"
                )
        scores = np.empty((len(items), len(_SCORE_KEYS)), dtype=np.float32)
        labels: list[bytes] = []
        for index, text in enumerate(texts):
            polarity = self._analyzer.polarity_scores(text)
            scores[index] = [polarity[key] for key in _SCORE_KEYS]
            labels.append(sentiment_label(polarity["compound"]))
        return [
            Tensor(name="scores", datatype="FP32", shape=list(scores.shape), data=scores),
            bytes_tensor("label", labels),
        ]
