//! Repeat collapse: folding an event into an earlier record instead of adding a new one.
//!
//! An incoming event collapses into a recent record when both have the same [`Fingerprint`]
//! (kind, severity, actor and normalized message) and the event's time is within the collapse
//! window of the record's `last_ts`. The record's `repeat_count` goes up by one, so the sum of
//! `repeat_count` over a stream's records always equals the number of events it accepted.
//!
//! "Recent" means one of the stream's last [`CollapsePolicy::lookback`] records, newest first
//! (in `template` mode a record whose latest message is the very same text is tried first).
//! With a lookback of 1 this is the literal "same as the previous record" rule. The default of
//! 128 also folds the interleaved storms real agents produce: in the ChatDev rate-limit trace an
//! error line and its retry warning alternate 831 times, in three variants, with bursts of other
//! work between them. A previous-record rule collapses none of its 1,667 storm events; a lookback
//! of 4 leaves 84 storm records, 64 leaves 14, 128 leaves 8 (one per distinct message).
//!
//! Pure: no clock, no I/O. The store and the offline replay both drive a [`Collapser`].

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::event::{Event, Kind, Record, Severity, Timestamp};

/// Default collapse window: repeats more than 10 minutes apart are separate happenings.
pub const DEFAULT_COLLAPSE_WINDOW: TimeDelta = TimeDelta::minutes(10);
/// Default lookback: how many of the newest records an event may collapse into.
pub const DEFAULT_COLLAPSE_LOOKBACK: usize = 128;
/// Largest lookback a policy may ask for; matching is linear in it.
pub const MAX_COLLAPSE_LOOKBACK: usize = 1_024;

/// How messages are compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollapseMode {
    /// Messages must be byte-equal.
    #[default]
    Exact,
    /// Numbers, hex ids, UUIDs, durations and quoted paths are masked before comparing, so
    /// `retry 2/5 after 1.5s` and `retry 3/5 after 3s` collapse.
    Template,
}

impl CollapseMode {
    /// The mode's name on the wire and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CollapseMode::Exact => "exact",
            CollapseMode::Template => "template",
        }
    }
}

impl fmt::Display for CollapseMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CollapseMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "exact" => Ok(CollapseMode::Exact),
            "template" => Ok(CollapseMode::Template),
            _ => Err(format!(
                "unknown collapse mode {value:?}; use `exact` or `template`"
            )),
        }
    }
}

/// When an event collapses into a recent record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollapsePolicy {
    /// How messages are compared.
    pub mode: CollapseMode,
    /// Largest gap between a record's `last_ts` and a repeat's `ts`.
    pub window: TimeDelta,
    /// How many of the newest records are candidates (1 = only the newest; 0 disables collapse).
    pub lookback: usize,
}

impl Default for CollapsePolicy {
    fn default() -> Self {
        CollapsePolicy {
            mode: CollapseMode::Exact,
            window: DEFAULT_COLLAPSE_WINDOW,
            lookback: DEFAULT_COLLAPSE_LOOKBACK,
        }
    }
}

/// Events whose payload is longer than this (as compact JSON) are kept apart: never collapsed,
/// and nothing collapses into them. Collapse keeps its targets' payloads in memory (a repeat
/// keeps the payload it does not replace), so this bounds what a stream being written to holds
/// to `lookback` times this, whatever clients post.
pub const MAX_COLLAPSIBLE_PAYLOAD_BYTES: usize = 16 * 1024;

/// Whether an event or record whose payload is `payload_bytes` long (compact JSON; 0 for none)
/// takes part in collapse.
pub fn collapsible(payload_bytes: usize) -> bool {
    payload_bytes <= MAX_COLLAPSIBLE_PAYLOAD_BYTES
}

/// The kind of the records anomaly detection raises (`crate::anomaly`).
pub const ANOMALY_KIND: &str = "anomaly";
/// The actor of the records anomaly detection raises.
pub const ANOMALY_ACTOR: &str = "recap";

/// Whether an event or record takes part in collapse: its payload is short enough
/// ([`collapsible`]), and it is not an anomaly recap raised (kind `anomaly`, actor `recap`):
/// each of those stands for one episode, and only its detector updates it. Decided from the
/// record alone, so a state restored from the file keeps the same records apart.
pub fn is_collapse_target(kind: &str, actor: Option<&str>, payload_bytes: usize) -> bool {
    collapsible(payload_bytes) && !(kind == ANOMALY_KIND && actor == Some(ANOMALY_ACTOR))
}

