"""Reference token ids for mrdino_model::clip_tokenizer from CLIP's own tokenizer (OpenAI's SimpleTokenizer as
shipped in open_clip, with ftfy and regex), on a deterministic corpus of >= 1,000 strings: prompts, case,
punctuation, contractions, digits, HTML entities, odd whitespace, non-ASCII letters, CJK, emoji, curly quotes,
ligatures, full-width forms and over-long prompts (truncated to 77 with the end token kept).

Usage: clip_tokenizer_fixtures.py OUT.json
"""
import json
import random
import sys

from open_clip.tokenizer import SimpleTokenizer

WORDS = ["car", "Cyclist", "pedestrian", "traffic light", "a", "the", "photo", "of", "BUS", "truck", "van",
         "motorbike", "dog", "person", "rider", "tram", "stop sign", "it's", "they're", "we've", "I'm", "you'll",
         "he'd", "don't", "naïve", "café", "Ünïcödé", "straße", "Ελληνικά", "Σίσυφος", "кошка", "日本語", "自転車",
         "한국어", "🚗", "🚲🚶", "Ⅻ", "x²", "½", "“quoted”", "‘single’", "ﬁne", "ﬂow", "ＦＵＬＬ", "ｗｉｄｔｈ",
         "&amp;", "&lt;b&gt;", "&#39;s", "AT&T", "&quot;x&quot;", "e-mail", "state-of-the-art", "U.S.A.", "...",
         "!!!", "?!", "(parenthesis)", "[bracket]", "{brace}", "#hashtag", "@user", "50%", "$100", "3.14",
         "2024", "1st", "007", "12:30", "#1", "C3PO", "R2-D2", "mp3", "x86_64", "ﬀ", "NFC: é", "NFD: e\u0301",
         "tab\there", "new\nline", "  spaced  ", "\u00a0nbsp", "zero\u200bwidth", "ⓐⓑ", "Ⅷ", "ǅ", "ĳ"]
TEMPLATES = ["itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
             "a {} in a video game.", "art of the {}.", "a photo of the small {}."]


def corpus():
    rng = random.Random(2026)
    texts = ["", " ", "a", "A.", "hello world", "Hello World!!!", "it's", "IT'S", "2024", "1234567890"]
    texts += [t.format(w) for t in TEMPLATES for w in WORDS]
    while len(texts) < 1100:
        n = rng.randint(1, 12)
        sep = rng.choice([" ", "  ", ", ", "\t", " \n ", "-", ""])
        texts.append(sep.join(rng.choice(WORDS) for _ in range(n)))
    for n in (40, 80, 200):
        texts.append(" ".join(rng.choice(WORDS) for _ in range(n)))
    texts.append("a " * 100)
    texts.append("1" * 120)
    return texts


def main():
    tok = SimpleTokenizer()
    sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
    rows = []
    for text in corpus():
        ids = [sot] + tok.encode(text) + [eot]
        if len(ids) > 77:
            ids = ids[:77]
            ids[-1] = eot
        ids += [0] * (77 - len(ids))
        rows.append({"text": text, "ids": ids})
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False)
    print(f"{len(rows)} strings")


if __name__ == "__main__":
    main()
