//! Token counting: the only user of tiktoken-rs.
//!
//! Each encoding's tables are built once per process (tiktoken-rs singletons) and shared by all
//! threads. Counts use `encode_ordinary`: special-token text such as `<|endoftext|>` in a message
//! is counted as the ordinary text it is.
//!
//! # Exact budgets without recounting
//!
//! tiktoken's pre-tokenizer splits text into chunks before byte-pair merging, and no chunk spans
//! a newline that is followed by a non-space character (other than `/`, which o200k_base lets
//! a run of punctuation take after its newlines). So if a text is cut into pieces that each end
//! with `\n`, and every piece but the first starts with a non-space character other than `/`
//! (record lines start with a digit, notes with `-`, headers with `#`), the token count of the whole is the sum of the pieces' counts. recap renders contexts in such
//! pieces (a header, a note, a record with its continuation lines), which turns the budget check
//! into a sum over cached per-piece counts. [`Encoding::count`] of the joined text is the ground
//! truth that tests compare against.
//!
//! A second boundary holds inside a line: no chunk runs from a non-whitespace character into a
//! following space (U+0020), and no pattern looks behind. So a text split before every space
//! that follows a non-whitespace character also counts as the sum of its fragments.
//! [`Encoding::count_fragments`] uses that to count short, ever-changing texts (the Earlier
//! summary) from a cache of word-sized fragments instead of running the tokenizer's regex, which
//! costs tens of microseconds even on a short line, and [`Encoding::count_within`] to count a
//! long line only as far as a cap needs.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

/// A tiktoken encoding recap can count with.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Encoding {
    /// GPT-4, GPT-3.5-turbo and the text-embedding-3 models. The default.
    #[default]
    #[serde(rename = "cl100k_base")]
    Cl100kBase,
    /// GPT-4o, GPT-4.1, GPT-5 and the o-series.
    #[serde(rename = "o200k_base")]
    O200kBase,
}

/// Per encoding (by [`Encoding::ALL`] position): whether its tables are built.
static WARM: [std::sync::atomic::AtomicBool; 2] = [
    std::sync::atomic::AtomicBool::new(false),
    std::sync::atomic::AtomicBool::new(false),
];

/// Why an encoding or model name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodingError {
    /// Not an encoding recap supports.
    #[error("unknown encoding {0:?}; use cl100k_base or o200k_base")]
    UnknownEncoding(String),
    /// tiktoken does not know the model.
    #[error(
        "unknown model {0:?}; name a model tiktoken knows (gpt-4o, gpt-4, gpt-3.5-turbo, o1, ...) or pass encoding=cl100k_base|o200k_base"
    )]
    UnknownModel(String),
    /// tiktoken maps the model to an encoding recap does not carry.
    #[error(
        "model {model:?} uses the {encoding} encoding, which recap does not support; use a model on cl100k_base or o200k_base, or pass encoding="
    )]
    UnsupportedModel {
        /// The model name.
        model: String,
        /// The encoding tiktoken maps it to.
        encoding: &'static str,
    },
}

impl Encoding {
    /// Every supported encoding, in a fixed order (also the index order of per-encoding caches).
    pub const ALL: [Encoding; 2] = [Encoding::Cl100kBase, Encoding::O200kBase];

