// Follows a stream's SSE feed (`GET /v1/streams/{s}/subscribe`) with fetch() and a stream
// reader rather than EventSource: EventSource cannot send an Authorization header, and a server
// with keys needs one on the feed too. So the `id:` / `event:` / `data:` frames are parsed here,
// and a dropped connection is resumed with `Last-Event-ID`, which the server answers with every
// change after it exactly once.

import { authHeaders, KeyRefused } from "./common.js";

/** First wait before reconnecting; it doubles on each failure up to RETRY_MAX_MS. */
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10000;

/**
 * Follows `path` from revision `after` (the revision the page's first read reflected), calling
 * `onFrame({id, event, data})` for every frame, with `data` parsed from JSON, and
 * `onState(state, detail)` when the connection opens ("live"), drops ("reconnecting") or is
 * refused ("refused", with the error). Returns a handle whose `stop()` ends it.
 */
export function follow(path, after, onFrame, onState) {
  const controller = new AbortController();
  let lastEventId = after;
  let stopped = false;

  async function connect() {
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    if (lastEventId !== null && lastEventId !== undefined) {
      headers["Last-Event-ID"] = String(lastEventId);
    }
    const response = await fetch(path, { headers, cache: "no-store", signal: controller.signal });
    if (response.status === 401) throw new KeyRefused("the server did not accept this key");
    if (!response.ok || !response.body) {
      const body = await response.json().catch(() => null);
      const message = body && body.error ? body.error.message : `the feed answered ${response.status}`;
      const error = new Error(message);
      error.permanent = response.status >= 400 && response.status < 500;
      throw error;
    }
    onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new FrameParser((frame) => {
      if (frame.id !== null) lastEventId = frame.id;
      onFrame(frame);
    });
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser.push(value);
    }
  }

  (async () => {
    let wait = RETRY_MIN_MS;
    while (!stopped) {
      const opened = Date.now();
      try {
        await connect();
      } catch (error) {
        if (stopped) return;
        if (error instanceof KeyRefused || error.permanent) {
          onState("refused", error);
          return;
        }
      }
      if (stopped) return;
      // The feed ended (server restart, cut off, network): resume where it stopped.
      if (Date.now() - opened > RETRY_MAX_MS) wait = RETRY_MIN_MS;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, RETRY_MAX_MS);
    }
  })();

  return {
    stop() {
      stopped = true;
      controller.abort();
    },
  };
}

/**
 * The SSE wire format (the subset recap writes, read as the HTML standard says): lines end with
 * LF, CRLF or CR; a blank line ends a frame; `:` starts a comment (keepalives); `data:` lines
 * join with LF; one optional space after the colon is dropped.
 */
export class FrameParser {
  constructor(onFrame) {
    this.onFrame = onFrame;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.id = null;
    this.event = "";
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    let start = 0;
    for (;;) {
      const match = /\r\n|\r|\n/g;
      match.lastIndex = start;
      const found = match.exec(this.buffer);
      // A lone CR at the end may be the first half of a CRLF: wait for the next chunk.
      if (!found || (found[0] === "\r" && found.index === this.buffer.length - 1)) break;
      this.line(this.buffer.slice(start, found.index));
      start = found.index + found[0].length;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") this.id = value;
    else if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
  }

  dispatch() {
    if (this.data.length > 0 || this.id !== null) {
      let data = null;
      try {
        data = JSON.parse(this.data.join("\n"));
      } catch {
        data = null;
      }
      const id = this.id === null ? null : Number(this.id);
      this.onFrame({ id, event: this.event || "message", data });
    }
    this.reset();
  }
}