/// What makes two events "the same" for collapsing: kind, severity, actor and the message
/// (masked in `template` mode). Borrows from the event it describes, so that deciding a repeat
/// allocates nothing in `exact` mode; the collapser keeps only its digest (two hashes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint<'a> {
    kind: Cow<'a, str>,
    severity: Severity,
    actor: Option<Cow<'a, str>>,
    body: Cow<'a, str>,
}

impl<'a> Fingerprint<'a> {
    /// The fingerprint of an event's fields under `mode`.
    pub fn new(
        mode: CollapseMode,
        kind: &'a Kind,
        severity: Severity,
        actor: Option<&'a str>,
        message: &'a str,
    ) -> Fingerprint<'a> {
        let body = match mode {
            CollapseMode::Exact => Cow::Borrowed(message),
            CollapseMode::Template => Cow::Owned(template(message)),
        };
        Fingerprint {
            kind: Cow::Borrowed(kind.as_str()),
            severity,
            actor: actor.map(Cow::Borrowed),
            body,
        }
    }

    /// The fingerprint of an incoming event.
    pub fn of_event(mode: CollapseMode, event: &'a Event) -> Fingerprint<'a> {
        Fingerprint::new(
            mode,
            &event.kind,
            event.severity,
            event.actor.as_deref(),
            &event.message,
        )
    }

    /// The fingerprint of a stored record (its latest message).
    pub fn of_record(mode: CollapseMode, record: &'a Record) -> Fingerprint<'a> {
        Fingerprint::new(
            mode,
            &record.kind,
            record.severity,
            record.actor.as_deref(),
            &record.message,
        )
    }

    /// What the collapser keeps of a fingerprint instead of its text: two 64-bit hashes, a fast
    /// fixed one and one keyed at random once per process (foldhash, a few times cheaper than
    /// SipHash on messages of a hundred bytes). Keeping the text would cost a copy of every
    /// recent message per stream; two events with different fingerprints and equal digests
    /// would need a collision of a hash whose key a client cannot know.
    fn digest(&self) -> Digest {
        use std::hash::BuildHasher;
        static KEYED: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
        let keyed = KEYED.get_or_init(foldhash::quality::RandomState::default);
        (
            rustc_hash::FxBuildHasher.hash_one(self),
            keyed.hash_one(self),
        )
    }
}

/// See [`Fingerprint::digest`].
type Digest = (u64, u64);

/// Where an event lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The event starts a new record with this seq.
    New {
        /// The new record's seq.
        seq: u64,
    },
    /// The event is a repeat of the record with this seq.
    Repeat {
        /// The seq of the record it collapsed into.
        seq: u64,
    },
}

impl Placement {
    /// The seq of the record the event landed in.
    pub fn seq(self) -> u64 {
        match self {
            Placement::New { seq } | Placement::Repeat { seq } => seq,
        }
    }

    /// Whether the event collapsed into an existing record.
    pub fn collapsed(self) -> bool {
        matches!(self, Placement::Repeat { .. })
    }
}

#[derive(Clone, Debug)]
struct RecentRecord {
    seq: u64,
    last_ts: Timestamp,
    /// `None` for a record kept apart (see [`MAX_COLLAPSIBLE_PAYLOAD_BYTES`]): it takes its
    /// place in the lookback but nothing collapses into it.
    digest: Option<Digest>,
    /// Template mode only: the digest of the record's latest message unmasked, a first match
    /// that needs no masking (storms mostly repeat the very same text).
    latest: Option<Digest>,
}

/// The collapse state of one stream: the fingerprints of its newest records and the next seq.
///
/// It decides placements; the caller applies them to its records (in memory or in the store).
#[derive(Clone, Debug)]
pub struct Collapser {
    policy: CollapsePolicy,
    next_seq: u64,
    /// Newest last; at most `policy.lookback` entries.
    recent: VecDeque<RecentRecord>,
    /// The digests in `recent`, counted by a few of their bits, once it is long enough for a
    /// scan to cost more than a look-up.
    counts: Option<DigestCounts>,
}

/// Recent records from which on a placement looks in [`DigestCounts`] before scanning.
const COUNTED_FROM: usize = 32;
/// Buckets of [`DigestCounts`]: with the default lookback of 128, about one in five events
/// that matches nothing still scans.
const DIGEST_BUCKETS: usize = 512;

/// How many of the recent records' digests (both kinds) fall in each of [`DIGEST_BUCKETS`]
/// buckets. An event whose digest's bucket is empty matches no recent record, so the scan of
/// the lookback, linear in it, is skipped: most events of traffic that does not repeat. A
/// count that reaches 255 stays there (it only means "scan").
#[derive(Clone, Debug)]
struct DigestCounts(Box<[u8; DIGEST_BUCKETS]>);