    /// tiktoken's name for the encoding.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Cl100kBase => "cl100k_base",
            Encoding::O200kBase => "o200k_base",
        }
    }

    /// Position in [`Encoding::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The encoding tiktoken uses for `model` (exact names, then prefixes, then `ft:` models).
    pub fn for_model(model: &str) -> Result<Encoding, EncodingError> {
        use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};
        let unsupported = |encoding| EncodingError::UnsupportedModel {
            model: model.to_owned(),
            encoding,
        };
        match get_tokenizer(model) {
            Some(Tokenizer::Cl100kBase) => Ok(Encoding::Cl100kBase),
            // o200k_harmony is o200k_base plus special tokens; ordinary text counts the same.
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => Ok(Encoding::O200kBase),
            Some(Tokenizer::P50kBase) => Err(unsupported("p50k_base")),
            Some(Tokenizer::P50kEdit) => Err(unsupported("p50k_edit")),
            Some(Tokenizer::R50kBase) => Err(unsupported("r50k_base")),
            Some(Tokenizer::Gpt2) => Err(unsupported("gpt2")),
            None => Err(EncodingError::UnknownModel(model.to_owned())),
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        // Marks the tables built (see `is_warm`).
        let bpe = match self {
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
        };
        WARM[self.index()].store(true, std::sync::atomic::Ordering::Release);
        bpe
    }

    /// Builds the encoding's tables now rather than on the first request.
    pub fn warm_up(self) {
        self.bpe();
    }

    /// Whether the encoding's tables are built: until then counting anything may take a good
    /// part of a second (building them), so callers on an async runtime count elsewhere.
    pub fn is_warm(self) -> bool {
        WARM[self.index()].load(std::sync::atomic::Ordering::Acquire)
    }

    /// The number of tokens in `text`.
    pub fn count(self, text: &str) -> u32 {
        saturate(self.bpe().count_ordinary(text))
    }

    /// The number of tokens in `text`, summed over its fragments (see the module docs), each
    /// counted once per process and then remembered. Exactly [`Encoding::count`], faster for
    /// short texts assembled from recurring words and numbers.
    pub fn count_fragments(self, text: &str) -> u32 {
        /// Fragments remembered per encoding before the cache starts over.
        const MAX_FRAGMENTS: usize = 65_536;
        static CACHES: [Mutex<Option<HashMap<String, u32>>>; 2] =
            [Mutex::new(None), Mutex::new(None)];
        let mut guard = CACHES[self.index()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let cache = guard.get_or_insert_with(HashMap::new);
        if cache.len() > MAX_FRAGMENTS {
            cache.clear();
        }
        fragments(text)
            .map(|fragment| match cache.get(fragment) {
                Some(&count) => count,
                None => {
                    let count = self.count(fragment);
                    cache.insert(fragment.to_owned(), count);
                    count
                }
            })
            .sum()
    }

    /// The number of tokens in `text` if it is at most `limit`; `None` when it is more. Reads
    /// only as much of `text` as it takes to know, in pieces whose counts add up (see the module
    /// docs): a 64 KB line that a window clips to 250 tokens is not tokenized whole.
    pub fn count_within(self, text: &str, limit: u32) -> Option<u32> {
        let bpe = self.bpe();
        let longest = self.longest_token_bytes();
        let mut total: u64 = 0;
        for piece in pieces(text) {
            // No token is longer than `longest` bytes: a piece this long has too many tokens.
            if (piece.len() / longest) as u64 + total > u64::from(limit) {
                return None;
            }
            total += bpe.count_ordinary(piece) as u64;
            if total > u64::from(limit) {
                return None;
            }
        }
        Some(total as u32)
    }

    /// [`Encoding::token_ends`] of a prefix of `text` holding more than `min_tokens` tokens
    /// (all of them when `text` has no more), and whether that is all of `text`. The offsets
    /// are exact where the text could be cut between pieces; a single piece too long to need
    /// whole is read only in part, and its last offsets are then a close guess (callers count
    /// what they cut, as [`Encoding::prefix_within`] does).
    pub fn token_ends_within(self, text: &str, min_tokens: u32) -> (Vec<u32>, bool) {
        let bpe = self.bpe();
        let wanted = min_tokens as usize + 1;
        // A prefix of this many bytes holds at least `wanted` tokens' worth of text.
        let enough_bytes = wanted.saturating_mul(self.longest_token_bytes());
        let mut ends = Vec::new();
        let mut start = 0;
        for piece in pieces(text) {
            let mut piece = piece;
            let mut partial = false;
            if piece.len() > enough_bytes {
                let mut end = enough_bytes;
                while !piece.is_char_boundary(end) {
                    end -= 1;
                }
                piece = &piece[..end];
                partial = true;
            }
            let mut end = start;
            for token in bpe.encode_ordinary(piece) {
                end += bpe.decode_bytes(&[token]).map_or(0, |bytes| bytes.len());
                ends.push(u32::try_from(end.min(text.len())).unwrap_or(u32::MAX));
            }
            start += piece.len();
            if ends.len() >= wanted || partial {
                return (ends, start == text.len());
            }
        }
        (ends, true)
    }

    /// The length in bytes of the encoding's longest token, found once per process.
    fn longest_token_bytes(self) -> usize {
        static LONGEST: [OnceLock<usize>; 2] = [OnceLock::new(), OnceLock::new()];
        *LONGEST[self.index()].get_or_init(|| {
            let bpe = self.bpe();
            // Both vocabularies are under 2^18 tokens; ids past the end do not decode.
            (0..1u32 << 18)
                .filter_map(|id| bpe.decode_bytes(&[id]).ok())
                .map(|bytes| bytes.len())
                .max()
                .unwrap_or(1)
                .max(1)
        })
    }

    /// The byte offsets at which `text`'s tokens end, in order: the prefix of `text` up to
    /// `ends[k - 1]` is its first `k` tokens. An offset can fall inside a character when a token
    /// holds part of one; [`Encoding::prefix_within`] rounds those down.
    ///
    /// Offsets are `u32` (texts here are at most a few MiB): callers keep them per record.
    pub fn token_ends(self, text: &str) -> Vec<u32> {
        let bpe = self.bpe();
        let mut end = 0;
        bpe.encode_ordinary(text)
            .into_iter()
            .map(|token| {
                end += bpe.decode_bytes(&[token]).map_or(0, |bytes| bytes.len());
                u32::try_from(end.min(text.len())).unwrap_or(u32::MAX)
            })
            .collect()
    }

    /// The longest prefix of `text` made of at most `max_tokens` of its first tokens and whose
    /// own count is at most `max_tokens`, cut at a character boundary. `ends` is
    /// [`Encoding::token_ends`] of `text`, so that callers trying several limits tokenize once.
    pub fn prefix_within<'t>(self, text: &'t str, ends: &[u32], max_tokens: u32) -> &'t str {
        let mut take = (max_tokens as usize).min(ends.len());
        loop {
            if take == ends.len() {
                return text;
            }
            let mut end = if take == 0 {
                0
            } else {
                ends[take - 1] as usize
            }
            .min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let prefix = &text[..end];
            // Re-encoding a cut chunk can, rarely, take more tokens than the cut did.
            let count = self.count(prefix);
            if count <= max_tokens || take == 0 {
                return prefix;
            }
            take = take.saturating_sub((count - max_tokens) as usize);
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Encoding {
    type Err = EncodingError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "cl100k_base" => Ok(Encoding::Cl100kBase),
            "o200k_base" => Ok(Encoding::O200kBase),
            _ => Err(EncodingError::UnknownEncoding(value.to_owned())),
        }
    }
}

