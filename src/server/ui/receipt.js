// The context panel: the window at the budget and encoding the viewer picks
// (`GET /v1/streams/{s}/context?format=json`), its token count, and its receipt drawn:
// - a bar of the budget: tokens on whole lines, on headlines, on pinned notes, on the rest of
//   the text (section headings and the Earlier line that counts what is left out), and unused;
// - the totals: records shown whole, as headlines, folded into the Earlier line;
// - every candidate record with its level of detail and why (newest, goal, ranked, duplicate,
//   pinned; budget and forgotten for the folded ones), newest first;
// - the text itself, as the agent reads it.
// docs/ui.md describes the drawing.

import { KeyRefused, ensureKey, el, formatCount, getJson, kindBadge, streamPath } from "./common.js";

/** Folded records listed at most (a big stream has thousands of candidates). */
const MAX_FOLDED_ROWS = 200;
const MAX_BUDGET = 1000000;

/** Which parts the viewer opened or closed: kept when the panel is drawn again. */
const opened = { folded: false, text: true };

/** What each reason means, in the words the README uses. */
const REASONS = {
  newest: "one of the newest records, kept ahead of ranking",
  goal: "a goal record (what the agent was asked), kept ahead of ranking",
  ranked: "placed by its score per token",
  duplicate: "a headline only: its body is shown whole in another record",
  budget: "no room left in the budget",
  pinned: "a note, shown in the Notes section",
  forgotten: "a deleted or expired note, never shown",
};

/** The parts of the budget bar, in drawing order. */
const PARTS = [
  ["whole", "whole lines"],
  ["headline", "headlines"],
  ["notes", "notes"],
  ["framing", "headings and the Earlier summary"],
  ["unused", "unused"],
];

/**
 * The panel for stream `name`; `recordOf(seq)` gives a record the page holds (for its kind).
 * Returns `{refresh}`: reads the window again and draws it.
 */
export function contextPanel(name, recordOf) {
  const form = document.getElementById("context-form");
  const budgetInput = document.getElementById("budget");
  const encodingSelect = document.getElementById("encoding");
  const container = document.getElementById("context");
  // Answers can overtake one another: only the latest request's answer is drawn.
  let latest = 0;

  // The viewer's choice survives a reload of the page.
  const saved = new URLSearchParams(location.search);
  if (saved.get("budget")) budgetInput.value = saved.get("budget");
  if (saved.get("encoding")) encodingSelect.value = saved.get("encoding");

  async function refresh() {
    const budget = Math.round(Number(budgetInput.value));
    if (!Number.isFinite(budget) || budget < 1 || budget > MAX_BUDGET) {
      budgetInput.setAttribute("aria-invalid", "true");
      return;
    }
    budgetInput.removeAttribute("aria-invalid");
    const encoding = encodingSelect.value;
    const request = ++latest;
    try {
      const { body } = await getJson(streamPath(name,
        `/context?budget=${budget}&encoding=${encodeURIComponent(encoding)}&format=json`));
      if (request === latest) draw(container, body, recordOf);
    } catch (error) {
      if (request !== latest) return;
      if (error instanceof KeyRefused) {
        await ensureKey("The server did not accept that key; type another.");
        return;
      }
      container.replaceChildren(el("p", "error", error.message));
    }
  }

  function choose() {
    const url = new URL(location.href);
    url.searchParams.set("budget", budgetInput.value);
    url.searchParams.set("encoding", encodingSelect.value);
    history.replaceState(null, "", url);
    refresh();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    choose();
  });
  budgetInput.addEventListener("change", choose);
  encodingSelect.addEventListener("change", choose);
  return { refresh };
}

/**
 * Draws a context window (the JSON answer) and its receipt into `container`.
 */
function draw(container, answer, recordOf) {
  const spent = spending(answer);
  const parts = [
    header(answer),
    bar(answer.budget, spent),
    legend(spent),
    totals(answer),
    receipt(answer.items, recordOf),
    text(answer.text),
  ];
  container.replaceChildren(...parts);
}

function header(answer) {
  const p = el("p", "tokens");
  p.id = "context-tokens";
  const strong = el("strong", "", formatCount(answer.tokens));
  strong.dataset.tokens = answer.tokens;
  p.append(strong, ` of ${formatCount(answer.budget)} tokens, counted with ${answer.encoding}`,
    el("span", "muted", ` (revision ${formatCount(answer.revision)}, line cap ${answer.line_cap})`));
  return p;
}

/**
 * How the window's tokens are spent. Each shown record's line costs `tokens` at its level; what
 * the records do not account for is the headings and the Earlier summary.
 */
function spending(answer) {
  const spent = { whole: 0, headline: 0, notes: 0, framing: 0, unused: 0 };
  for (const item of answer.items) {
    if (!item.included) continue;
    if (item.reason === "pinned") spent.notes += item.tokens;
    else if (item.level === "whole") spent.whole += item.tokens;
    else if (item.level === "headline") spent.headline += item.tokens;
  }
  const lines = spent.whole + spent.headline + spent.notes;
  spent.framing = Math.max(0, answer.tokens - lines);
  spent.unused = Math.max(0, answer.budget - answer.tokens);
  return spent;
}

