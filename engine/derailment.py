"""Telling a derailed answer from a poor one: empty, stuck in a loop, or in another language than the prompt.

Pure Python and offline. Loops are found from repeated text: the eval gate's old rules (a short piece six
times in a row, few distinct words), a run of words repeated whole, a phrase that keeps coming back. A
language switch is found from stopword profiles of English and the languages SmolLM2 drifts into (French,
Spanish, Portuguese, Italian, German, Dutch), sentence by sentence (an answer that opens in another language,
or has a good part in one), and from the share of letters in another script than the prompt's. A prompt
that names a language or asks for a translation may be answered in that language.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Literal

Reason = Literal["empty", "loop", "language"]

# The eval gate's loop rules before it called this module, kept so this covers all they did: a piece of
# one to twelve characters repeated six or more times in a row (whitespace runs aside: code is indented),
# or very few distinct words.
_CHARACTER_LOOP = re.compile(r"(.{1,12}?)\1{5,}", re.DOTALL)
_SPACES = re.compile(r"\s+")
DISTINCT_WORDS_MIN_WORDS = 12
DISTINCT_WORDS_MIN_SHARE = 0.3
# A run of words repeated whole, three times or more in a row ("la femme de France, la femme de France,
# ..."), long enough that it is no refrain or "ho ho ho"; or six times or more however short, as the gate's
# character rule but for pieces longer than twelve characters ("Paris Paris Paris Paris Paris Paris").
WORD_LOOP_COPIES = 3
WORD_LOOP_MIN_WORDS = 12
WORD_LOOP_SHORT_COPIES = 6
WORD_LOOP_LONGEST_UNIT = 30  # words in the longest unit looked for
# A phrase coming back again and again with other words between ("cute and fluffy, just like their mommy
# ..." four times): five words, four times or more, making up a fifth of the answer or more.
PHRASE_WORDS = 5
PHRASE_MIN_COUNT = 4
PHRASE_MIN_SHARE = 0.2

FOREIGN_SCRIPT_SHARE = 0.3  # above this share of letters in another script than the prompt's: switched
FOREIGN_SCRIPT_MIN_LETTERS = 4  # fewer are a quoted term ("pi is π"), not an answer in another script
SEGMENT_MIN_HITS = 2  # stopwords a sentence needs before it is said to be in a language
FOREIGN_WORDS_SHARE = 0.25  # above this share of words in sentences of another language: switched
# Quoted text is a mention ('the motto is "Liberté, égalité, fraternité"'), not the language of the answer.
_QUOTED = re.compile(r'"[^"\n]*"|“[^”\n]*”|«[^»\n]*»')

_WORD = re.compile(r"[^\W\d_]+")  # letters only: digits and underscores tell nothing about a language
_SENTENCE = re.compile(r"[.!?;:]+(?=\s|$)|\n+")  # a full stop inside "301,875.49" or "e.g" ends nothing

# The most frequent function words of each language. The others lose any word that is also English ("a",
# "in", "no", "me"); words that are English only rarely stay (German "die", French "plus" is left out).
_PROFILES = {
    "english": """the a an and or but of to in on at for with by from is are was were be been being it its
        this that these those you your i we he she they them their his her our my me not no can will would
        should could has have had do does did as if so which who what when where how why there here also
        more most some any all about into than then just only very one other such each because while
        like up out over s t ll re ve m don per via""",
    "french": """le la les un une des du de et est sont dans pour avec sur qui que ce cette ces il elle ils
        elles nous vous je ne pas au aux leur leurs mais ou où été être avoir fait comme tout tous très aussi
        sa ses se lui peut cet entre sans sous après avant depuis chez dont donc ainsi qu l d j n c""",
    "spanish": """el la los las un una unos unas de del y en es son que por para con se su sus al lo como más
        pero este esta estos estas muy también ya hay está están fue ser sin sobre entre cuando donde porque
        le les nos mi tu yo usted puede tiene hace""",
    "portuguese": """o os um uma de do da dos das e é em na nos que para com por se não mais mas seu sua ao
        à pelo pela como foi ser está são muito também isso este esta ele ela eles você quando onde porque já
        há sobre entre até sem""",
    "italian": """il lo la gli le un uno una di del della dei delle degli e è che per con non si da al alla
        nel nella sono più ma anche questo questa suo sua loro essere stato ha hanno molto quando dove perché
        sul sulla tra fra ci mi""",
    "german": """der die das und ist sind ein eine einen einem einer den dem des zu mit von für auf nicht sich
        es ich du er sie wir ihr auch wie oder aber im zum zur bei aus nach noch wird werden hat haben kann
        können wenn dass wo um als nur mehr sehr über vom durch""",
    "dutch": """de het een en van dat die te op voor met zijn niet aan er maar om ook als dan bij wat wordt
        naar deze door heeft kan nog""",
}
ENGLISH = frozenset(_PROFILES["english"].split())
STOPWORDS: dict[str, frozenset[str]] = {
    language: frozenset(words.split()) - (ENGLISH if language != "english" else frozenset())
    for language, words in _PROFILES.items()
}
# A prompt that names another language (or asks for a translation) may rightly be answered partly in it.
_NAMES_A_LANGUAGE = re.compile(
    r"\b(translat\w*|french|spanish|german|portuguese|italian|dutch|latin|chinese|mandarin|cantonese|"
    r"japanese|korean|russian|arabic|hindi|greek|hebrew|turkish|polish|swedish|language\s+other)\b",
    re.IGNORECASE,
)
_SCRIPT_ALIASES = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "HANGUL": "CJK"}  # one family for CJK text


def is_derailed(answer: str, *, prompt: str | None = None) -> Reason | None:
    """Why `answer` (to `prompt`, English when None) derailed: "empty", "loop" or "language"; None if not."""
    if is_empty(answer):
        return "empty"
    if is_loop(answer):
        return "loop"
    if prompt is not None and _NAMES_A_LANGUAGE.search(prompt):
        return None
    if switches_language(answer, prompt=prompt):
        return "language"
    return None


def is_empty(answer: str) -> bool:
    """Nothing visible: only whitespace, control or format characters (zero-width spaces)."""
    return all(character.isspace() or unicodedata.category(character) in ("Cc", "Cf") for character in answer)


def is_loop(answer: str) -> bool:
    """A short piece repeated many times, a run of words repeated whole, a phrase that keeps coming back, or
    very few distinct words."""
    stripped = answer.strip()
    words = stripped.split()
    if _CHARACTER_LOOP.search(_SPACES.sub(" ", stripped)):  # runs of spaces are indentation, not a loop
        return True
    if len(words) >= DISTINCT_WORDS_MIN_WORDS and len(set(words)) / len(words) < DISTINCT_WORDS_MIN_SHARE:
        return True
    letter_words = _WORD.findall(stripped.lower())
    return is_word_loop(letter_words) or is_phrase_loop(letter_words)


def is_word_loop(words: list[str]) -> bool:
    """One unit of words repeated whole in a row: three times over 12+ words, or six times however short."""
    for unit in range(1, min(WORD_LOOP_LONGEST_UNIT, len(words) // WORD_LOOP_COPIES) + 1):
        matching = 0  # how many words in a row equal the word one unit before them
        for index in range(unit, len(words)):
            matching = matching + 1 if words[index] == words[index - unit] else 0
            covered = matching + unit
            if covered >= WORD_LOOP_COPIES * unit and covered >= WORD_LOOP_MIN_WORDS:
                return True
            if covered >= WORD_LOOP_SHORT_COPIES * unit:
                return True
    return False


def is_phrase_loop(words: list[str]) -> bool:
    """One phrase of PHRASE_WORDS words PHRASE_MIN_COUNT+ times, covering PHRASE_MIN_SHARE of the words."""
    phrases = Counter(
        tuple(words[index : index + PHRASE_WORDS]) for index in range(len(words) - PHRASE_WORDS + 1)
    )
    if not phrases:
        return False
    count = phrases.most_common(1)[0][1]
    return count >= PHRASE_MIN_COUNT and count * PHRASE_WORDS >= PHRASE_MIN_SHARE * len(words)


def switches_language(answer: str, *, prompt: str | None = None) -> bool:
    """The answer is (in good part) in another language or script than the prompt."""
    prompt_script = dominant_script(prompt or "") or "LATIN"
    letters = [character for character in answer if character.isalpha()]
    foreign_letters = sum(script_of(character) != prompt_script for character in letters)
    if (
        foreign_letters >= FOREIGN_SCRIPT_MIN_LETTERS
        and foreign_letters / len(letters) > FOREIGN_SCRIPT_SHARE
    ):
        return True
    if prompt_script != "LATIN":
        return False  # the stopword profiles are all of Latin-script languages
    expected = (language_of(prompt) if prompt else None) or "english"
    sentences = [_WORD.findall(sentence) for sentence in _SENTENCE.split(_QUOTED.sub(" ", answer))]
    sentences = [words for words in sentences if words]
    foreign = [language_of_words(words) not in (None, expected) for words in sentences]
    if foreign and foreign[0]:
        return True  # it opens in another language: the first impression is lost whatever follows
    words = sum(len(words) for words in sentences)
    foreign_words = sum(len(words) for words, other in zip(sentences, foreign, strict=True) if other)
    return words > 0 and foreign_words / words > FOREIGN_WORDS_SHARE


def language_of(text: str) -> str | None:
    """The language whose stopwords `text` uses most (at least SEGMENT_MIN_HITS of them); None if unclear."""
    return language_of_words(_WORD.findall(text))


def language_of_words(words: list[str]) -> str | None:
    """`language_of` for the words of one sentence; English wins a tie.

    Another language's function word counts only in lower case or opening the sentence: capitalised
    inside it, it is part of a name ("El Salvador", "Notre-Dame de Paris", "La Tour Eiffel")."""
    lowered = [word.lower() for word in words]
    plain = [word.lower() for index, word in enumerate(words) if index == 0 or word.islower()]
    hits = {
        language: sum(word in stopwords for word in (lowered if language == "english" else plain))
        for language, stopwords in STOPWORDS.items()
    }
    best = max(hits, key=lambda language: (hits[language], language == "english"))
    return best if hits[best] >= SEGMENT_MIN_HITS else None


def dominant_script(text: str) -> str | None:
    """The script most of the letters of `text` are written in ("LATIN", "CJK", "CYRILLIC", ...)."""
    scripts = Counter(script_of(character) for character in text if character.isalpha())
    return scripts.most_common(1)[0][0] if scripts else None


def script_of(letter: str) -> str:
    """The script of one letter, from its Unicode name ("LATIN SMALL LETTER E" -> "LATIN")."""
    script = unicodedata.name(letter, "UNKNOWN").split(" ")[0]
    return _SCRIPT_ALIASES.get(script, script)
