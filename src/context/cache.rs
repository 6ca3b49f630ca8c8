//! What a build reads instead of rendering and tokenizing: per record, its line, its headline and
//! the clips of its line, each counted once per encoding (and cap); per note, its piece.
//!
//! A change to a record (a repeat) makes a new [`CachedRecord`], so a cache is never stale.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::collapse;
use crate::event::{NOTE_ID_KEY, Note, Record};
use crate::meter::{self, Meter};
use crate::payload::Payload;
use rustc_hash::FxHasher;

use super::HEADLINE_TOKENS;
use crate::render::{self, ClippedLine};
use crate::tokens::{Encoding, TokenCounts};

/// Cut lines kept per record: a few (encoding, cap, shape) combinations a client actually uses.
const CUTS_PER_RECORD: usize = 6;
/// Body lines shorter than this (braces, blank-ish lines, short prompts) say nothing about
/// whether two bodies are the same.
const MIN_BODY_LINE_CHARS: usize = 8;
/// A body needs at least this many distinct lines to be compared at all.
pub const MIN_BODY_LINES: usize = 3;
/// At most this many body lines are hashed: enough to recognize a dump quoted elsewhere.
const MAX_BODY_LINES: usize = 256;

/// What a record's line is cut to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The line's prefix with a `…[N more chars clipped]` marker.
    Clip,
    /// A one-line headline ([`render::headline`]).
    Headline,
}

/// A cut line memoized for one (encoding, cap, shape); `None` when not even the head fits.
type Cut = (Encoding, u32, Shape, Option<Arc<ClippedLine>>);

/// A record's cut lines, and per encoding where the tokens of its message's start end (kept
/// once a clip needed them, so that a client asking for a new `line_cap` does not make every
/// long record tokenize again; they reach as far as the largest cap asked for).
#[derive(Debug, Default)]
struct Cuts {
    list: Vec<Cut>,
    ends: [Option<TokenEnds>; 2],
}

/// [`Encoding::token_ends_within`] of a message: the ends, and whether they cover all of it.
#[derive(Debug)]
struct TokenEnds {
    ends: Box<[u32]>,
    complete: bool,
}

impl TokenEnds {
    /// Whether these ends serve a clip to `cap` tokens.
    fn reach(&self, cap: u32) -> bool {
        self.complete || self.ends.len() > cap as usize
    }
}

/// Whether a [`CachedRecord`] keeps its payload (the writer's, for repeats) or not (readers',
/// which never show it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadPolicy {
    /// Keep it, if the record is a collapse target.
    Keep,
    /// Never keep it.
    Drop,
}

/// A copy of `record` without its payload (which is not cloned).
pub fn without_payload(record: &Record) -> Record {
    Record {
        seq: record.seq,
        message: record.message.clone(),
        kind: record.kind.clone(),
        severity: record.severity,
        first_ts: record.first_ts,
        last_ts: record.last_ts,
        repeat_count: record.repeat_count,
        revision: record.revision,
        display_message: record.display_message.clone(),
        actor: record.actor.clone(),
        step_id: record.step_id.clone(),
        payload: None,
    }
}

/// A record with its rendered line and token counts, computed once and shared by every build.
///
/// The payload is kept as compact JSON text, not parsed: windows never show it, and a parsed
/// payload can cost many times its size (an array of small numbers costs ~32 bytes per number).
/// Every byte the record holds is counted on its [`Meter`].
#[derive(Debug)]
pub struct CachedRecord {
    /// The record without its payload (see [`Self::full_record`]).
    record: Record,
    payload: Option<Payload>,
    note_id: Option<u64>,
    /// Whether the record is a collapse target (see [`crate::collapse::is_collapse_target`]).
    collapsible: bool,
    meter: Meter,
    /// Bytes charged to `meter` so far, given back on drop.
    charged: AtomicUsize,
    /// Kept inline: a record loaded from the file comes with its counts.
    tokens: TokenCounts,
    /// Made when a build first asks for more than the counts.
    rendered: OnceLock<Box<Rendered>>,
}

