//! The CLIP BPE tokenizer with `clip.tokenize`'s 77-token framing, as Talk2DINO feeds the CLIP text tower.
//!
//! Byte-pair encoding itself comes from `instant-clip-tokenizer` (OpenAI's `bpe_simple_vocab_16e6.txt` bundled:
//! ids 0–255 byte symbols, 256–511 the same with `</w>`, then 48,894 merges by rank, 49406 start, 49407 end),
//! whose merge loop is the reference's: repeatedly merge every occurrence of the lowest-ranked pair. What the
//! crate leaves out is done here, in the reference's order:
//!
//! 1. the text cleaning of `basic_clean`: `ftfy.fix_text` — the subset of its default fixes that apply to text
//!    that is valid Unicode (HTML entities when the text has no `<`, terminal escapes removed, C1 controls read as
//!    Windows-1252, Latin ligatures and full-width forms expanded, curly quotes straightened, control characters
//!    removed, NFC) — then `html.unescape` twice (HTML5 rules, `htmlize`) and strip;
//! 2. `whitespace_clean` (runs of whitespace → one space) and lower-casing;
//! 3. the word split with the reference pattern, where `<|startoftext|>` and `<|endoftext|>` in the text are the
//!    special tokens (the crate spells them `<start_of_text>`, so they are split off here first);
//! 4. framing: `[49406] + ids + [49407]`, zero-padded to the context length; longer sequences are cut to the
//!    context length with the last id set to 49407 (`truncate=True`).
//!
//! Not reproduced: ftfy's repair of mojibake (text that was decoded with the wrong codec, e.g. `cafÃ©`), which
//! needs its codec heuristics; such text is tokenised as it stands.

use instant_clip_tokenizer::{Token, Tokenizer};

/// Start-of-text id.
pub const START_OF_TEXT: i64 = 49406;
/// End-of-text id (also the pooling position: the argmax of the ids).
pub const END_OF_TEXT: i64 = 49407;
/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;

/// The CLIP tokenizer (build once; building parses the 49k merges).
pub struct ClipTokenizer {
    bpe: Tokenizer,
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ClipTokenizer {
    pub fn new() -> Self {
        Self { bpe: Tokenizer::new() }
    }

    /// Token ids of `text` without framing, after the reference's cleaning.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let text = whitespace_clean(&basic_clean(text)).to_lowercase();
        let mut ids = Vec::new();
        let mut tokens: Vec<Token> = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let special = [("<|startoftext|>", START_OF_TEXT), ("<|endoftext|>", END_OF_TEXT)]
                .iter()
                .filter_map(|&(marker, id)| rest.find(marker).map(|at| (at, marker.len(), id)))
                .min();
            let (plain, after) = match special {
                Some((at, len, id)) => (&rest[..at], Some((&rest[at + len..], id))),
                None => (rest, None),
            };
            tokens.clear();
            self.bpe.encode(plain, &mut tokens);
            ids.extend(tokens.iter().map(|t| i64::from(t.to_u16())));
            match after {
                Some((next, id)) => {
                    ids.push(id);
                    rest = next;
                }
                None => break,
            }
        }
        ids
    }

    /// `clip.tokenize(text, context_length, truncate=True)` for one text.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<i64> {
        let mut ids = Vec::with_capacity(context_length);
        ids.push(START_OF_TEXT);
        ids.extend(self.encode(text));
        ids.push(END_OF_TEXT);
        if ids.len() > context_length {
            ids.truncate(context_length);
            if let Some(last) = ids.last_mut() {
                *last = END_OF_TEXT;
            }
        }
        ids.resize(context_length, 0);
        ids
    }

    /// A batch of texts as a (N, context_length) row-major id matrix.
    pub fn tokenize_batch<S: AsRef<str>>(&self, texts: &[S], context_length: usize) -> Vec<i64> {
        texts
            .iter()
            .flat_map(|t| self.tokenize(t.as_ref(), context_length))
            .collect()
    }
}

/// `" ".join(text.split())` with Python's notion of whitespace.
fn whitespace_clean(text: &str) -> String {
    text.split(is_python_space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `str.isspace` for one character: Unicode White_Space plus the information separators U+001C–U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `ftfy.fix_text` (the fixes for valid Unicode, see the module doc), `html.unescape` twice, strip.
fn basic_clean(text: &str) -> String {
    let text = fix_text(text);
    let text = htmlize::unescape(htmlize::unescape(text.as_str()).as_ref()).into_owned();
    text.trim_matches(is_python_space).to_string()
}

/// Windows-1252 characters for the C1 range U+0080–U+009F (ftfy's "sloppy" codec keeps the 5 undefined ones).
const CP1252_C1: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘', '’',
    '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

fn is_control(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC
        | 0x1D173..=0x1D17A | 0xE0000..=0xE007F)
}

/// Removes ANSI terminal escapes `ESC [ digits/semicolons letter`.
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\u{1b}' && text[i + 1..].starts_with('[') {
            let tail = &text[i + 2..];
            let params = tail
                .find(|ch: char| !(ch.is_ascii_digit() || ch == ';'))
                .unwrap_or(tail.len());
            if tail[params..].chars().next().is_some_and(|ch| ch.is_ascii_alphabetic()) {
                let skip = 1 + params + 1;
                for _ in 0..skip {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn fix_text(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let text = if text.contains('<') {
        text.to_string()
    } else {
        htmlize::unescape(text).into_owned()
    };
    let text = remove_terminal_escapes(&text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let code = c as u32;
        let c = if (0x80..=0x9F).contains(&code) {
            CP1252_C1[(code - 0x80) as usize]
        } else {
            c
        };
        if let Some(expansion) = ligature(c) {
            out.push_str(expansion);
        } else if c == '\u{3000}' {
            out.push(' ');
        } else if (0xFF01..0xFFF0).contains(&(c as u32)) {
            out.extend(std::iter::once(c).nfkc());
        } else if matches!(c, '\u{02bc}' | '\u{2018}'..='\u{201b}') {
            out.push('\'');
        } else if ('\u{201c}'..='\u{201f}').contains(&c) {
            out.push('"');
        } else if !is_control(c) {
            out.push(c);
        }
    }
    out.nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_pads() {
        let t = ClipTokenizer::new();
        let ids = t.tokenize("Hi there", 77);
        assert_eq!(&ids[..4], &[49406, 1883, 997, 49407]);
        assert!(ids[4..].iter().all(|&i| i == 0));
        let long = "car ".repeat(100);
        let ids = t.tokenize(&long, 77);
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[76], END_OF_TEXT);
    }

    #[test]
    fn cleaning_steps() {
        assert_eq!(whitespace_clean("  a \t\n b\u{3000}c  "), "a b c");
        assert_eq!(basic_clean(" &amp;amp; “quoted” ﬁne ＡＢ "), "& \"quoted\" fine AB");
        assert_eq!(fix_text("a\u{1b}[31mred\u{1b}[0m\u{7f}"), "ared");
        let t = ClipTokenizer::new();
        assert_eq!(
            t.encode("a <|endoftext|> b"),
            [t.encode("a"), vec![END_OF_TEXT], t.encode("b")].concat()
        );
    }
}
