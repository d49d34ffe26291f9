"""The derail detector flags empty, looping and language-switched answers, and leaves good answers alone."""

from __future__ import annotations

import re

import pytest

from engine.derailment import is_derailed, is_word_loop

FRANCE = "What is the capital of France?"

# answers SmolLM2-135M gave at temperature 0.3, top-p 0.9, and a few written to look like them
DERAILED = [
    ("", FRANCE, "empty"),
    ("   \n\t  ", FRANCE, "empty"),
    ("\u200b\n", FRANCE, "empty"),
    (
        "La femme de France, la femme de France, la femme de France, la femme de France, la femme de",
        FRANCE,
        "loop",
    ),
    (
        "Le Grand Paris, le Grand-Français, la République, la République-Luxembourg, "
        "la République-Luxembourg, la République-Luxembourg, la République-Luxembourg, "
        "la République-Luxembourg, la",
        FRANCE,
        "loop",
    ),
    (
        "A game of the game of the town of Ashwood! A game of the town of Ashwood! A game of the town of "
        "Ashwood! A game of the town of Ashwood! A game of the town of Ashwood!",
        "Suggest a fun game to play with friends.",
        "loop",
    ),
    ("hahahahahahahahahahahaha", "Tell me a joke.", "loop"),
    ("Paris Paris Paris Paris Paris Paris", FRANCE, "loop"),
    ("yes " * 20, "Is water wet?", "loop"),
    (
        "The answer is the answer is the answer is the answer is the answer is the answer and so on.",
        "What is 2 + 2?",
        "loop",
    ),
    (
        "A baby dog! It's a cute and fluffy little thing called a puppy. Puppies are cute and fluffy, "
        "just like their mommy and daddy used to be. They're also cute and fluffy, just like their mommy "
        "and daddy used to be.\n\nBut, you know, puppies are also cute and fluffy, just like their mommy "
        "and daddy used to be. They're so cute and fluffy, just like",
        "What do you call a baby dog?",
        "loop",
    ),
    (
        "The main ingredient in guacamole is a type of salsa made from guacamole, which is a type of "
        "salsa made from guacamole, a type of salsa made from guacamole. However, guacamole is a type of "
        "salsa made from guacamole, which is a type of salsa made f",
        "What is the main ingredient in guacamole?",
        "loop",
    ),
    (
        "La capitale de la France est Paris, une ville qui est connue pour ses monuments et sa culture.",
        FRANCE,
        "language",
    ),
    (
        "La capital de Francia es París, una ciudad que es conocida por sus museos y por la torre Eiffel.",
        FRANCE,
        "language",
    ),
    (
        "Die Hauptstadt von Frankreich ist Paris, und sie ist auch die größte Stadt des Landes.",
        FRANCE,
        "language",
    ),
    (
        "Il capo di Italy, il capital di Roma, e il capo di Napoli che è la città più bella.",
        "What is the capital of Italy?",
        "language",
    ),
    (
        "A capital de Portugal é Lisboa, uma cidade muito bonita que está perto do mar.",
        "What is the capital of Portugal?",
        "language",
    ),
    (
        "The capital of France is Paris. La ville de Paris est la capitale de la France depuis des siècles.",
        FRANCE,
        "language",
    ),
    (
        "La France est la cité, le monde. Paris, the heart of France is home to the capital city and its "
        "surrounding area, making it one of the most iconic cities in Europe.",
        FRANCE,
        "language",
    ),
    ("法国的首都是巴黎，这是一个美丽的城市。", FRANCE, "language"),
    ("Paris — это столица Франции и её крупнейший город.", FRANCE, "language"),
    ("Paris 是 法国 的 首都 и столица ของประเทศ", FRANCE, "language"),
]


@pytest.mark.parametrize(("answer", "prompt", "reason"), DERAILED)
def test_derailed_answers_are_flagged_with_their_reason(answer: str, prompt: str, reason: str) -> None:
    assert is_derailed(answer, prompt=prompt) == reason