/// What builds make of a record besides its token counts. Boxed and made on first use: most
/// records of a tail, and every record the writer keeps to place events, are never shown, and
/// inline these would be about 40% of a bare record's size.
#[derive(Debug, Default)]
struct Rendered {
    line: OnceLock<String>,
    /// Per encoding, a count the full line is known to be over (0 until a bounded count stopped
    /// early): a long line is only counted as far as the caps asked of it.
    over: [AtomicU32; 2],
    cuts: Mutex<Cuts>,
    /// Hashes of the message's body lines, sorted and distinct (see [`CachedRecord::body`]).
    body: OnceLock<Box<[u64]>>,
    /// Per encoding, the headline at [`HEADLINE_TOKENS`], the cap nearly every build uses:
    /// read without a lock.
    headlines: [OnceLock<Option<Arc<ClippedLine>>>; 2],
}

/// A record's cost at one level, and the cut line when the level shows less than the full line.
#[derive(Clone, Debug)]
pub struct Piece {
    /// Tokens of the line as shown.
    pub tokens: u32,
    /// The cut line; `None` when the full line is shown.
    pub cut: Option<Arc<ClippedLine>>,
}

impl CachedRecord {
    /// Wraps a record, charging what it holds to `meter`; nothing is rendered or counted until
    /// asked.
    pub fn new(record: &Record, meter: &Meter) -> CachedRecord {
        CachedRecord::with_payload(
            without_payload(record),
            record.payload.clone(),
            PayloadPolicy::Keep,
            meter,
        )
    }

    /// Wraps a record whose payload is given apart; `record.payload` must be `None`. The payload
    /// is kept only when asked and when it is [collapsible](crate::collapse::collapsible):
    /// nothing but a repeat's rewrite needs it.
    pub fn with_payload(
        record: Record,
        payload: Option<Payload>,
        keep: PayloadPolicy,
        meter: &Meter,
    ) -> CachedRecord {
        debug_assert!(record.payload.is_none());
        let collapsible = collapse::is_collapse_target(
            record.kind.as_str(),
            record.actor.as_deref(),
            payload.as_ref().map_or(0, Payload::len),
        );
        let note_id = payload
            .as_ref()
            .filter(|_| record.kind.as_str() == "note")
            .and_then(|payload| payload.get_u64(NOTE_ID_KEY));
        let payload = payload.filter(|_| keep == PayloadPolicy::Keep && collapsible);
        CachedRecord::from_parts(record, payload, note_id, collapsible, meter)
    }

    /// Wraps a record (without its payload) whose facts are known: the payload it keeps, the
    /// note it is the audit record of, and whether it is a collapse target.
    pub fn from_parts(
        record: Record,
        payload: Option<Payload>,
        note_id: Option<u64>,
        collapsible: bool,
        meter: &Meter,
    ) -> CachedRecord {
        debug_assert!(record.payload.is_none());
        let held = std::mem::size_of::<CachedRecord>()
            + ARC_HEADER
            + meter::ALLOCATION_OVERHEAD
            + meter::heap(record.message.capacity())
            + meter::heap(record.kind.as_str().len())
            + [&record.display_message, &record.actor, &record.step_id]
                .into_iter()
                .flatten()
                .map(|text| meter::heap(text.capacity()))
                .sum::<usize>()
            + payload
                .as_ref()
                .map_or(0, |payload| meter::string(payload.as_str()));
        meter.charge(held);
        CachedRecord {
            record,
            payload,
            note_id,
            collapsible,
            meter: meter.clone(),
            charged: AtomicUsize::new(held),
            tokens: TokenCounts::new(),
            rendered: OnceLock::new(),
        }
    }

    /// The record, without its payload (windows never show it; see [`Self::full_record`]).
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Whether the record is a collapse target: its payload, if any, is short enough.
    pub fn is_collapsible(&self) -> bool {
        self.collapsible
    }

