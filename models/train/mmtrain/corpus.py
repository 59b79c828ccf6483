"""Requests the tiny model understands, and the answers it gives.

A request is a canonical spoken sentence (what espeak-ng says) plus a meaning; the
typed form is the same sentence, sometimes with numerals, capitals or a question mark.
"""

import random
from dataclasses import dataclass
from typing import Optional

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

NO_NUMBER = "i see no number"
NO_QUESTION = "i have no question"
EQUAL = "they are equal"


def number_words(n: int) -> str:
    """English words for -99..99, lower case: 81 -> "eighty one", -3 -> "minus three"."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 10:
        return DIGIT_WORDS[n]
    if n < 20:
        return TEENS[n - 10]
    tens, ones = divmod(n, 10)
    return TENS[tens] if ones == 0 else f"{TENS[tens]} {DIGIT_WORDS[ones]}"


def describe_digit(d: Optional[int]) -> str:
    if d is None:
        return NO_NUMBER
    word = DIGIT_WORDS[d]
    article = "an" if word == "eight" else "a"
    return f"i see {article} {word}"


@dataclass(frozen=True)
class Request:
    """One request: `kind` names the operation, `a` and `b` its numbers (None = "it")."""

    kind: str
    text: str  # canonical sentence, as spoken
    a: Optional[int] = None
    b: Optional[int] = None

    @property
    def uses_image(self) -> bool:
        return self.kind == "see" or (self.kind in OPS and self.a is None)


OPS = ("plus", "minus", "times", "larger", "smaller", "is_larger", "is_smaller")

# Phrasings per kind; {a} and {b} are number words. "it" means the shown digit.
SEE_PHRASES = ["what number do you see", "what do you see", "which number is this",
               "read the number"]
IT_PHRASES = {
    "plus": ["what is it plus {b}", "add {b} to it"],
    "minus": ["what is it minus {b}", "take {b} from it"],
    "times": ["what is it times {b}", "multiply it by {b}"],
    "is_larger": ["is it larger than {b}"],
    "is_smaller": ["is it smaller than {b}"],
}
PAIR_PHRASES = {
    "plus": ["what is {a} plus {b}", "add {a} and {b}"],
    "minus": ["what is {a} minus {b}"],
    "times": ["what is {a} times {b}", "multiply {a} by {b}"],
    "larger": ["which is larger, {a} or {b}"],
    "smaller": ["which is smaller, {a} or {b}"],
}


def all_requests() -> list:
    """Every canonical request, in a fixed order."""
    out = [Request("see", p) for p in SEE_PHRASES]
    for kind, phrases in IT_PHRASES.items():
        for p in phrases:
            for b in range(10):
                out.append(Request(kind, p.format(b=DIGIT_WORDS[b]), None, b))
    for kind, phrases in PAIR_PHRASES.items():
        for p in phrases:
            for a in range(10):
                for b in range(10):
                    text = p.format(a=DIGIT_WORDS[a], b=DIGIT_WORDS[b])
                    out.append(Request(kind, text, a, b))
    return out


def compute(kind: str, a: int, b: int) -> str:
    if kind == "plus":
        return number_words(a + b)
    if kind == "minus":
        return number_words(a - b)
    if kind == "times":
        return number_words(a * b)
    if kind in ("larger", "smaller"):
        if a == b:
            return EQUAL
        pick = max(a, b) if kind == "larger" else min(a, b)
        return number_words(pick)
    if kind == "is_larger":
        return "yes" if a > b else "no"
    if kind == "is_smaller":
        return "yes" if a < b else "no"
    raise ValueError(kind)


def answer(request: Optional[Request], digit: Optional[int]) -> str:
    """The answer to `request` (None = nothing asked) with `digit` visible (None = none)."""
    if request is None:
        return describe_digit(digit)
    if request.kind == "see":
        return describe_digit(digit)
    if request.a is None:
        if digit is None:
            return NO_NUMBER
        return compute(request.kind, digit, request.b)
    return compute(request.kind, request.a, request.b)


def answer_for_inputs(request: Optional[Request], image_shown: bool,
                      digit: Optional[int]) -> str:
    """Like `answer`, but with no request and no image at all the model says so."""
    if request is None and not image_shown:
        return NO_QUESTION
    return answer(request, digit if image_shown else None)


NUMERAL = {w: str(i) for i, w in enumerate(DIGIT_WORDS)}


def typed_form(text: str, rng: random.Random) -> str:
    """A plausible typed version of a canonical sentence."""
    words = text.split(" ")
    if rng.random() < 0.3:
        words = [NUMERAL.get(w.rstrip(","), w.rstrip(",")) + ("," if w.endswith(",") else "")
                 for w in words]
    s = " ".join(words)
    r = rng.random()
    if r < 0.2:
        s = s[0].upper() + s[1:]
    elif r < 0.25:
        s = s.upper()
    if rng.random() < 0.3:
        s = s + "?"
    if rng.random() < 0.1:
        s = s.replace(",", "")
    return s


def words_for_ctc(text: str) -> list:
    """The canonical sentence as a word list (for the audio encoder's auxiliary loss)."""
    return text.replace(",", "").split(" ")


def word_vocab() -> list:
    words = set()
    for r in all_requests():
        words.update(words_for_ctc(r.text))
    return sorted(words)


def all_answers() -> list:
    out = {NO_NUMBER, NO_QUESTION, EQUAL, "yes", "no"}
    out.update(describe_digit(d) for d in range(10))
    out.update(number_words(n) for n in range(-9, 82))
    return sorted(out)
