// What both pages share: the API key, requests to the JSON API, and small DOM and text helpers.
//
// Data only ever reaches the page through textContent and attributes set one by one (never
// innerHTML), so a message cannot inject markup whatever it holds.

const KEY_STORAGE = "recap.key";

/** Severities from least to most severe, as the API names them. */
export const SEVERITIES = ["debug", "info", "warning", "error", "critical"];

/** Thrown when the server refuses the key (401): the page asks for another. */
export class KeyRefused extends Error {}

/** An error the API answered with: its status, code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Whether this server asks for keys (the server says so on the page's <html>). */
export function keysRequired() {
  return document.documentElement.dataset.auth === "keys";
}

/** The key typed in this tab, if any (sessionStorage: gone when the tab closes). */
export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

/** The headers every request carries: the key, when the server asks for one. */
export function authHeaders() {
  const key = storedKey();
  return key && keysRequired() ? { Authorization: `Bearer ${key}` } : {};
}

/**
 * Makes sure there is a key to send, asking for one when the server needs it and none is
 * stored. Resolves once the page may make requests. `refused` says why the last key was not
 * accepted.
 */
export function ensureKey(refused) {
  const forget = document.getElementById("forget-key");
  forget.hidden = !(keysRequired() && storedKey());
  forget.onclick = () => {
    sessionStorage.removeItem(KEY_STORAGE);
    location.reload();
  };
  if (!keysRequired() || (storedKey() && !refused)) {
    return Promise.resolve();
  }
  sessionStorage.removeItem(KEY_STORAGE);
  const section = document.getElementById("auth");
  const form = document.getElementById("auth-form");
  const input = document.getElementById("auth-key");
  document.getElementById("auth-error").textContent = refused || "";
  document.getElementById("main").hidden = true;
  section.hidden = false;
  input.focus();
  return new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      input.value = "";
      section.hidden = true;
      forget.hidden = false;
      resolve();
    };
  });
}

/**
 * GETs a path of the JSON API. Resolves to `{body, response}`; rejects with KeyRefused on 401
 * and ApiError on any other refusal, carrying the server's message.
 */
export async function getJson(path) {
  const response = await fetch(path, {
    headers: { Accept: "application/json", ...authHeaders() },
    cache: "no-store",
  });
  if (response.status === 401) {
    throw new KeyRefused("the server did not accept this key");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `${path} answered ${response.status}`);
  }
  return { body, response };
}

/** A stream's API path: `/v1/streams/{name}` plus `rest`, the name escaped. */
export function streamPath(name, rest = "") {
  return `/v1/streams/${encodeURIComponent(name)}${rest}`;
}

/** Creates an element with a class and text (text as textContent, never as markup). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const integer = new Intl.NumberFormat("en");

/** 12,345 */
export function formatCount(n) {
  return integer.format(n);
}

/** The UTC time of a timestamp, `HH:MM:SS` (the context window's clock). */
export function clock(ts) {
  return ts ? ts.slice(11, 19) : "";
}

/** How long ago a timestamp was, in words a person scans: "12 s ago", "3 h ago". */
export function ago(ts, now = Date.now()) {
  const then = Date.parse(ts);
  if (Number.isNaN(then)) return "never";
  const seconds = Math.round((now - then) / 1000);
  if (seconds < 0) return "in the future";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/**
 * A hue for a kind, the same on every page load, so a kind is recognised by its colour at a
 * glance (the name is always written too).
 */
export function kindHue(kind) {
  let hash = 0;
  for (const char of kind) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return hash % 360;
}

/** A kind badge. */
export function kindBadge(kind) {
  const badge = el("span", "kind", kind);
  badge.style.setProperty("--hue", kindHue(kind));
  return badge;
}

/** A severity badge; info, the usual case, is drawn quietly. */
export function severityBadge(severity) {
  return el("span", `sev sev-${severity}`, severity);
}

/** Shows an error on the page in the element `id`. */
export function showError(id, error) {
  const node = document.getElementById(id);
  node.textContent = error instanceof Error ? error.message : String(error);
  node.hidden = false;
}

/**
 * Runs `task` (async) after the calls stop for `quietMs`, but at least every `maxWaitMs` while
 * they go on (a stream taking 50 events a second never goes quiet), and never twice at once: a
 * call during a run schedules one more run after it.
 */
export function debounced(task, quietMs, maxWaitMs) {
  let timer = null;
  let firstCall = 0;
  let running = false;
  let again = false;

  async function run() {
    timer = null;
    firstCall = 0;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await task();
    } finally {
      running = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  }

  function schedule() {
    const now = Date.now();
    if (!firstCall) firstCall = now;
    clearTimeout(timer);
    const wait = Math.max(0, Math.min(quietMs, firstCall + maxWaitMs - now));
    timer = setTimeout(run, wait);
  }

  return schedule;
}