    /// The record with its payload (kept for collapse targets only, see
    /// [`Self::with_payload`]).
    pub fn full_record(&self) -> Record {
        let mut record = self.record.clone();
        record.payload = self.payload.clone();
        record
    }

    /// The payload, if kept.
    pub fn payload(&self) -> Option<&Payload> {
        self.payload.as_ref()
    }

    /// The note a `note` audit record stands for (see [`Record::note_id`]).
    pub fn note_id(&self) -> Option<u64> {
        self.note_id
    }

    /// Bytes the record holds now, caches included.
    pub fn held_bytes(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    /// Counts bytes a lazy cache just took.
    fn charge(&self, bytes: usize) {
        self.charged.fetch_add(bytes, Ordering::Relaxed);
        self.meter.charge(bytes);
    }

    /// Gives back bytes a lazy cache let go of.
    fn discharge(&self, bytes: usize) {
        self.charged.fetch_sub(bytes, Ordering::Relaxed);
        self.meter.release(bytes);
    }

    fn rendered(&self) -> &Rendered {
        self.rendered.get_or_init(|| {
            self.charge(meter::heap(std::mem::size_of::<Rendered>()));
            Box::default()
        })
    }

    /// The record's full line.
    pub fn line(&self) -> &str {
        self.rendered().line.get_or_init(|| {
            let line = render::record_line(&self.record);
            self.charge(meter::heap(line.capacity()));
            line
        })
    }

    /// The full line's token count under `encoding`.
    pub fn tokens(&self, encoding: Encoding) -> u32 {
        self.tokens
            .get_or_count(encoding, || self.line().to_owned())
    }

    /// The full line's token count if it is at most `cap`, `None` if it is more; counts only as
    /// much of the line as that takes. `Err(())` when `tokenize` is false and it is not known.
    fn tokens_within(
        &self,
        encoding: Encoding,
        cap: u32,
        tokenize: bool,
    ) -> Result<Option<u32>, ()> {
        if let Some(tokens) = self.tokens.cached(encoding) {
            return Ok(Some(tokens).filter(|&tokens| tokens <= cap));
        }
        let over = self.rendered.get().map_or(0, |rendered| {
            rendered.over[encoding.index()].load(Ordering::Relaxed)
        });
        if over >= cap {
            return Ok(None);
        }
        if !tokenize {
            return Err(());
        }
        match encoding.count_within(self.line(), cap) {
            Some(tokens) => {
                self.tokens.set(encoding, tokens);
                Ok(Some(tokens))
            }
            None => {
                self.rendered().over[encoding.index()].fetch_max(cap, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// The record shown whole: its full line, or its line clipped to `cap` when longer. `None`
    /// when `tokenize` is false and something would have to be tokenized first.
    pub fn whole(&self, encoding: Encoding, cap: u32, tokenize: bool) -> Option<Piece> {
        if let Some(tokens) = self.tokens_within(encoding, cap, tokenize).ok()? {
            return Some(Piece { tokens, cut: None });
        }
        let cut = self.cut(encoding, cap, Shape::Clip, tokenize)?;
        Some(Piece {
            // Not even the head fits: the line is over the cap, by how much is not counted.
            tokens: cut.as_ref().map_or(u32::MAX, |clip| clip.tokens),
            cut,
        })
    }

    /// The record's headline within `cap` tokens (`Some(None)` when not even its head fits);
    /// `None` when `tokenize` is false and the headline is not made yet.
    pub fn headline(
        &self,
        encoding: Encoding,
        cap: u32,
        tokenize: bool,
    ) -> Option<Option<Arc<ClippedLine>>> {
        if cap != HEADLINE_TOKENS {
            return self.cut(encoding, cap, Shape::Headline, tokenize);
        }
        if !tokenize {
            return self.rendered.get()?.headlines[encoding.index()]
                .get()
                .cloned();
        }
        let headline = self.rendered().headlines[encoding.index()].get_or_init(|| {
            let headline = render::headline(&self.record, encoding, cap).map(Arc::new);
            self.charge(cut_bytes(&headline));
            headline
        });
        Some(headline.clone())
    }

    fn cut(
        &self,
        encoding: Encoding,
        cap: u32,
        shape: Shape,
        tokenize: bool,
    ) -> Option<Option<Arc<ClippedLine>>> {
        if !tokenize && self.rendered.get().is_none() {
            return None;
        }
        let mut cuts = self
            .rendered()
            .cuts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((.., cut)) = cuts
            .list
            .iter()
            .find(|(e, c, s, _)| *e == encoding && *c == cap && *s == shape)
        {
            return Some(cut.clone());
        }
        if !tokenize {
            return None;
        }
        let cut = match shape {
            Shape::Clip => {
                let kept = &mut cuts.ends[encoding.index()];
                if !kept.as_ref().is_some_and(|kept| kept.reach(cap)) {
                    // Reach further than asked, so that nearby caps find these ends enough.
                    let (ends, complete) =
                        encoding.token_ends_within(&self.record.message, cap.saturating_mul(2));
                    let ends: Box<[u32]> = ends.into();
                    self.charge(meter::heap(std::mem::size_of_val(&*ends)));
                    if let Some(old) = kept.replace(TokenEnds { ends, complete }) {
                        self.discharge(meter::heap(std::mem::size_of_val(&*old.ends)));
                    }
                }
                let ends = kept.as_ref().map_or(&[][..], |kept| &kept.ends);
                render::clip_record_at(&self.record, encoding, cap, ends)
            }
            Shape::Headline => render::headline(&self.record, encoding, cap),
        }
        .map(Arc::new);
        if cuts.list.is_empty() {
            self.charge(meter::heap(CUTS_PER_RECORD * std::mem::size_of::<Cut>()));
            cuts.list.reserve_exact(CUTS_PER_RECORD);
        }
        if cuts.list.len() == CUTS_PER_RECORD {
            let (.., dropped) = cuts.list.remove(0);
            self.discharge(cut_bytes(&dropped));
        }
        self.charge(cut_bytes(&cut));
        cuts.list.push((encoding, cap, shape, cut.clone()));
        Some(cut)
    }

    /// Hashes of the message's body (every line after the first, trimmed, of at least a few
    /// characters), sorted and distinct: two records whose bodies share most of these show the
    /// same dump, and a window need not pay for it twice. Empty for short messages.
    pub fn body(&self) -> &[u64] {
        self.rendered().body.get_or_init(|| {
            let mut hashes: Vec<u64> = self
                .record
                .message
                .lines()
                .skip(1)
                .map(str::trim)
                .filter(|line| line.chars().count() >= MIN_BODY_LINE_CHARS)
                .take(MAX_BODY_LINES)
                .map(|line| {
                    let mut hasher = FxHasher::default();
                    line.hash(&mut hasher);
                    hasher.finish()
                })
                .collect();
            hashes.sort_unstable();
            hashes.dedup();
            if hashes.len() < MIN_BODY_LINES {
                hashes.clear();
            }
            let hashes: Box<[u64]> = hashes.into();
            self.charge(meter::heap(std::mem::size_of_val(&*hashes)));
            hashes
        })
    }
}

impl Drop for CachedRecord {
    fn drop(&mut self) {
        self.meter.release(*self.charged.get_mut());
    }
}

/// The two counts in front of every `Arc`'s value.
const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();

/// Bytes a cut line holds (a shared [`ClippedLine`] and its text). A cut evicted from a
/// record's list while a build still holds it is given back early; builds are short.
fn cut_bytes(cut: &Option<Arc<ClippedLine>>) -> usize {
    cut.as_ref().map_or(0, |cut| {
        meter::heap(ARC_HEADER + std::mem::size_of::<ClippedLine>())
            + meter::heap(cut.text.capacity())
    })
}

/// Whether two bodies ([`CachedRecord::body`]) are mostly the same: at least four fifths of the
/// smaller one's lines are in the other.
pub fn same_body(a: &[u64], b: &[u64]) -> bool {
    let smaller = a.len().min(b.len());
    if smaller < MIN_BODY_LINES {
        return false;
    }
    let (mut i, mut j, mut shared) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    shared * 5 >= smaller * 4
}

/// A note with its rendered piece and token counts, counted on a [`Meter`].
#[derive(Debug)]
pub struct CachedNote {
    note: Note,
    piece: String,
    tokens: TokenCounts,
    meter: Meter,
    held: usize,
}

impl CachedNote {
    /// Wraps a note, charging what it holds to `meter`.
    pub fn new(note: Note, meter: &Meter) -> CachedNote {
        let piece = render::note_piece(&note.text);
        let held = std::mem::size_of::<CachedNote>()
            + ARC_HEADER
            + meter::ALLOCATION_OVERHEAD
            + meter::heap(note.text.capacity())
            + meter::heap(piece.capacity());
        meter.charge(held);
        CachedNote {
            note,
            piece,
            tokens: TokenCounts::new(),
            meter: meter.clone(),
            held,
        }
    }

    /// The note.
    pub fn note(&self) -> &Note {
        &self.note
    }

    /// Its piece of the Notes section.
    pub fn piece(&self) -> &str {
        &self.piece
    }

    /// The piece's token count under `encoding`.
    pub fn tokens(&self, encoding: Encoding) -> u32 {
        self.tokens.get_or_count(encoding, || self.piece.clone())
    }

    /// The piece's count if it was made already.
    pub fn tokens_if_counted(&self, encoding: Encoding) -> Option<u32> {
        self.tokens.cached(encoding)
    }
}

impl Drop for CachedNote {
    fn drop(&mut self) {
        self.meter.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Severity, parse_timestamp};
    use proptest::prelude::*;

    const MESSAGES: [&str; 6] = [
        "search(\"redb durability\") -> 12 results",
        "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    import flask\nModuleNotFoundError: No module named 'flask'",
        "naïve café — ünïcödé 🎉 日本語のテキスト",
        "line one\r\nline two\r\n",
        "<|endoftext|> is just text here",
        "   leading spaces and trailing   ",
    ];

    fn cached(text: String) -> CachedRecord {
        let event = Event::new("tool", Severity::Info, text).unwrap();
        let at = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        CachedRecord::new(&Record::from_event(event, 1, 1, at), &Meter::detached())
    }

    proptest! {
        /// Clipping from the kept token ends gives exactly what clipping from scratch gives,
        /// whatever caps a client cycles through.
        #[test]
        fn clips_from_kept_token_ends_equal_fresh_clips(
            message in 0usize..6,
            repeat in 1usize..60,
            caps in prop::collection::vec(8u32..400, 1..8),
        ) {
            let cached = cached(MESSAGES[message].repeat(repeat));
            for cap in caps {
                for encoding in Encoding::ALL {
                    let fresh = render::clip_record(cached.record(), encoding, cap).map(Arc::new);
                    prop_assert_eq!(cached.cut(encoding, cap, Shape::Clip, true), Some(fresh));
                }
            }
        }
    }

    #[test]
    fn a_quoted_dump_is_the_same_body_and_a_different_one_is_not() {
        let dump: String = (0..12)
            .map(|i| format!("  variable_{i} = {}\n", i * 37))
            .collect();
        let failed = cached(format!("Postcondition failed:\n{dump}"));
        let report = cached(format!(
            "Bug report: the checkout total is wrong\n{dump}see above"
        ));
        let other: String = (0..12).map(|i| format!("  row {i}: ok ok ok\n")).collect();
        let other = cached(format!("Postcondition failed:\n{other}"));
        assert!(same_body(failed.body(), report.body()));
        assert!(!same_body(failed.body(), other.body()));
        assert!(cached("one line".into()).body().is_empty());
    }
}