/// Consecutive [`fragments`] of `text` joined into pieces of about [`PIECE_BYTES`]: what a
/// bounded count tokenizes one at a time (counts of pieces add up, as fragments' do).
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    /// Large enough that the tokenizer's per-call cost is small, small enough to stop early.
    const PIECE_BYTES: usize = 1024;
    let mut fragments = fragments(text);
    let mut start = 0;
    std::iter::from_fn(move || {
        let mut end = start + fragments.next()?.len();
        while end - start < PIECE_BYTES {
            match fragments.next() {
                Some(fragment) => end += fragment.len(),
                None => break,
            }
        }
        let piece = &text[start..end];
        start = end;
        Some(piece)
    })
}

/// Splits `text` before every space that follows a non-whitespace character and after every
/// newline that is followed by a non-whitespace character other than `/`: boundaries no
/// tokenizer chunk crosses.
pub fn fragments(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut previous: Option<char> = None;
        let mut cut = rest.len();
        for (at, ch) in rest.char_indices() {
            if let Some(before) = previous {
                let before_space = ch == ' ' && !before.is_whitespace();
                // o200k_base lets a run of punctuation take newlines and slashes after it
                // (`=\n/`): a line that starts with `/` may continue a chunk.
                let after_newline = before == '\n' && !ch.is_whitespace() && ch != '/';
                if before_space || after_newline {
                    cut = at;
                    break;
                }
            }
            previous = Some(ch);
        }
        let (fragment, tail) = rest.split_at(cut);
        rest = tail;
        Some(fragment)
    })
}

