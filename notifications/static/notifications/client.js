// The reference client for docs/protocol.md: one live, resumable stream of a
// user's events over a WebSocket. No dependencies; works in any modern browser.
//
//   const client = new NotificationsClient({
//     url: "wss://example.com/ws/notifications/",
//     getToken: async ({ fresh }) => accessToken,   // fresh: the last one was refused
//     onEvent: (frame) => show(frame),              // each event once, in seq order
//     onState: (state) => {},                       // see State
//     onGap: () => reloadHistory(),                 // the stream could not be resumed
//   });
//   client.start();
//
// Guarantees, given the server's (protocol section 5): onEvent sees every
// event after the starting point exactly once and in seq order, across
// reconnects, server restarts and token refreshes.

export const State = Object.freeze({
  CONNECTING: "connecting", // the first connection is being made
  LIVE: "live", // connected and authenticated; events arrive as they happen
  RECONNECTING: "reconnecting", // lost the connection; trying again with backoff
  SIGNED_OUT: "signed-out", // stopped, or no valid token: nothing more will happen
});

// Raised by getToken when there is no way to get a token (the user must sign in).
export class SignedOut extends Error {}

const CLOSE_AUTH_FAILED = 4401;

export class NotificationsClient {
  constructor({
    url,
    getToken,
    onEvent,
    onState = () => {},
    onGap = () => {},
    onFrame = () => {},
    after = null, // seq to start after; null means "from now" (load history over REST)
    backoffBaseMs = 500,
    backoffMaxMs = 30000,
    ackDelayMs = 1000,
    random = Math.random,
  }) {
    Object.assign(this, { url, getToken, onEvent, onState, onGap, onFrame });
    Object.assign(this, { backoffBaseMs, backoffMaxMs, ackDelayMs, random });
    this.lastSeq = after;
    this.state = State.SIGNED_OUT;
    this.ws = null;
    this.attempt = 0; // failed connections since the last hello
    this.tokenRefused = false; // the server closed with 4401: ask for a fresh token
    this.timers = { reconnect: null, ack: null, watchdog: null };
    this.acked = 0;
    this.awaitingResume = false;
    this.held = []; // live events that arrived while a resume was under way
    this.generation = 0; // bumped by each connect() and stop(); stale work checks it
  }

  start() {
    if (this.state !== State.SIGNED_OUT) return;
    this.stopped = false;
    this.setState(State.CONNECTING);
    this.connect();
  }

  // Close for good (log out). Sends what is left to ack first.
  stop() {
    this.stopped = true;
    this.generation += 1;
    this.flushAck();
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.setState(State.SIGNED_OUT);
  }

  // Give the live connection a refreshed access token so it outlives the old one.
  reauth(token) {
    this.send({ type: "auth", token });
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  async connect() {
    const generation = ++this.generation;
    let token;
    try {
      token = await this.getToken({ fresh: this.tokenRefused });
    } catch (error) {
      if (generation !== this.generation) return;
      if (error instanceof SignedOut) return this.stop();
      return this.reconnectLater(); // e.g. the refresh endpoint is unreachable
    }
    if (this.stopped || generation !== this.generation) return; // stopped (or restarted) meanwhile
    this.tokenRefused = false;
    // The token travels as a subprotocol, never in the URL (protocol section 2).
    const ws = new WebSocket(this.url, ["jwt", token]);
    this.ws = ws;
    this.heartbeatSeconds = 30;
    this.watch(); // a handshake that stalls counts as a dead connection too
    ws.onmessage = (message) => {
      if (ws === this.ws) this.receive(message.data);
    };
    ws.onclose = (close) => {
      if (ws === this.ws) this.closed(close.code, close.reason);
    };
  }

  receive(text) {
    this.watch();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case "hello":
        this.hello(frame);
        break;
      case "event":
        // Until the server has handled our resume, live events (seq >
        // hello.last_seq) may arrive before the replay of the older ones we
        // missed: hold them back, or the replay would look like duplicates.
        if (this.awaitingResume && frame.seq > this.helloSeq) this.held.push(frame);
        else this.deliver(frame);
        break;
      case "resumed":
        // The replay ran to resumed.last_seq; held events are at or below it
        // unless they are newer, and deliver() drops what is not.
        this.endResume();
        if (frame.truncated) this.onGap(frame); // the log no longer holds all we missed
        break;
      case "error":
        if (this.awaitingResume && frame.code === "invalid_message") {
          // Resume refused (too far behind): live events continue after
          // hello.last_seq; the caller reloads what is between from the API.
          this.lastSeq = this.helloSeq;
          this.endResume();
          this.onGap(frame);
        }
        break;
    }
    this.onFrame(frame);
  }

