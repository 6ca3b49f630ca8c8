// `/ui/streams/{name}`: one stream, live. The newest records (and older ones on request), its
// notes and stats, and beside them the context window (receipt.js).
//
// How it stays responsive with a stream of 100,000 records taking 50 events a second:
// - only a window of records is in the page: the newest WINDOW_RECORDS, plus the pages of older
//   ones the viewer asked for; records falling out of the window leave the DOM;
// - frames from the feed are queued and applied once per animation frame, so a burst costs one
//   layout, not one per event;
// - the window, the stats and the notes are read again at most about once a second.
//
// Every change a frame describes is applied idempotently (by seq, by note id, and a repeat
// count only ever rises), so a frame that the first read already reflected does no harm: the
// page reads first, then follows the feed from the revision that read reflected.

import {
  SEVERITIES, KeyRefused, ago, clock, debounced, el, ensureKey, formatCount, getJson,
  kindBadge, severityBadge, showError, streamPath,
} from "./common.js";
import { follow } from "./feed.js";
import { contextPanel } from "./receipt.js";

/** Records drawn when the page opens (and kept while new ones arrive). */
const WINDOW_RECORDS = 300;
/** Records per "load older" page. */
const OLDER_PAGE = 200;
/** A message is shown up to this many lines and characters until the viewer expands it. */
const PREVIEW_LINES = 4;
const PREVIEW_CHARS = 400;
/** Frames queued while the page is paused or hidden; past this the page reads afresh instead. */
const MAX_PENDING = 5000;
/** Shortest time between two updates of the records (see scheduleFlush). */
const FLUSH_INTERVAL_MS = 100;
/** `before` for the newest page: larger than any seq. */
const NEWEST = Number.MAX_SAFE_INTEGER;
/** The window and the stats are read again this long after the stream goes quiet, and at least
 * this often while it does not. */
const REFRESH_QUIET_MS = 250;
const REFRESH_MAX_WAIT_MS = 1000;

const name = decodeURIComponent(location.pathname.slice("/ui/streams/".length));

const list = document.getElementById("records");
const pauseButton = document.getElementById("pause");
const olderButton = document.getElementById("load-older");
const feedStatus = document.getElementById("feed-status");

/** The records in the page: seq → {record, li}, and their seqs in ascending order. */
const rows = new Map();
let seqs = [];
/** How many records the page keeps: the window, grown by each older page loaded. */
let capacity = WINDOW_RECORDS;
/** `before` cursor for the next older page; null at the start of the stream. */
let olderCursor = null;
/** Frames not yet applied, and whether an animation frame is due to apply them. */
let pending = [];
let flushQueued = false;
let lastFlush = 0;
/** Set while the records are read afresh: frames wait until it is done. */
let reading = false;
/** Set when frames were dropped (too many queued, or a gap): the next flush reads afresh. */
let stale = false;
let paused = false;
let feed = null;
let stats = null;

const notes = new Map();
let notesChanged = false;
const context = contextPanel(name, (seq) => rows.get(seq)?.record);

// ----- the feed -------------------------------------------------------------------------------

function onFrame(frame) {
  if (frame.event === "gap") {
    // Changes are missing (the changelog moved on) or the stream was deleted and created
    // again: what the page holds may be wrong, so it reads everything afresh.
    stale = true;
    pending = [];
  } else if (!stale) {
    pending.push(frame);
    if (pending.length > MAX_PENDING) {
      stale = true;
      pending = [];
    }
  }
  scheduleFlush();
  refreshSoon();
}

function scheduleFlush() {
  if (flushQueued || paused || reading) return;
  flushQueued = true;
  // At most one update every FLUSH_INTERVAL_MS: each one lays the list out again, and a burst
  // drawn 10 times a second reads as well as one drawn 60 times, at a sixth of the cost.
  const wait = lastFlush + FLUSH_INTERVAL_MS - performance.now();
  if (wait > 0) setTimeout(() => requestAnimationFrame(flush), wait);
  else requestAnimationFrame(flush);
}

/** Applies every queued frame: one DOM update per animation frame, however many arrived. */
function flush() {
  flushQueued = false;
  lastFlush = performance.now();
  if (paused || reading) return;
  if (stale) {
    resync();
    return;
  }
  const frames = pending;
  pending = [];
  for (const frame of frames) {
    const data = frame.data;
    if (!data) continue;
    if (frame.event === "record") upsert(data);
    else if (frame.event === "repeat") repeat(data);
    else if (frame.event === "note") addNote(data);
    else if (frame.event === "note_deleted") deleteNote(data.id);
  }
  trim();
  drawCounts();
  if (notesChanged) drawNotes();
}

