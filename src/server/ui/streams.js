// `/ui`: every stream the key may see, with its stats, most recently active first, filtered by
// name as the viewer types. The list is read again every few seconds while the tab is visible.

import {
  SEVERITIES, KeyRefused, ago, el, ensureKey, formatCount, getJson, severityBadge, showError,
} from "./common.js";

/** How often the list is read again while the tab is visible. */
const REFRESH_MS = 5000;

let streams = [];
let timer = null;

const filter = document.getElementById("filter");
const status = document.getElementById("list-status");

async function load() {
  clearTimeout(timer);
  try {
    // The list comes in pages of up to 1,000 streams, by name.
    let page = await getJson("/v1/streams");
    streams = page.body.streams;
    while (page.body.next) {
      page = await getJson(`/v1/streams?after=${encodeURIComponent(page.body.next)}`);
      streams = streams.concat(page.body.streams);
    }
    // Most recently active first: what an operator looks for.
    streams.sort((a, b) => (b.last_ts || "").localeCompare(a.last_ts || ""));
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    render();
  } catch (error) {
    if (error instanceof KeyRefused) {
      await ensureKey("The server did not accept that key; type another.");
      start();
      return;
    }
    showError("empty", error);
  }
  if (document.visibilityState === "visible") timer = setTimeout(load, REFRESH_MS);
}

function render() {
  const needle = filter.value.trim().toLowerCase();
  const shown = streams.filter((stream) => stream.name.toLowerCase().includes(needle));
  const rows = shown.map(row);
  document.querySelector("#streams tbody").replaceChildren(...rows);
  const empty = document.getElementById("empty");
  empty.hidden = shown.length > 0;
  empty.textContent = streams.length === 0
    ? "No streams yet: a stream is created by its first POST /v1/streams/{name}/events."
    : `No stream name contains "${filter.value.trim()}".`;
}

function row(stream) {
  const tr = document.createElement("tr");
  tr.dataset.stream = stream.name;
  const name = el("th");
  name.scope = "row";
  const link = el("a", "stream-link", stream.name);
  link.href = `/ui/streams/${encodeURIComponent(stream.name)}`;
  name.append(link);
  const collapsed = stream.events - stream.records;
  const last = el("td", "", ago(stream.last_ts));
  if (stream.last_ts) last.title = stream.last_ts;
  tr.append(
    name,
    el("td", "num", formatCount(stream.records)),
    el("td", "num", formatCount(stream.events)),
    el("td", "num", formatCount(collapsed)),
    el("td", "num", formatCount(stream.notes)),
    last,
    severities(stream.severities),
  );
  return tr;
}

/** The events of each severity, most severe first. */
function severities(counts) {
  const td = el("td", "severities");
  for (const severity of [...SEVERITIES].reverse()) {
    const count = counts[severity];
    if (!count) continue;
    const badge = severityBadge(severity);
    badge.textContent = `${severity} ${formatCount(count)}`;
    td.append(badge, " ");
  }
  return td;
}

function start() {
  document.getElementById("main").hidden = false;
  load();
}

// The filter lives in the address too, so a filtered list can be shared or reloaded.
filter.value = new URLSearchParams(location.search).get("q") || "";
filter.addEventListener("input", () => {
  const url = new URL(location.href);
  if (filter.value) url.searchParams.set("q", filter.value);
  else url.searchParams.delete("q");
  history.replaceState(null, "", url);
  render();
});
document.getElementById("refresh").addEventListener("click", load);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") load();
});

ensureKey().then(start);