GOOD = [
    ("Paris.", FRANCE),
    ("Paris", FRANCE),
    ("The capital of France is Paris.", FRANCE),
    (
        "The capital of France is Paris, home of the Musée du Louvre, the Champs-Élysées and Notre-Dame de "
        "Paris.",
        FRANCE,
    ),
    ("Paris is the capital. Locals greet you with « Bonjour, ça va ? » in the mornings.", FRANCE),
    ("144.", "What is 12 times 12?"),
    ("12 x 12 = 144", "What is 12 times 12?"),
    ("3.14159", "What is pi to five decimals?"),
    ("Pi is written π.", "How is pi written?"),
    (
        "Here is what to pack:\n\n1. Water\n2. Snacks\n3. A map\n4. A rain jacket\n5. A first-aid kit\n"
        "6. Sunscreen",
        "What should I pack for a weekend hike?",
    ),
    (
        "- Flour\n- Eggs\n- Milk\n- Butter\n- A pinch of salt",
        "What do I need for pancakes?",
    ),
    (
        "To center a div, use flexbox:\n\n```css\n.parent {\n  display: flex;\n  justify-content: center;\n"
        "  align-items: center;\n}\n```\n\nThis centers the child both ways.",
        "How do I center a div in CSS?",
    ),
    ("```python\nprint(2 + 3)\n```", "Write a Python expression that adds 2 and 3."),
    (
        "Recursion is a function calling itself until it reaches a base case:\n\n```python\n"
        "def factorial(n):\n    if n == 0:\n        return 1\n    else:\n"
        "        return n * factorial(n - 1)\n```",
        "What is recursion in programming?",
    ),
    (
        "The speed of light is approximately 299,792.458 kilometres per second (about 186,000 miles per "
        "second). This is derived from Maxwell's equations.",
        "What is the speed of light?",
    ),
    ("matrix = [[0, 0], [0, 0]]", "Make a 2x2 matrix of zeros in Python."),
    (
        "Lists are mutable and tuples are not: you can append to a list, but a tuple stays as it was made. "
        "Use a tuple for fixed records and a list for collections that grow.",
        "What is the difference between a list and a tuple in Python?",
    ),
    (
        "The sky appears blue because of Rayleigh scattering: air molecules scatter short, blue wavelengths "
        "of sunlight more than long, red ones, so blue light reaches our eyes from every direction.",
        "Why is the sky blue?",
    ),
    ('In Spanish, "thank you" is "gracias".', "Translate 'thank you' into Spanish."),
    (
        "Gracias. También puedes decir «muchas gracias» para dar las gracias con más énfasis.",
        "How do you say thank you in Spanish?",
    ),
    ("ありがとう (arigatou)", "Translate 'thank you' into Japanese."),
    ("La capitale de la France est Paris.", "Quelle est la capitale de la France ?"),
    ("Les Misérables by Victor Hugo.", "Recommend a French novel."),
    (
        "El Salvador, also known as El Salvador de la Catrina (La Ciena de la Catrón), is the capital of "
        "the Spanish island nation of El Salvador.",
        "What is the capital of Spain?",
    ),
    ("The words are: je, tu, il, elle, nous, vous, ils.", "Recommend a French novel."),
    ('"Je pense, donc je suis" (I think, therefore I am).', "What is Descartes' most famous quote?"),
    (
        "The motto of France is « Liberté, égalité, fraternité », and its capital is Paris, which sits "
        "on the Seine. The motto appears on coins, stamps and the front of town halls.",
        FRANCE,
    ),
    (
        "Mix the flour and the sugar in a large bowl. Add the eggs to the bowl and whisk. Add the milk "
        "to the bowl a little at a time, then add the melted butter to the bowl. Heat a pan, pour in a "
        "ladle of batter, and cook each pancake for a minute on each side until golden.",
        "How do I make pancakes?",
    ),
    ("Ho ho ho, merry Christmas!", "What does Santa say?"),
    ("Sure! 😊👍", "Say something nice."),
    ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10", "Count to ten."),
    ("Mount Everest, at 8,849 m (29,032 ft).", "What is the tallest mountain in the world?"),
]


@pytest.mark.parametrize(("answer", "prompt"), GOOD)
def test_good_answers_are_not_flagged(answer: str, prompt: str) -> None:
    assert is_derailed(answer, prompt=prompt) is None


def test_without_a_prompt_english_is_expected() -> None:
    assert is_derailed("The capital of France is Paris.") is None
    assert is_derailed("La capitale de la France est Paris, une ville qui est très belle.") == "language"


def test_a_word_loop_is_a_whole_unit_repeated() -> None:
    assert is_word_loop(("one two three four " * 3).split())
    assert not is_word_loop(("one two three four " * 2 + "one two three").split())  # not quite three copies
    assert not is_word_loop(["ho", "ho", "ho", "merry", "christmas"])  # too short for three copies to count
    assert is_word_loop(("ha " * 6).split())


def gate_rule_before(text: str) -> bool:
    """The eval gate's degeneracy rule before it called this detector (trainer/gate.py `is_degenerate`)."""
    stripped = text.strip()
    words = stripped.split()
    if not stripped:
        return True
    looping = re.search(r"(.{1,12}?)\1{5,}", stripped, re.DOTALL)
    return bool(looping) or (len(words) >= 12 and len(set(words)) / len(words) < 0.3)


def test_whatever_the_gate_called_degenerate_is_derailed_but_indentation() -> None:
    texts = [answer for answer, _, _ in DERAILED] + [answer for answer, _ in GOOD]
    texts += [
        "......",
        "!!!!!!!!",
        "0, 0, 0, 0, 0, 0, 0",
        "the cat the dog the cat the dog the the cat dog the cat",
        "x" * 50,
    ]
    flagged = [text for text in texts if gate_rule_before(re.sub(r"\s+", " ", text))]

    assert len(flagged) >= 11
    assert all(is_derailed(text) in ("empty", "loop") for text in flagged)
    indented = "def f(x):\n    if x:\n        return 1\n    return 0"
    assert gate_rule_before(indented)  # eight spaces were a loop to the gate: code is not
    assert is_derailed(indented) is None
