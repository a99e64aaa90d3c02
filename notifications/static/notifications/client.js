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
    let token;
    try {
      token = await this.getToken({ fresh: this.tokenRefused });
    } catch (error) {
      if (error instanceof SignedOut) return this.stop();
      return this.reconnectLater(); // e.g. the refresh endpoint is unreachable
    }
    if (this.stopped) return;
    this.tokenRefused = false;
    // The token travels as a subprotocol, never in the URL (protocol section 2).
    const ws = new WebSocket(this.url, ["jwt", token]);
    this.ws = ws;
    this.heartbeatSeconds = 30;
    ws.onmessage = (message) => {
      if (ws === this.ws) this.receive(message.data);
    };
    ws.onclose = (close) => {
      if (ws === this.ws) this.closed(close.code);
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
        // A resume may send again what this connection already sent: drop it.
        if (this.lastSeq === null || frame.seq > this.lastSeq) {
          this.lastSeq = frame.seq;
          this.onEvent(frame);
          this.scheduleAck();
        }
        break;
      case "resumed":
        this.awaitingResume = false;
        if (frame.truncated) this.onGap(frame); // the log no longer holds all we missed
        break;
      case "error":
        if (this.awaitingResume && frame.code === "invalid_message") {
          // Resume refused (too far behind, or the log was reset): live events
          // continue after hello.last_seq; the caller reloads what is between.
          this.awaitingResume = false;
          this.lastSeq = this.helloSeq;
          this.onGap(frame);
        }
        break;
    }
    this.onFrame(frame);
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
    } else {
      this.awaitingResume = true;
      this.send({ type: "resume", after: this.lastSeq });
    }
    this.setState(State.LIVE);
  }

  closed(code) {
    this.ws = null;
    this.awaitingResume = false;
    clearTimeout(this.timers.ack);
    clearTimeout(this.timers.watchdog);
    this.timers.ack = this.timers.watchdog = null;
    if (this.stopped) return;
    if (code === CLOSE_AUTH_FAILED) this.tokenRefused = true;
    this.reconnectLater();
  }

  reconnectLater() {
    if (this.stopped) return;
    this.setState(this.state === State.CONNECTING ? State.CONNECTING : State.RECONNECTING);
    // Exponential backoff with full jitter, so a restarted server is not hit
    // by every client at the same instant.
    const ceiling = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** this.attempt);
    this.attempt += 1;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => this.connect(), this.random() * ceiling);
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