impl DigestCounts {
    fn of<'a>(recent: impl IntoIterator<Item = &'a RecentRecord>) -> DigestCounts {
        let mut counts = DigestCounts(Box::new([0; DIGEST_BUCKETS]));
        for record in recent {
            counts.add(record);
        }
        counts
    }

    /// The bucket of a digest: bits of its keyed half, which clients cannot aim at.
    fn bucket(digest: Digest) -> usize {
        (digest.1 as usize) & (DIGEST_BUCKETS - 1)
    }

    fn may_hold(&self, digest: Digest) -> bool {
        self.0[Self::bucket(digest)] != 0
    }

    fn count(&mut self, digest: Option<Digest>, add: bool) {
        let Some(digest) = digest else { return };
        let count = &mut self.0[Self::bucket(digest)];
        *count = match (add, *count) {
            (_, u8::MAX) => u8::MAX,
            (true, count) => count + 1,
            (false, count) => count.saturating_sub(1),
        };
    }

    fn add(&mut self, record: &RecentRecord) {
        self.count(record.digest, true);
        self.count(record.latest, true);
    }

    fn remove(&mut self, record: &RecentRecord) {
        self.count(record.digest, false);
        self.count(record.latest, false);
    }
}

impl Collapser {
    /// The state of an empty stream.
    pub fn new(policy: CollapsePolicy) -> Collapser {
        Collapser::resume(policy, 1, std::iter::empty())
    }

    /// The state of a stream whose next seq is `next_seq` and whose newest records are `newest`,
    /// each with whether it is a collapse target (see [`collapsible`]); in any order, only the
    /// last `lookback` by seq are kept. Used after a restart.
    pub fn resume<'a>(
        policy: CollapsePolicy,
        next_seq: u64,
        newest: impl IntoIterator<Item = (&'a Record, bool)>,
    ) -> Collapser {
        let mut records: Vec<(&Record, bool)> = newest.into_iter().collect();
        records.sort_by_key(|(record, _)| record.seq);
        let skip = records.len().saturating_sub(policy.lookback);
        let recent = records[skip..]
            .iter()
            .map(|&(record, target)| {
                let digest = |mode| Fingerprint::of_record(mode, record).digest();
                RecentRecord {
                    seq: record.seq,
                    last_ts: record.last_ts,
                    digest: target.then(|| digest(policy.mode)),
                    latest: (target && policy.mode == CollapseMode::Template)
                        .then(|| digest(CollapseMode::Exact)),
                }
            })
            .collect::<VecDeque<_>>();
        let counts = (recent.len() >= COUNTED_FROM).then(|| DigestCounts::of(&recent));
        Collapser {
            policy,
            next_seq,
            recent,
            counts,
        }
    }

    /// Whether a recent record may have `digest` (its own or its latest message's); `false`
    /// means none has.
    fn may_hold(&self, digest: Digest) -> bool {
        self.counts
            .as_ref()
            .is_none_or(|counts| counts.may_hold(digest))
    }

    /// The policy in force.
    pub fn policy(&self) -> CollapsePolicy {
        self.policy
    }

    /// The seq the next new record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Decides where `event`, happening at `ts`, lands, and updates the state accordingly.
    pub fn place(&mut self, event: &Event, ts: Timestamp) -> Placement {
        let window = self.policy.window;
        let within = |recent: &RecentRecord| (ts - recent.last_ts).abs() <= window;
        let exact = Fingerprint::of_event(CollapseMode::Exact, event).digest();
        let template_mode = self.policy.mode == CollapseMode::Template;
        if template_mode && self.may_hold(exact) {
            // A record whose latest message is this very text is a repeat without masking.
            let same_text = self
                .recent
                .iter_mut()
                .rev()
                .find(|recent| recent.latest == Some(exact) && within(recent));
            if let Some(recent) = same_text {
                recent.last_ts = recent.last_ts.max(ts);
                return Placement::Repeat { seq: recent.seq };
            }
        }
        let digest = if template_mode {
            Fingerprint::of_event(CollapseMode::Template, event).digest()
        } else {
            exact
        };
        let matched = match self.may_hold(digest) {
            true => self
                .recent
                .iter_mut()
                .rev()
                .find(|recent| recent.digest == Some(digest) && within(recent)),
            false => None,
        };
        if let Some(recent) = matched {
            recent.last_ts = recent.last_ts.max(ts);
            if template_mode {
                // The record shows the latest message from now on.
                if let Some(counts) = &mut self.counts {
                    counts.count(recent.latest, false);
                    counts.count(Some(exact), true);
                }
                recent.latest = Some(exact);
            }
            return Placement::Repeat { seq: recent.seq };
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.remember(RecentRecord {
            seq,
            last_ts: ts,
            digest: Some(digest),
            latest: template_mode.then_some(exact),
        });
        Placement::New { seq }
    }

    /// Places an event that is not a collapse target, as a new record that nothing collapses
    /// into (see [`collapsible`]); it still takes its place in the lookback.
    pub fn place_apart(&mut self, last_ts: Timestamp) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.remember(RecentRecord {
            seq,
            last_ts,
            digest: None,
            latest: None,
        });
        seq
    }