function setFeedState(state, error) {
  feedStatus.dataset.state = state;
  feedStatus.textContent = {
    live: "live",
    reconnecting: "reconnecting…",
    refused: "feed refused",
    connecting: "connecting",
  }[state] || state;
  if (state === "refused") {
    if (error instanceof KeyRefused) {
      askKeyAgain();
    } else {
      showError("stream-error", error);
    }
  }
}

function subscribe(after) {
  feed?.stop();
  setFeedState("connecting");
  feed = follow(streamPath(name, "/subscribe"), after, onFrame, setFeedState);
}

// ----- reading --------------------------------------------------------------------------------

/** Reads the stats, the newest records and the notes, then follows the feed from there. */
async function start() {
  document.getElementById("main").hidden = false;
  try {
    const revision = await readRecords();
    await readNotes();
    await readStats();
    subscribe(revision);
    context.refresh();
  } catch (error) {
    if (error instanceof KeyRefused) askKeyAgain();
    else showError("stream-error", error);
  }
}

/** After a gap or dropped frames: everything afresh, and a new feed from there. */
async function resync() {
  stale = false;
  pending = [];
  feed?.stop();
  notes.clear();
  await start();
}

function filterQuery() {
  const kind = document.getElementById("filter-kind").value;
  const severity = document.getElementById("filter-severity").value;
  let query = "";
  if (kind) query += `&kinds=${encodeURIComponent(kind)}`;
  if (severity) query += `&min_severity=${severity}`;
  return query;
}

/** Whether a record passes the filters (the server applied them to what it sent already). */
function passes(record) {
  const kind = document.getElementById("filter-kind").value;
  const severity = document.getElementById("filter-severity").value;
  return (!kind || record.kind === kind)
    && (!severity || SEVERITIES.indexOf(record.severity) >= SEVERITIES.indexOf(severity));
}

/**
 * Replaces the records with the newest page; returns the revision it reflects. Frames arriving
 * meanwhile wait and are applied after it.
 */
async function readRecords() {
  reading = true;
  try {
    const { body, response } = await getJson(
      streamPath(name, `/events?before=${NEWEST}&limit=${WINDOW_RECORDS}${filterQuery()}`),
    ).catch((error) => {
      // A stream that does not exist yet is empty; its first event will come over the feed.
      if (error.status === 404) return { body: { records: [], next: null }, response: null };
      throw error;
    });
    rows.clear();
    seqs = [];
    list.replaceChildren();
    capacity = WINDOW_RECORDS;
    const fragment = document.createDocumentFragment();
    for (const record of [...body.records].reverse()) {
      fragment.append(remember(record));
    }
    seqs = body.records.map((record) => record.seq);
    list.append(fragment);
    olderCursor = body.next;
    drawCounts();
    return Number(response?.headers.get("x-recap-revision") || 0);
  } finally {
    reading = false;
    scheduleFlush();
  }
}

async function readOlder() {
  if (olderCursor === null) return;
  olderButton.disabled = true;
  try {
    const { body } = await getJson(
      streamPath(name, `/events?before=${olderCursor}&limit=${OLDER_PAGE}${filterQuery()}`),
    );
    const older = body.records.filter((record) => !rows.has(record.seq));
    const fragment = document.createDocumentFragment();
    for (const record of [...older].reverse()) fragment.append(remember(record));
    list.append(fragment);
    seqs = older.map((record) => record.seq).concat(seqs);
    capacity += older.length;
    olderCursor = body.next;
  } catch (error) {
    if (error instanceof KeyRefused) askKeyAgain();
    else showError("stream-error", error);
  } finally {
    olderButton.disabled = false;
    drawCounts();
  }
}

async function readNotes() {
  notes.clear();
  let after = 0;
  for (;;) {
    const page = await getJson(streamPath(name, `/notes?after=${after}`)).catch((error) => {
      if (error.status === 404) return { body: { notes: [], next: null } };
      throw error;
    });
    for (const note of page.body.notes) notes.set(note.id, note);
    if (page.body.next === null || page.body.next === undefined) break;
    after = page.body.next;
  }
  drawNotes();
}