/** The budget as a bar: one part per use, as wide as its share. Its label says it in words. */
function bar(budget, spent) {
  const wrap = el("div", "budget-bar");
  wrap.setAttribute("role", "img");
  wrap.setAttribute("aria-label", PARTS
    .map(([key, label]) => `${label} ${formatCount(spent[key])}`).join(", ") + ` of ${formatCount(budget)} tokens`);
  const total = Math.max(budget, 1);
  for (const [key, label] of PARTS) {
    if (!spent[key]) continue;
    const part = el("span", `part part-${key}`);
    part.style.width = `${(100 * spent[key]) / total}%`;
    part.title = `${label}: ${formatCount(spent[key])} tokens`;
    wrap.append(part);
  }
  return wrap;
}

function legend(spent) {
  const ul = el("ul", "legend");
  for (const [key, label] of PARTS) {
    const li = el("li");
    li.append(el("span", `swatch part-${key}`), `${label} ${formatCount(spent[key])}`);
    ul.append(li);
  }
  return ul;
}

function totals(answer) {
  const t = answer.totals;
  const p = el("p", "totals");
  p.id = "context-totals";
  p.textContent = `${formatCount(t.shown_records)} of ${formatCount(t.records)} records shown `
    + `(${formatCount(t.shown_whole)} whole, ${formatCount(t.shown_headlines)} as headlines), `
    + `${formatCount(t.elided_records)} folded into the Earlier line `
    + `(${formatCount(t.elided_events)} of ${formatCount(t.events)} events); `
    + `${plural(t.notes_shown, "note")} shown.`;
  if (answer.notes_cut) {
    p.append(el("strong", "warn", ` ${plural(t.notes_cut, "note")} did not fit the budget.`));
  }
  return p;
}

/**
 * The receipt: the shown records, then (folded away) the records left out and why. The list of
 * those is drawn when the viewer opens it: on a big stream it is the longer one, and the panel
 * is drawn again about once a second while the stream is busy.
 */
function receipt(items, recordOf) {
  const wrap = el("div", "receipt");
  const newestFirst = [...items].sort((a, b) => b.seq - a.seq);
  const shown = newestFirst.filter((item) => item.included);
  const folded = newestFirst.filter((item) => !item.included);
  wrap.append(table(`Shown: ${plural(shown.length, "record")}, newest first`, shown, recordOf, "receipt-shown"));

  const details = el("details", "folded");
  const why = {};
  for (const item of folded) why[item.reason] = (why[item.reason] || 0) + 1;
  const reasons = Object.entries(why).map(([reason, n]) => `${reason} ${formatCount(n)}`).join(", ");
  details.append(el("summary", "", `Left out: ${plural(folded.length, "record")}${reasons ? ` (${reasons})` : ""}`));
  const fill = () => {
    if (details.childElementCount > 1) return;
    if (folded.length > MAX_FOLDED_ROWS) {
      details.append(el("p", "muted small", `The newest ${MAX_FOLDED_ROWS} are listed.`));
    }
    details.append(table("Left out, newest first", folded.slice(0, MAX_FOLDED_ROWS), recordOf, "receipt-folded"));
  };
  details.open = opened.folded;
  if (opened.folded) fill();
  details.addEventListener("toggle", () => {
    opened.folded = details.open;
    if (details.open) fill();
  });
  wrap.append(details);
  return wrap;
}

/** "1 record", "2 records". */
function plural(n, noun) {
  return `${formatCount(n)} ${noun}${n === 1 ? "" : "s"}`;
}

function table(caption, items, recordOf, id) {
  const table = el("table", "receipt-table");
  table.id = id;
  table.append(el("caption", "", caption));
  const head = el("tr");
  for (const [label, cls] of [["Record", ""], ["Detail", ""], ["Why", ""], ["Tokens", "num"], ["Score", "num"]]) {
    const th = el("th", cls, label);
    th.scope = "col";
    head.append(th);
  }
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  for (const item of items) tbody.append(row(item, recordOf(item.seq)));
  table.append(thead, tbody);
  return table;
}

function row(item, record) {
  const tr = el("tr", `level-${item.level}`);
  tr.dataset.seq = item.seq;
  const which = el("td", "which");
  which.append(el("span", "seq", `#${item.seq}`));
  if (record) which.append(" ", kindBadge(record.kind));
  const level = el("td");
  level.append(el("span", `level level-${item.level}`, item.level));
  if (item.clipped) level.append(el("span", "muted small", " clipped"));
  const why = el("td", "why", item.reason);
  why.title = REASONS[item.reason] || "";
  if (item.same_as !== undefined) why.textContent += ` of #${item.same_as}`;
  tr.append(which, level, why,
    el("td", "num", formatCount(item.tokens)),
    el("td", "num", item.score.toFixed(2)));
  return tr;
}

function text(windowText) {
  const details = el("details", "window-text");
  details.open = opened.text;
  details.addEventListener("toggle", () => {
    opened.text = details.open;
  });
  details.append(el("summary", "", "The window as the agent reads it"));
  const pre = el("pre", "", windowText || "(empty: the stream has nothing yet)");
  pre.tabIndex = 0;
  details.append(pre);
  return details;
}