    /// Forgets a record (it was deleted), so nothing collapses into it any more.
    pub fn forget(&mut self, seq: u64) {
        self.recent.retain(|recent| recent.seq != seq);
        self.recount();
    }

    /// Forgets every record with seq up to `seq` (retention removed them).
    pub fn forget_through(&mut self, seq: u64) {
        self.recent.retain(|recent| recent.seq > seq);
        self.recount();
    }

    /// Counts the digests again after records left the lookback other than at its front.
    fn recount(&mut self) {
        if self.counts.is_some() {
            self.counts = Some(DigestCounts::of(&self.recent));
        }
    }

    /// Places `event` as a new record whatever the recent records are (an import keeps the
    /// records of an export as they were); later events may still collapse into it.
    pub fn place_new(&mut self, event: &Event, last_ts: Timestamp) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mode = self.policy.mode;
        self.remember(RecentRecord {
            seq,
            last_ts,
            digest: Some(Fingerprint::of_event(mode, event).digest()),
            latest: (mode == CollapseMode::Template)
                .then(|| Fingerprint::of_event(CollapseMode::Exact, event).digest()),
        });
        seq
    }

    /// Bytes the collapser holds beyond its own size (for the store's cache budget).
    pub fn held_bytes(&self) -> usize {
        self.recent.capacity() * std::mem::size_of::<RecentRecord>()
            + self.counts.as_ref().map_or(0, |_| DIGEST_BUCKETS)
    }

    /// Makes a new record a collapse target, dropping the oldest beyond the lookback.
    fn remember(&mut self, recent: RecentRecord) {
        if self.policy.lookback == 0 {
            return;
        }
        if self.recent.len() == self.policy.lookback
            && let Some(oldest) = self.recent.pop_front()
            && let Some(counts) = &mut self.counts
        {
            counts.remove(&oldest);
        }
        match &mut self.counts {
            Some(counts) => counts.add(&recent),
            None if self.recent.len() + 1 >= COUNTED_FROM => {
                self.counts = Some(DigestCounts::of(&self.recent));
                self.counts.as_mut().expect("just made").add(&recent);
            }
            None => {}
        }
        self.recent.push_back(recent);
    }
}

/// Masks the variable parts of a message: UUIDs become `<uuid>`, hex ids `<hex>`, numbers with a
/// duration unit `<dur>`, other numbers `<n>`, and quoted strings that look like paths `<path>`.
///
/// A hand-written scanner rather than a set of regexes: it runs on every event in `template`
/// mode, and one pass over the bytes keeps collapse well above a million events per second.
pub fn template(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    template_into(message, &mut out);
    out
}