fn saturate(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// A token count per encoding, computed at most once each, shareable between threads.
///
/// Lock-free: a race computes the same count twice and stores it twice, which is harmless.
#[derive(Debug, Default)]
pub struct TokenCounts {
    counts: [AtomicU32; Encoding::ALL.len()],
}

const UNKNOWN: u32 = u32::MAX;

impl TokenCounts {
    /// An empty cache.
    pub fn new() -> TokenCounts {
        TokenCounts {
            counts: [AtomicU32::new(UNKNOWN), AtomicU32::new(UNKNOWN)],
        }
    }

    /// The count of `text()` under `encoding`, computed on first use.
    pub fn get_or_count(&self, encoding: Encoding, text: impl FnOnce() -> String) -> u32 {
        let slot = &self.counts[encoding.index()];
        match slot.load(Ordering::Relaxed) {
            UNKNOWN => {
                let count = encoding.count(&text()).min(UNKNOWN - 1);
                slot.store(count, Ordering::Relaxed);
                count
            }
            count => count,
        }
    }

    /// Records the count under `encoding`, computed elsewhere.
    pub fn set(&self, encoding: Encoding, count: u32) {
        self.counts[encoding.index()].store(count.min(UNKNOWN - 1), Ordering::Relaxed);
    }

    /// The count under `encoding` if it was computed already.
    pub fn cached(&self, encoding: Encoding) -> Option<u32> {
        match self.counts[encoding.index()].load(Ordering::Relaxed) {
            UNKNOWN => None,
            count => Some(count),
        }
    }
}

impl Clone for TokenCounts {
    fn clone(&self) -> Self {
        let copy = |i: usize| AtomicU32::new(self.counts[i].load(Ordering::Relaxed));
        TokenCounts {
            counts: [copy(0), copy(1)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_strings() {
        // Reference values from Python tiktoken.
        assert_eq!(Encoding::Cl100kBase.count("hello world"), 2);
        assert_eq!(Encoding::O200kBase.count("hello world"), 2);
        assert_eq!(Encoding::Cl100kBase.count(""), 0);
        assert_eq!(Encoding::Cl100kBase.count("<|endoftext|>"), 7);
    }

    #[test]
    fn models_map_like_tiktoken() {
        let cases = [
            ("gpt-4o", Ok(Encoding::O200kBase)),
            ("gpt-4o-mini-2024-07-18", Ok(Encoding::O200kBase)),
            ("gpt-5", Ok(Encoding::O200kBase)),
            ("o1", Ok(Encoding::O200kBase)),
            ("gpt-4", Ok(Encoding::Cl100kBase)),
            ("gpt-4-0613", Ok(Encoding::Cl100kBase)),
            ("gpt-3.5-turbo", Ok(Encoding::Cl100kBase)),
            ("ft:gpt-4o-2024-08-06:acme::abc", Ok(Encoding::O200kBase)),
        ];
        for (model, expected) in cases {
            assert_eq!(Encoding::for_model(model), expected, "{model}");
        }
        assert_eq!(
            Encoding::for_model("text-davinci-003")
                .unwrap_err()
                .to_string(),
            "model \"text-davinci-003\" uses the p50k_base encoding, which recap does not support; use a model on cl100k_base or o200k_base, or pass encoding="
        );
        assert!(matches!(
            Encoding::for_model("llama-3"),
            Err(EncodingError::UnknownModel(_))
        ));
    }

    #[test]
    fn encoding_names_round_trip() {
        for encoding in Encoding::ALL {
            assert_eq!(encoding.name().parse::<Encoding>().unwrap(), encoding);
        }
        assert_eq!(
            "p50k".parse::<Encoding>().unwrap_err().to_string(),
            "unknown encoding \"p50k\"; use cl100k_base or o200k_base"
        );
    }

    #[test]
    fn prefix_within_respects_the_limit_and_char_boundaries() {
        let text = "naïve café ünïcödé 🎉🎉🎉 ".repeat(40);
        for encoding in Encoding::ALL {
            let ends = encoding.token_ends(&text);
            assert_eq!(ends.len() as u32, encoding.count(&text));
            assert_eq!(*ends.last().unwrap() as usize, text.len());
            for limit in [0, 1, 2, 3, 7, 50, 10_000] {
                let prefix = encoding.prefix_within(&text, &ends, limit);
                assert!(text.starts_with(prefix));
                assert!(encoding.count(prefix) <= limit, "{encoding} {limit}");
            }
            assert_eq!(encoding.prefix_within(&text, &ends, 10_000), text);
        }
    }

    #[test]
    fn fragments_split_before_spaces_and_after_newlines() {
        let parts: Vec<&str> =
            fragments("## Earlier (4 events  at 10:00)\nkinds: a=1 ·  b\n  c\nd").collect();
        assert_eq!(
            parts,
            [
                "##",
                " Earlier",
                " (4",
                " events",
                "  at",
                " 10:00)\n",
                "kinds:",
                " a=1",
                " ·",
                "  b\n  c\n",
                "d"
            ]
        );
        assert_eq!(fragments("").count(), 0);
    }

    #[test]
    fn fragment_counts_equal_direct_counts() {
        let texts = [
            "## Earlier (99512 events 10:00:00–16:54:00 not shown)\nkinds: observation=19510 action=23410 other=4000 · severities: error=147 warning=16800 · repeats collapsed: 12\n",
            "  leading spaces, 'quoted' words, it's   multiple   spaces\n\n  and ünïcödé 日本語 🎉 tabs\there\r\n",
            "x = 1_000_000; y='s; HTTPServer /v1/streams/a:b-c.d https://example.com/a?b=c",
        ];
        for encoding in Encoding::ALL {
            for text in texts {
                assert_eq!(
                    encoding.count_fragments(text),
                    encoding.count(text),
                    "{encoding}: {text:?}"
                );
            }
        }
    }

    proptest::proptest! {
        /// Bounded counts are exact within the limit and say "more" beyond it; bounded token
        /// ends are the whole text's ends wherever the text splits into pieces.
        #[test]
        fn bounded_counts_and_ends_agree_with_whole_ones(
            words in proptest::collection::vec("[a-zA-Z0-9é🎉 \n=_./-]{0,40}", 0..200),
            // From 10 tokens up no piece here is long enough to be read in part.
            limit in 10u32..600,
        ) {
            let text = words.join(" ");
            for encoding in Encoding::ALL {
                let count = encoding.count(&text);
                let within = encoding.count_within(&text, limit);
                proptest::prop_assert_eq!(within, (count <= limit).then_some(count));
                let all = encoding.token_ends(&text);
                let (ends, complete) = encoding.token_ends_within(&text, limit);
                proptest::prop_assert!(ends.len() > limit as usize || complete);
                proptest::prop_assert_eq!(complete, ends.len() == all.len());
                proptest::prop_assert_eq!(&all[..ends.len()], &ends[..]);
            }
        }
    }

    #[test]
    fn a_long_run_without_spaces_is_read_only_in_part() {
        let text = "a1".repeat(100_000);
        for encoding in Encoding::ALL {
            assert_eq!(encoding.count_within(&text, 300), None);
            let (ends, complete) = encoding.token_ends_within(&text, 300);
            assert!(!complete && ends.len() > 300);
            let prefix = encoding.prefix_within(&text, &ends, 300);
            assert_eq!(encoding.count(prefix), 300);
        }
    }

    #[test]
    fn cache_counts_once() {
        let cache = TokenCounts::new();
        assert_eq!(cache.cached(Encoding::Cl100kBase), None);
        assert_eq!(
            cache.get_or_count(Encoding::Cl100kBase, || "hello world".into()),
            2
        );
        assert_eq!(
            cache.get_or_count(Encoding::Cl100kBase, || unreachable!()),
            2
        );
        assert_eq!(cache.cached(Encoding::O200kBase), None);
    }
}