async function readStats() {
  try {
    const { body } = await getJson(streamPath(name));
    stats = body;
  } catch (error) {
    if (error.status !== 404) throw error;
    stats = null;
  }
  drawStats();
}

/** The stats and the window follow the stream, a little behind it. */
const refreshSoon = debounced(async () => {
  await Promise.all([readStats().catch(() => {}), context.refresh()]);
}, REFRESH_QUIET_MS, REFRESH_MAX_WAIT_MS);

// ----- records --------------------------------------------------------------------------------

/** Makes the row of a record and remembers it (the caller puts the row in the list). */
function remember(record) {
  const li = el("li", "record");
  li.dataset.seq = record.seq;
  li.dataset.severity = record.severity;
  const head = el("div", "record-head");
  const seq = el("span", "seq", `#${record.seq}`);
  const time = el("time", "time", clock(record.last_ts));
  time.dateTime = record.last_ts;
  time.title = record.first_ts === record.last_ts
    ? record.last_ts
    : `first ${record.first_ts}, last ${record.last_ts}`;
  const count = el("span", "count");
  head.append(seq, time, kindBadge(record.kind), severityBadge(record.severity), count);
  if (record.actor) head.append(el("span", "actor", record.actor));
  if (record.step_id) head.append(el("span", "step", `step ${record.step_id}`));
  li.append(head, message(record.message));
  const row = { record, li, count, time };
  drawCount(row);
  rows.set(record.seq, row);
  return li;
}

/** A message, cut to a preview with a button that shows the rest. */
function message(text) {
  const box = el("div", "message");
  const lines = text.split("\n");
  let preview = lines.slice(0, PREVIEW_LINES).join("\n");
  if (preview.length > PREVIEW_CHARS) preview = preview.slice(0, PREVIEW_CHARS);
  const body = el("p", "message-text", preview === text ? text : `${preview}…`);
  box.append(body);
  if (preview !== text) {
    const more = el("button", "more quiet", `Show all (${formatCount(lines.length)} lines, ${formatCount(text.length)} chars)`);
    more.type = "button";
    more.setAttribute("aria-expanded", "false");
    more.addEventListener("click", () => {
      const open = more.getAttribute("aria-expanded") !== "true";
      body.textContent = open ? text : `${preview}…`;
      more.setAttribute("aria-expanded", String(open));
      more.textContent = open ? "Show less" : `Show all (${formatCount(lines.length)} lines, ${formatCount(text.length)} chars)`;
    });
    box.append(more);
  }
  return box;
}

function drawCount(row) {
  const n = row.record.repeat_count;
  row.count.textContent = n > 1 ? `×${formatCount(n)}` : "";
  row.count.title = n > 1 ? `${n} events collapsed into this record` : "";
}

/** A new record from the feed (or one the page has: then it is brought up to date). */
function upsert(record) {
  if (!passes(record)) return;
  const known = rows.get(record.seq);
  if (known) {
    if (record.repeat_count > known.record.repeat_count) {
      repeat({ seq: record.seq, repeat_count: record.repeat_count, last_ts: record.last_ts });
    }
    return;
  }
  // Older than everything in a full window: not drawn (the window is the newest records).
  if (seqs.length >= capacity && record.seq < seqs[0]) return;
  const index = insertionIndex(record.seq);
  const li = remember(record);
  if (index === seqs.length) {
    list.prepend(li);
  } else {
    // Rows run newest first: the new row goes below the next newer one.
    rows.get(seqs[index]).li.after(li);
  }
  seqs.splice(index, 0, record.seq);
}

/** Where `seq` goes in the ascending `seqs`. */
function insertionIndex(seq) {
  let low = 0;
  let high = seqs.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (seqs[mid] < seq) low = mid + 1;
    else high = mid;
  }
  return low;
}

/** A record's count went up. Counts only rise: a frame older than what the page shows is moot. */
function repeat(change) {
  const row = rows.get(change.seq);
  if (!row || change.repeat_count <= row.record.repeat_count) return;
  row.record.repeat_count = change.repeat_count;
  row.record.last_ts = change.last_ts;
  row.time.textContent = clock(change.last_ts);
  row.time.dateTime = change.last_ts;
  drawCount(row);
  // A count ticking up catches the eye. Switching between two identical animations restarts
  // it without forcing a layout (removing and re-adding one class would need one per repeat).
  const next = row.count.classList.contains("bump-a") ? "bump-b" : "bump-a";
  row.count.classList.remove("bump-a", "bump-b");
  row.count.classList.add(next);
}