/// [`template`], appended to `out`: a caller that masks many messages reuses one buffer.
pub fn template_into(message: &str, out: &mut String) {
    let bytes = message.as_bytes();
    out.reserve(message.len());
    // Start of the pending run of bytes copied verbatim.
    let mut copied = 0;
    let mut i = 0;
    let mask = |out: &mut String, at: usize, len: usize, replacement: &str, copied: &mut usize| {
        out.push_str(&message[*copied..at]);
        out.push_str(replacement);
        *copied = at + len;
    };
    while i < bytes.len() {
        let byte = bytes[i];
        if is_word_byte(byte) {
            // Most words hold no digit and cannot be masked: skip them in one pass.
            let start = i;
            let mut has_digit = false;
            while let Some(&class) = bytes.get(i).map(|&b| &BYTE_CLASS[usize::from(b)]) {
                if class & WORD == 0 {
                    break;
                }
                has_digit |= class & DIGIT != 0;
                i += 1;
            }
            let maybe_uuid = i - start == 8 && bytes.get(i) == Some(&b'-');
            if !has_digit && !maybe_uuid {
                continue;
            }
            let end = i;
            let mut at = start;
            while at < end {
                let found = if at == start {
                    uuid_len(&bytes[at..])
                        .map(|len| (len, "<uuid>"))
                        .or_else(|| hex_id_len(&bytes[at..]).map(|len| (len, "<hex>")))
                        .or_else(|| number_mask(&bytes[at..]))
                } else if bytes[at].is_ascii_digit() {
                    number_mask(&bytes[at..])
                } else {
                    None
                };
                match found {
                    Some((len, replacement)) => {
                        mask(out, at, len, replacement, &mut copied);
                        at += len;
                    }
                    None => at += 1,
                }
            }
            // A mask may run past the word (UUID groups, a fraction, a unit).
            i = at;
        } else if (byte == b'"' || byte == b'\'') && (i == 0 || !is_word_byte(bytes[i - 1])) {
            match quoted_path_len(&bytes[i..]) {
                Some(len) => {
                    mask(out, i, len, "<path>", &mut copied);
                    i += len;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out.push_str(&message[copied..]);
}

/// Whether [`template`] masks `a` and `b` to the same text, decided without masking either (a
/// sufficient condition, not a necessary one): the same length, and byte for byte equal except
/// that a digit may stand where the other has another digit, unless an `x` or `X` follows it.
/// The same tool call with other numbers passes; anything else is left to [`template`].
///
/// Why it holds: every ASCII digit ends up inside a mask (a digit is a word byte, and every
/// digit of a word is either the start of a number or inside a mask that began before it), so
/// no digit is copied to the output; and the scanner tells a digit from other bytes, and by
/// its position, but by its value only in the `0x` prefix of a hex id. So two texts that
/// differ only in such digits take the same path through the scanner and give the same
/// output. A change to the masking rules that looks at a digit's value must change this too
/// (`same_template_implies_equal_masks` checks it).
pub fn same_template(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    // Where the texts differ, both bytes are digits and no `x` or `X` follows.
    let alike = |at: usize| {
        let (x, y) = (a[at], b[at]);
        x == y
            || (x.is_ascii_digit()
                && y.is_ascii_digit()
                && !matches!(a.get(at + 1), Some(b'x' | b'X')))
    };
    if a.len() < 8 {
        return (0..a.len()).all(alike);
    }
    // Eight bytes at a time: two such texts are mostly equal, and only the bytes that differ
    // are looked at one by one.
    let eight = |bytes: &[u8], at: usize| {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
    };
    let last = a.len() - 8;
    let mut at = 0;
    loop {
        let mut differ = eight(a, at) ^ eight(b, at);
        while differ != 0 {
            let byte = differ.trailing_zeros() as usize / 8;
            if !alike(at + byte) {
                return false;
            }
            differ &= !(0xff << (byte * 8));
        }
        if at == last {
            return true;
        }
        // The last eight bytes may overlap the ones before: a byte looked at twice is alike
        // both times, and no byte is left to a slower loop.
        at = (at + 8).min(last);
    }
}

const WORD: u8 = 1;
const DIGIT: u8 = 2;

/// Byte classes for the scanner's inner loop: one table load instead of several comparisons.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        if b.is_ascii_alphanumeric() || b == b'_' {
            table[byte] |= WORD;
        }
        if b.is_ascii_digit() {
            table[byte] |= DIGIT;
        }
        byte += 1;
    }
    table
};

fn is_word_byte(byte: u8) -> bool {
    BYTE_CLASS[usize::from(byte)] & WORD != 0
}

/// `8-4-4-4-12` hex digits, not followed by a word byte.
fn uuid_len(bytes: &[u8]) -> Option<usize> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let mut at = 0;
    for (index, &group) in GROUPS.iter().enumerate() {
        if index > 0 {
            (bytes.get(at) == Some(&b'-')).then_some(())?;
            at += 1;
        }
        let digits = bytes.get(at..at + group)?;
        digits.iter().all(u8::is_ascii_hexdigit).then_some(())?;
        at += group;
    }
    ends_word(bytes, at).then_some(at)
}

/// `0x…`, or a run of at least 8 hex digits with both a digit and a letter (a commit, a request
/// id), not followed by a word byte.
fn hex_id_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() > 2 && bytes[0] == b'0' && (bytes[1] == b'x' || bytes[1] == b'X') {
        let digits = bytes[2..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits > 0 && ends_word(bytes, 2 + digits) {
            return Some(2 + digits);
        }
    }
    let len = bytes.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let run = &bytes[..len];
    let mixed = run.iter().any(u8::is_ascii_digit) && run.iter().any(u8::is_ascii_alphabetic);
    (len >= 8 && mixed && ends_word(bytes, len)).then_some(len)
}

const DURATION_UNITS: [&str; 14] = [
    "ns", "us", "µs", "ms", "s", "sec", "secs", "seconds", "m", "min", "mins", "minutes", "h",
    "hours",
];