  // Pass an event on once, in seq order: anything at or below the last one
  // passed on is a duplicate (a resume may send again what was sent before).
  deliver(frame) {
    if (this.lastSeq !== null && frame.seq <= this.lastSeq) return;
    this.lastSeq = frame.seq;
    this.onEvent(frame);
    this.scheduleAck();
  }

  endResume() {
    this.awaitingResume = false;
    const held = this.held;
    this.held = [];
    for (const frame of held) this.deliver(frame);
  }

  hello(frame) {
    this.attempt = 0;
    this.heartbeatSeconds = frame.heartbeat_seconds;
    this.helloSeq = frame.last_seq;
    this.watch();
    if (this.lastSeq === null || this.lastSeq > frame.last_seq) {
      // First connection "from now", or a log that is behind us (it was reset):
      // everything after last_seq comes live without asking.
      if (this.lastSeq !== null) this.onGap(frame);
      this.lastSeq = frame.last_seq;
      this.acked = Math.min(this.acked, this.lastSeq);
    } else if (this.lastSeq < frame.last_seq) {
      // We missed lastSeq + 1 … last_seq while away: ask for them.
      this.awaitingResume = true;
      this.send({ type: "resume", after: this.lastSeq });
    }
    this.setState(State.LIVE);
  }

  closed(code, reason = "") {
    this.ws = null;
    this.awaitingResume = false;
    this.held = []; // the next connection's resume covers them
    clearTimeout(this.timers.ack);
    clearTimeout(this.timers.watchdog);
    this.timers.ack = this.timers.watchdog = null;
    if (this.stopped) return;
    if (code === CLOSE_AUTH_FAILED) this.tokenRefused = true;
    this.reconnectLater(retryAfterMs(reason, this.backoffMaxMs));
  }

  // Reconnect after the server's delay when it gave one (a stopping or busy
  // server spreads its clients out, protocol section 7), else after an
  // exponential backoff with full jitter, so a restarted server is not hit by
  // every client at the same instant.
  reconnectLater(delayMs = null) {
    if (this.stopped) return;
    this.setState(this.state === State.CONNECTING ? State.CONNECTING : State.RECONNECTING);
    const ceiling = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** this.attempt);
    this.attempt += 1;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => this.connect(), delayMs ?? this.random() * ceiling);
  }

  // No frame for two heartbeats: the connection is dead even if the socket
  // has not noticed. Drop it and reconnect.
  watch() {
    clearTimeout(this.timers.watchdog);
    this.timers.watchdog = setTimeout(() => {
      const ws = this.ws;
      if (!ws) return;
      this.closed(1006);
      ws.close();
    }, 2000 * this.heartbeatSeconds + 5000);
  }

  // Ack what has been shown, at most about once per ackDelayMs.
  scheduleAck() {
    if (this.timers.ack) return;
    this.timers.ack = setTimeout(() => {
      this.timers.ack = null;
      this.flushAck();
    }, this.ackDelayMs);
  }

  flushAck() {
    if (this.lastSeq !== null && this.lastSeq > this.acked && this.send({ type: "ack", seq: this.lastSeq })) {
      this.acked = this.lastSeq;
    }
  }

  clearTimers() {
    for (const name of Object.keys(this.timers)) {
      clearTimeout(this.timers[name]);
      this.timers[name] = null;
    }
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  }
}

// The delay a close reason asks for ({"retry_after": seconds}), in ms and at
// most maxMs; null when it asks for none.
export function retryAfterMs(reason, maxMs) {
  if (!reason) return null;
  let seconds;
  try {
    seconds = JSON.parse(reason)?.retry_after;
  } catch {
    return null;
  }
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return null;
  return Math.min(seconds * 1000, maxMs);
}
