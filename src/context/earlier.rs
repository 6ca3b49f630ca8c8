//! The Earlier summary and the room it needs: what is left out depends on what is shown, and
//! what can be shown depends on how much room the summary of the rest takes.

use crate::event::{Kind, Timestamp};
use crate::render::{self, EarlierForm, EarlierSummary};

use super::candidates::{Contender, Standing};
use super::pack::{self, Item, Level, Packing, Reason, Role};
use super::{ContextRequest, Filter, StreamView, cache};

/// The Earlier piece and its token count.
pub type Earlier = (String, u32);

/// Levels for the competing contenders (`items`, in the same order as the contenders that
/// compete) within `remaining` tokens, with the Earlier piece that accounts for the rest.
///
/// The summary's room is reserved first (a guess: the summary of everything), the items packed
/// into what is left, the summary rendered for what was left out, and the reservation raised if
/// the guess was short. The full form (with the breakdown by kind) is tried first, then the one
/// line form, so that a small budget still says what it leaves out rather than nothing.
pub fn choose(
    view: &StreamView<'_>,
    request: &ContextRequest,
    contenders: &[Contender<'_>],
    items: &[Item],
    remaining: u32,
    recent_header: u32,
) -> (Packing, Option<Earlier>) {
    let encoding = request.encoding;
    let moves = pack::moves(items);
    if view.totals.records == 0 {
        return (pack::pack(items, &moves, 0, |_, _| false), None);
    }
    let competing: Vec<usize> = (0..contenders.len())
        .filter(|&index| contenders[index].competes())
        .collect();
    let same_body = |a: usize, b: usize| {
        cache::same_body(
            contenders[competing[a]].record.body(),
            contenders[competing[b]].record.body(),
        )
    };
    let earlier_for = |packing: &Packing, form: EarlierForm| {
        let summary = summary(view, &request.filter, contenders, &packing.levels);
        let text = render::earlier_piece(&summary, form);
        let tokens = encoding.count_fragments(&text);
        (text, tokens, summary.events)
    };
    // A packing that left nothing out needs no summary.
    let with_summary = |packing: Packing, (text, tokens, events): (String, u32, u64)| {
        let earlier = (events > 0).then_some((text, tokens));
        (packing, earlier)
    };
    // Everything fits whole: no summary, nothing left out (but a repeated body is still only
    // paid once).
    let whole_cost: u64 = items.iter().map(|item| u64::from(item.whole)).sum();
    let everything_listed = contenders.len() as u64 == view.totals.records
        && contenders
            .iter()
            .all(|contender| contender.standing != Standing::Forgotten);
    if everything_listed && whole_cost + u64::from(recent_header) <= u64::from(remaining) {
        return (
            pack::pack(items, &moves, remaining - recent_header, same_body),
            None,
        );
    }
    let nothing = Packing {
        levels: vec![Level::Folded; items.len()],
        reasons: vec![Reason::Budget; items.len()],
        same_as: vec![None; items.len()],
        tokens: 0,
    };
    let fit = |form: EarlierForm| {
        let (_, mut reserve, _) = earlier_for(&nothing, form);
        let mut packing = nothing.clone();
        for _ in 0..4 {
            let available = remaining.checked_sub(recent_header + reserve)?;
            packing = pack::pack(items, &moves, available, same_body);
            if !packing.shows_any() {
                return None;
            }
            let earlier = earlier_for(&packing, form);
            if earlier.1 <= reserve {
                return Some(with_summary(packing, earlier));
            }
            reserve = earlier.1;
        }
        // Rare: the summary outgrew every reservation (another kind entered its top list).
        // Fold the lowest-scored records until everything fits.
        while let Some(worst) = lowest_shown(items, &packing) {
            let earlier = earlier_for(&packing, form);
            if recent_header + earlier.1 + packing.tokens <= remaining {
                return Some(with_summary(packing, earlier));
            }
            packing.tokens -= match packing.levels[worst] {
                Level::Whole => items[worst].whole,
                _ => items[worst].headline.unwrap_or(items[worst].whole),
            };
            packing.levels[worst] = Level::Folded;
            packing.reasons[worst] = Reason::Budget;
            packing.same_as[worst] = None;
        }
        None
    };
    // The full summary first; the one-line form when the full one leaves no room for anything,
    // or crowds out the newest record.
    let newest_shown = |packing: &Packing| {
        items
            .iter()
            .zip(&packing.levels)
            .all(|(item, level)| item.role != Role::Newest || *level != Level::Folded)
    };
    let full = fit(EarlierForm::Full);
    if !full
        .as_ref()
        .is_some_and(|(packing, _)| newest_shown(packing))
    {
        let short = fit(EarlierForm::Short);
        if let Some(short) = short.filter(|(packing, _)| full.is_none() || newest_shown(packing)) {
            return short;
        }
    }
    if let Some(full) = full {
        return full;
    }
    // Nothing fits beside a summary: the summary alone, as much of it as fits.
    let alone = [EarlierForm::Full, EarlierForm::Short]
        .into_iter()
        .map(|form| earlier_for(&nothing, form))
        .find(|earlier| earlier.1 <= remaining)
        .map(|(text, tokens, _)| (text, tokens));
    (nothing, alone)
}

fn lowest_shown(items: &[Item], packing: &Packing) -> Option<usize> {
    items
        .iter()
        .enumerate()
        .filter(|(index, _)| packing.levels[*index] != Level::Folded)
        .min_by(|(_, a), (_, b)| a.score.total_cmp(&b.score).then(a.seq.cmp(&b.seq)))
        .map(|(index, _)| index)
}

/// What the Earlier line says, given the levels of the competing contenders: the stream's
/// totals minus the records shown (pinned notes' audit records count as shown).
pub fn summary(
    view: &StreamView<'_>,
    filter: &Filter,
    contenders: &[Contender<'_>],
    levels: &[Level],
) -> EarlierSummary {
    let totals = view.totals;
    // Events shown per kind: few kinds, so a list, subtracted from the totals below.
    let mut shown_kinds: Vec<(&Kind, u64)> = Vec::with_capacity(16);
    let mut severities = totals.severities;
    let mut events = totals.events;
    let mut records = totals.records;
    let mut first_elided: Option<Timestamp> = None;
    let mut last_elided: Option<Timestamp> = view.older_last_ts;
    let mut levels = levels.iter();
    let mut shown_any = false;
    for contender in contenders {
        let shown = match contender.standing {
            Standing::Pinned => true,
            Standing::Forgotten => false,
            Standing::Competes(_) => levels.next().is_some_and(|level| *level != Level::Folded),
        };
        let record = contender.record.record();
        if shown {
            shown_any = true;
            records -= 1;
            events -= record.repeat_count;
            severities[record.severity.index()] -= record.repeat_count;
            match shown_kinds
                .iter_mut()
                .find(|(kind, _)| **kind == record.kind)
            {
                Some((_, count)) => *count += record.repeat_count,
                None => shown_kinds.push((&record.kind, record.repeat_count)),
            }
        } else {
            first_elided = Some(first_elided.map_or(record.first_ts, |t| t.min(record.first_ts)));
            last_elided = Some(last_elided.map_or(record.last_ts, |t| t.max(record.last_ts)));
        }
    }
    let kinds = totals.kinds.iter().map(|(kind, count)| {
        let shown = shown_kinds
            .iter()
            .find(|(shown, _)| *shown == kind)
            .map_or(0, |(_, count)| *count);
        (kind, count - shown)
    });
    // Records older than the contenders are not shown; the oldest of them is the stream's first.
    let unlisted = totals.records - contenders.len() as u64;
    if unlisted > 0 || !shown_any {
        first_elided = totals.first_ts.or(first_elided);
    }
    // Records the filters left out are not listed, and may be newer than everything shown.
    if filter != &Filter::default() {
        let newest_filtered = view
            .records
            .iter()
            .rev()
            .find(|cached| !filter.admits(cached.record()))
            .map(|cached| cached.record().last_ts);
        last_elided = last_elided.max(newest_filtered);
    }
    let mut kinds: Vec<(String, u64)> = kinds
        .filter(|(_, count)| *count > 0)
        .map(|(kind, count)| (kind.as_str().to_owned(), count))
        .collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    EarlierSummary {
        events,
        first_ts: first_elided,
        last_ts: last_elided,
        kinds,
        severities,
        repeats: events - records,
    }
}