/// Digits with an optional fraction; `<dur>` when a duration unit follows as a whole word.
fn number_mask(bytes: &[u8]) -> Option<(usize, &'static str)> {
    let mut len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 {
        return None;
    }
    if bytes.get(len) == Some(&b'.') && bytes.get(len + 1).is_some_and(u8::is_ascii_digit) {
        len += 1 + bytes[len + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
    }
    let rest = &bytes[len..];
    for unit in DURATION_UNITS {
        let unit = unit.as_bytes();
        if rest.starts_with(unit) && ends_word(rest, unit.len()) {
            return Some((len + unit.len(), "<dur>"));
        }
    }
    Some((len, "<n>"))
}

/// A quoted string on one line, at most 1 KiB, with a path separator and no spaces (so a quoted
/// sentence such as `'40000 / min'` is not taken for a path).
fn quoted_path_len(bytes: &[u8]) -> Option<usize> {
    const MAX_QUOTED: usize = 1024;
    let quote = bytes[0];
    let body = &bytes[1..bytes.len().min(MAX_QUOTED)];
    let end = body.iter().position(|&b| b == quote || b == b'\n')?;
    let inner = &body[..end];
    let looks_like_path = body[end] == quote
        && inner.iter().any(|&b| b == b'/' || b == b'\\')
        && !inner.iter().any(u8::is_ascii_whitespace);
    looks_like_path.then_some(end + 2)
}

fn ends_word(bytes: &[u8], at: usize) -> bool {
    bytes.get(at).is_none_or(|&b| !is_word_byte(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_timestamp;
    use proptest::prelude::*;

    fn ts(seconds: i64) -> Timestamp {
        parse_timestamp("2024-05-01T10:00:00Z").unwrap() + TimeDelta::seconds(seconds)
    }

    fn event(kind: &str, message: &str) -> Event {
        Event::new(kind, Severity::Warning, message).unwrap()
    }

    #[test]
    fn template_masks_variable_parts() {
        let cases = [
            ("retry 2/5 after 1.5s", "retry <n>/<n> after <dur>"),
            ("retry 3/5 after 3s", "retry <n>/<n> after <dur>"),
            (
                "request 550e8400-e29b-41d4-a716-446655440000 failed",
                "request <uuid> failed",
            ),
            (
                "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 pushed",
                "commit <hex> pushed",
            ),
            ("at 0x7ffdf2a1 in frame", "at <hex> in frame"),
            ("open 'src/main.rs' failed", "open <path> failed"),
            (r#"open "C:\tmp\x.txt" failed"#, "open <path> failed"),
            ("say 'hello' twice", "say 'hello' twice"),
            (
                "error_message='Limit: 3 / min'",
                "error_message='Limit: <n> / min'",
            ),
            (
                "Limit: 40000 / min. Please try again in 1ms.",
                "Limit: <n> / min. Please try again in <dur>.",
            ),
            ("gpt-3.5-turbo-16k-0613", "gpt-<n>-turbo-<n>k-<n>"),
            (
                "deadbeef is a word, cafe too",
                "deadbeef is a word, cafe too",
            ),
            ("ünïcödé 12 ✓", "ünïcödé <n> ✓"),
            ("", ""),
        ];
        for (given, expected) in cases {
            assert_eq!(template(given), expected, "{given}");
        }
    }

    #[test]
    fn exact_mode_collapses_only_equal_messages() {
        let mut collapser = Collapser::new(CollapsePolicy::default());
        assert_eq!(
            collapser.place(&event("tool", "timed out"), ts(0)),
            Placement::New { seq: 1 }
        );
        assert_eq!(
            collapser.place(&event("tool", "timed out"), ts(1)),
            Placement::Repeat { seq: 1 }
        );
        assert_eq!(
            collapser.place(&event("tool", "timed out!"), ts(2)),
            Placement::New { seq: 2 }
        );
        assert_eq!(
            collapser.place(&event("llm", "timed out"), ts(3)),
            Placement::New { seq: 3 }
        );
    }

    #[test]
    fn template_mode_collapses_numbers_and_durations() {
        let policy = CollapsePolicy {
            mode: CollapseMode::Template,
            ..CollapsePolicy::default()
        };
        let mut collapser = Collapser::new(policy);
        assert_eq!(
            collapser.place(&event("retry", "retry 2/5 after 1.5s"), ts(0)),
            Placement::New { seq: 1 }
        );
        assert_eq!(
            collapser.place(&event("retry", "retry 3/5 after 3s"), ts(1)),
            Placement::Repeat { seq: 1 }
        );
    }

    #[test]
    fn window_separates_distant_repeats() {
        let mut collapser = Collapser::new(CollapsePolicy::default());
        collapser.place(&event("tool", "x"), ts(0));
        assert!(collapser.place(&event("tool", "x"), ts(600)).collapsed());
        // The window is measured from the record's last_ts, which moved to 600.
        assert!(collapser.place(&event("tool", "x"), ts(1200)).collapsed());
        assert!(!collapser.place(&event("tool", "x"), ts(1801)).collapsed());
    }

    #[test]
    fn lookback_folds_interleaved_pairs_and_one_means_previous_only() {
        let pair = [event("error", "rate limited"), event("retry", "retrying")];
        let mut wide = Collapser::new(CollapsePolicy::default());
        let mut strict = Collapser::new(CollapsePolicy {
            lookback: 1,
            ..CollapsePolicy::default()
        });
        for round in 0..10 {
            for (offset, event) in pair.iter().enumerate() {
                let at = ts(round * 2 + offset as i64);
                wide.place(event, at);
                strict.place(event, at);
            }
        }
        assert_eq!(wide.next_seq(), 3, "two records for twenty events");
        assert_eq!(strict.next_seq(), 21, "no two neighbours are equal");
    }

    #[test]
    fn resume_matches_uninterrupted_state() {
        let policy = CollapsePolicy::default();
        let events = ["a", "b", "a", "c", "d", "e", "a"];
        let mut records: Vec<Record> = Vec::new();
        let mut live = Collapser::new(policy);
        for (i, message) in events.iter().enumerate() {
            let event = event("tool", message);
            match live.place(&event, ts(i as i64)) {
                Placement::New { seq } => {
                    records.push(Record::from_event(event, seq, seq, ts(i as i64)))
                }
                Placement::Repeat { seq } => {
                    records[seq as usize - 1].absorb(event, 0, ts(i as i64))
                }
            }
        }
        let mut resumed =
            Collapser::resume(policy, live.next_seq(), records.iter().map(|r| (r, true)));
        for probe in ["a", "e", "d", "c", "zz"] {
            let at = ts(100);
            assert_eq!(
                resumed.place(&event("tool", probe), at),
                live.clone().place(&event("tool", probe), at)
            );
        }
    }

    fn arb_event() -> impl Strategy<Value = (Event, i64)> {
        (
            prop::sample::select(vec!["tool", "llm", "retry"]),
            prop::sample::select(Severity::ALL.to_vec()),
            prop::sample::select(vec![
                "timed out",
                "retry 1 after 2s",
                "retry 2 after 4s",
                "ok",
            ]),
            0i64..900,
        )
            .prop_map(|(kind, severity, message, gap)| {
                (Event::new(kind, severity, message).unwrap(), gap)
            })
    }

    /// The placement rule as a plain scan of the newest records, without [`DigestCounts`].
    struct ScanModel {
        policy: CollapsePolicy,
        next_seq: u64,
        /// `(seq, last_ts, digest, latest)`, newest last.
        recent: VecDeque<(u64, Timestamp, Digest, Option<Digest>)>,
    }

    impl ScanModel {
        fn place(&mut self, event: &Event, ts: Timestamp) -> Placement {
            let template = self.policy.mode == CollapseMode::Template;
            let exact = Fingerprint::of_event(CollapseMode::Exact, event).digest();
            let digest = Fingerprint::of_event(self.policy.mode, event).digest();
            let window = self.policy.window;
            let within = |last: Timestamp| (ts - last).abs() <= window;
            let found = self
                .recent
                .iter_mut()
                .rev()
                .find(|r| template && r.3 == Some(exact) && within(r.1));
            let found = match found {
                Some(found) => Some(found),
                None => self
                    .recent
                    .iter_mut()
                    .rev()
                    .find(|r| r.2 == digest && within(r.1)),
            };
            if let Some(record) = found {
                record.1 = record.1.max(ts);
                if template {
                    record.3 = Some(exact);
                }
                return Placement::Repeat { seq: record.0 };
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            if self.recent.len() == self.policy.lookback {
                self.recent.pop_front();
            }
            self.recent
                .push_back((seq, ts, digest, template.then_some(exact)));
            Placement::New { seq }
        }
    }

    proptest! {
        /// With a lookback long enough for the digest counts to be kept, every event lands
        /// where a plain scan of the newest records puts it, across records forgotten: the
        /// counts only skip scans that find nothing.
        #[test]
        fn counted_lookback_places_as_a_scan_does(
            events in prop::collection::vec((arb_event(), prop::option::of(0u16..400)), 0..400),
            template_mode in any::<bool>(),
            lookback in 24usize..72,
            forget_at in prop::option::of(0usize..400),
        ) {
            let policy = CollapsePolicy {
                mode: if template_mode { CollapseMode::Template } else { CollapseMode::Exact },
                window: DEFAULT_COLLAPSE_WINDOW,
                lookback,
            };
            let mut collapser = Collapser::new(policy);
            let mut model = ScanModel { policy, next_seq: 1, recent: VecDeque::new() };
            let mut clock = 0;
            for (index, ((mut event, gap), word)) in events.into_iter().enumerate() {
                // Many distinct messages (letters, so that masking keeps them apart), so that
                // most buckets stay empty.
                if let Some(word) = word {
                    let letters: String =
                        word.to_string().bytes().map(|d| char::from(d - b'0' + b'a')).collect();
                    event.message = format!("item {letters}");
                }
                if forget_at == Some(index) {
                    let through = model.next_seq / 2;
                    collapser.forget_through(through);
                    model.recent.retain(|r| r.0 > through);
                }
                clock += gap / 8;
                prop_assert_eq!(collapser.place(&event, ts(clock)), model.place(&event, ts(clock)));
            }
        }

        /// Collapse preserves the total count: every accepted event is in exactly one record.
        #[test]
        fn collapse_preserves_total_count(
            events in prop::collection::vec(arb_event(), 0..200),
            template_mode in any::<bool>(),
            lookback in 0usize..6,
        ) {
            let policy = CollapsePolicy {
                mode: if template_mode { CollapseMode::Template } else { CollapseMode::Exact },
                window: DEFAULT_COLLAPSE_WINDOW,
                lookback,
            };
            let mut collapser = Collapser::new(policy);
            let mut counts: Vec<u64> = Vec::new();
            let mut clock = 0;
            for (event, gap) in &events {
                clock += gap;
                match collapser.place(event, ts(clock)) {
                    Placement::New { seq } => {
                        prop_assert_eq!(seq as usize, counts.len() + 1, "seqs are dense");
                        counts.push(1);
                    }
                    Placement::Repeat { seq } => counts[seq as usize - 1] += 1,
                }
            }
            prop_assert_eq!(counts.iter().sum::<u64>(), events.len() as u64);
        }

        /// `same_template` never says yes wrongly: texts it calls alike mask to the same text.
        /// The texts are made of the pieces the masking rules look at (`0x`, hex runs, UUID
        /// groups, fractions, units, quoted paths, wide characters), and the second is the
        /// first with its digits redrawn, but for those an `x` follows.
        #[test]
        fn same_template_implies_equal_masks(
            pieces in prop::collection::vec(prop::sample::select(vec![
                "0", "1", "7", "9", "12", "0x", "0X", "x", "ab", "deadbeef", "cafe", "F", "g",
                "-", ".", "_", "s", "ms", "µs", "min", "h", " ", "\"", "'", "/", "\\", "é", "\n",
                "12345678", "1a2b3c4d5e", "12345678-9abc-1def-8123-123456789abc", "2024-05-01",
            ]), 0..48),
            redraws in prop::collection::vec(0u8..=9, 48 * 36),
        ) {
            let text: String = pieces.concat();
            let mut redraw = redraws.iter();
            let mut other = String::with_capacity(text.len());
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                let before_x = matches!(chars.peek(), Some('x' | 'X'));
                other.push(match c {
                    '0'..='9' if !before_x => {
                        char::from(b'0' + redraw.next().copied().unwrap_or(1))
                    }
                    c => c,
                });
            }
            prop_assert!(same_template(&text, &other));
            prop_assert_eq!(template(&text), template(&other));
        }

        /// `same_template`, eight bytes at a time, answers as its rule read byte by byte does,
        /// at every length and wherever the differences fall (the last bytes included).
        #[test]
        fn same_template_is_its_rule_byte_by_byte(
            a in prop::collection::vec(prop::sample::select(b"09ax X.".to_vec()), 0..40),
            changes in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(b"09ax".to_vec())), 0..4),
            longer in any::<bool>(),
        ) {
            let mut b = a.clone();
            for (at, byte) in changes {
                if !b.is_empty() {
                    let at = at.index(b.len());
                    b[at] = byte;
                }
            }
            if longer {
                b.push(b'0');
            }
            let rule = a.len() == b.len()
                && (0..a.len()).all(|at| {
                    a[at] == b[at]
                        || (a[at].is_ascii_digit()
                            && b[at].is_ascii_digit()
                            && !matches!(a.get(at + 1), Some(b'x' | b'X')))
                });
            let (a, b) = (String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
            prop_assert_eq!(same_template(&a, &b), rule);
        }
    }

    #[test]
    fn same_template_is_strict_about_all_but_digits() {
        assert!(same_template("call 12 after 3s", "call 90 after 5s"));
        assert!(same_template("at 0x1f", "at 0x9f"));
        assert!(!same_template("call 12", "call 123"));
        assert!(!same_template("at 0x1f", "at 1x1f"));
        assert!(!same_template("call 12", "call 1a"));
        assert!(!same_template("Call 12", "call 12"));
    }
}