/** Drops the oldest rows beyond the window; "load older" brings them back. */
function trim() {
  const excess = seqs.length - capacity;
  if (excess <= 0) return;
  for (const seq of seqs.slice(0, excess)) {
    rows.get(seq).li.remove();
    rows.delete(seq);
  }
  seqs = seqs.slice(excess);
  olderCursor = seqs[0];
}

function drawCounts() {
  const total = stats ? stats.records : rows.size;
  const filtered = filterQuery() ? " (filtered)" : "";
  document.getElementById("records-count").textContent =
    `showing ${formatCount(rows.size)} of ${formatCount(Math.max(total, rows.size))}${filtered}`;
  olderButton.hidden = olderCursor === null;
  document.getElementById("records-end").hidden = olderCursor !== null || rows.size === 0;
}

// ----- notes and stats ------------------------------------------------------------------------

function addNote(note) {
  notes.set(note.id, note);
  notesChanged = true;
}

function deleteNote(id) {
  notesChanged = notes.delete(id) || notesChanged;
}

function drawNotes() {
  notesChanged = false;
  const items = [...notes.values()].sort((a, b) => a.id - b.id).map((note) => {
    const li = el("li", "note");
    li.dataset.noteId = note.id;
    li.append(el("p", "note-text", note.text));
    const meta = el("p", "muted small", `note ${note.id}, ${ago(note.created_at)}`);
    if (note.expires_at) meta.textContent += `, expires ${note.expires_at}`;
    li.append(meta);
    return li;
  });
  document.getElementById("notes").replaceChildren(...items);
  document.getElementById("notes-count").textContent = notes.size ? `(${notes.size})` : "";
  document.getElementById("notes-empty").hidden = notes.size > 0;
}

function drawStats() {
  const dl = document.getElementById("stats");
  if (!stats) {
    dl.replaceChildren(el("dt", "", "Stream"), el("dd", "", "not created yet: it appears with its first event"));
    return;
  }
  const pairs = [
    ["Records", formatCount(stats.records)],
    ["Events", formatCount(stats.events)],
    ["Collapsed repeats", formatCount(stats.events - stats.records)],
    ["Notes", formatCount(stats.notes)],
    ["Revision", formatCount(stats.revision)],
    ["Last activity", stats.last_ts ? ago(stats.last_ts) : "never"],
  ];
  const nodes = [];
  for (const [term, value] of pairs) {
    const wrap = el("div", "stat");
    wrap.append(el("dt", "", term), el("dd", "", value));
    nodes.push(wrap);
  }
  const severities = el("div", "stat");
  const dd = el("dd");
  for (const severity of [...SEVERITIES].reverse()) {
    const count = stats.severities[severity];
    if (!count) continue;
    const badge = severityBadge(severity);
    badge.textContent = `${severity} ${formatCount(count)}`;
    dd.append(badge, " ");
  }
  severities.append(el("dt", "", "Events by severity"), dd);
  nodes.push(severities);
  dl.replaceChildren(...nodes);
  drawKinds(Object.keys(stats.kinds));
  drawCounts();
}

/** The kind filter offers the stream's kinds (keeping the one chosen). */
function drawKinds(kinds) {
  const select = document.getElementById("filter-kind");
  const known = new Set([...select.options].map((option) => option.value));
  for (const kind of kinds.sort()) {
    if (known.has(kind)) continue;
    const option = el("option", "", kind);
    option.value = kind;
    select.append(option);
  }
}

// ----- controls -------------------------------------------------------------------------------

function setPaused(value) {
  paused = value;
  pauseButton.setAttribute("aria-pressed", String(paused));
  pauseButton.textContent = paused ? "Resume" : "Pause";
  const note = document.getElementById("paused-note");
  note.hidden = !paused;
  note.textContent = paused ? "Paused: new records wait until you resume (the window and stats still follow)." : "";
  if (!paused) scheduleFlush();
}

async function askKeyAgain() {
  feed?.stop();
  await ensureKey("The server did not accept that key; type another.");
  resync();
}

document.getElementById("stream-name").textContent = name;
document.title = `recap: ${name}`;
pauseButton.addEventListener("click", () => setPaused(!paused));
olderButton.addEventListener("click", readOlder);
for (const id of ["filter-kind", "filter-severity"]) {
  document.getElementById(id).addEventListener("change", () => {
    readRecords().catch((error) => showError("stream-error", error));
  });
}
document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());

ensureKey().then(start);
