// herald.js: the browser client of Herald, one dependency-free ES module.
//
// The gateway serves this file verbatim at `GET /herald.js`, so it imports nothing. It
// also runs on Node ≥ 20 when given a WebSocket class (`options.WebSocket`).
//
// Layout:
// - pure helpers, each exported so the behaviour they decide can be tested without a
//   socket: `backoffDelay`, `refreshDelay`, `decodeJwtPayload`, `unpackBatch`,
//   `classifyClose`, and `ChannelTracker` (exactly-once, in-order delivery per channel);
// - `Herald`, the connection: it feeds socket events to those helpers and does the I/O
//   (socket, timers, listeners) they ask for;
// - `Subscription`, the handle `Herald.subscribe` returns;
// - server-side subscriptions (made by the application's backend, or the personal
//   channel at login): kept by `Herald` itself, each with a `ChannelTracker` like a
//   subscription's, and delivered through the client's own events.
//
// Publishes and reads (history, presence, presence stats) are one-shot requests: a
// promise per call, sent after authentication, answered by the reply frame of the
// request's kind carrying the request's id.
//
// The wire protocol is described in docs/protocol.md of the Herald repository.

/** The WebSocket subprotocol that makes the gateway report handshake refusals as a
 * `disconnect` frame and a 4xxx close code instead of an HTTP status a browser cannot read. */
export const SUBPROTOCOL = "herald.v1";

/** Defaults of the tunable options; documented in README.md and herald.d.ts. */
export const DEFAULTS = Object.freeze({
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  stableAfter: 10000,
  publishTimeout: 10000,
  publishQueueSize: 100,
  connectTimeout: 15000,
  batch: false,
  debug: false,
});

/** What the gateway announces when `auth_success` lacks `heartbeat_interval_ms`. */
const DEFAULT_HEARTBEAT_MS = 25000;
/** Slack on top of two heartbeat intervals before a silent socket is declared dead: one
 * missed heartbeat is normal jitter, two plus a second are not. */
const HEARTBEAT_SLACK_MS = 1000;
/** Deliveries a tracker holds back while it waits for `subscribed` or a recovery. */
const TRACKER_BUFFER = 1000;
/** Attempts at a refused or failed token refresh before waiting for the server to end
 * the connection (`token_expired`) and reconnecting with a fresh token then. */
const REFRESH_ATTEMPTS = 5;
/** Browsers fire a timer at once when its delay does not fit in 32 bits (about 24.8
 * days), which a long-lived token's refresh easily reaches. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Error codes after which a `subscribe` is worth retrying. */
const RETRYABLE = new Set(["unavailable", "rate_limited", "internal"]);
/** Frame types that are channel deliveries (carry `channel`, `offset`, `epoch`). */
const DELIVERY_TYPES = new Set(["message", "system_notification", "user_message", "processing_result"]);
/** Presence events: no offset, so they never go through a subscription's tracker. */
const PRESENCE_EVENTS = new Set(["join", "leave"]);

// === errors ===

/** The rejection of a publish or a read (history, presence, presence stats), or a
 * refused request: `code` is the server's error code or one of the client's own
 * (`queue_full`, `timeout`, `disconnected`, `closed`, `protocol`). */
export class HeraldError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "HeraldError";
    this.code = code;
    if (details.channel !== undefined) this.channel = details.channel;
    if (details.retryAfterMs !== undefined) this.retryAfterMs = details.retryAfterMs;
  }
}

// === pure helpers ===

/**
 * Reconnect delay before attempt number `attempt` (0 for the first retry): exponential
 * with full jitter, `random() * min(max, min * 2^attempt)`. Full jitter spreads the
 * clients of a failed gateway evenly instead of sending them back in waves.
 */
export function backoffDelay(attempt, { min, max }, random = Math.random) {
  const ceiling = Math.min(max, min * 2 ** Math.min(Math.max(0, attempt), 30));
  return random() * ceiling;
}

/** The payload of a JWT, decoded but not verified (the gateway verifies it); null when
 * `token` is not a JWT. */
export function decodeJwtPayload(token) {
  if (typeof token !== "string") return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return payload && typeof payload === "object" ? payload : null;
  } catch {
    return null;
  }
}

/**
 * How long after obtaining `token` (at `nowMs`, the client's clock) it should be
 * refreshed, in ms; null when it has no `exp` or has already expired.
 *
 * The lifetime is `exp − iat`, measured entirely on the issuer's clock, so a browser
 * whose clock is off by minutes still refreshes on time; only without `iat` does it
 * fall back to `exp − now`. The refresh comes a margin before the end, `lifetime / 5`
 * clamped to 1–60 s, one more second because `iat` and `exp` are whole seconds (a token
 * issued at 12.9 s says `iat` 12), and never earlier than half the lifetime, so a very
 * short-lived token cannot make the client refresh in a tight loop.
 */
export function refreshDelay(token, nowMs) {
  const claims = decodeJwtPayload(token);
  if (!claims || typeof claims.exp !== "number") return null;
  const lifetime =
    typeof claims.iat === "number" ? (claims.exp - claims.iat) * 1000 : claims.exp * 1000 - nowMs;
  if (!(lifetime > 0)) return null;
  const margin = Math.min(Math.max(lifetime / 5, 1000), 60000) + 1000;
  return Math.max(lifetime - margin, lifetime / 2);
}

/** The channel deliveries a frame carries: the inner frames of a `batch_messages`, in
 * order, or the frame itself. Batches never nest, so an inner batch is dropped. */
export function unpackBatch(frame) {
  if (!frame || typeof frame !== "object") return [];
  if (frame.type !== "batch_messages") return [frame];
  if (!Array.isArray(frame.messages)) return [];
  return frame.messages.filter((m) => m && typeof m === "object" && m.type !== "batch_messages");
}

/**
 * What to do after a socket closed with `code`/`reason`, given the `disconnect` frame
 * that preceded it (or null) and whether a `getToken` function can supply a new token.
 * Returns `{ reconnect, minDelay, authFailure }`: `authFailure` marks a refused
 * first-frame token, which the caller retries once with a fresh token at most.
 */
export function classifyClose(code, reason, disconnect, canRefresh) {
  const retry = (minDelay = 0) => ({ reconnect: true, minDelay, authFailure: false });
  const stop = { reconnect: false, minDelay: 0, authFailure: false };
  if (disconnect && typeof disconnect === "object") {
    const after = Number(disconnect.retry_after_ms) || 0;
    if (disconnect.reconnect === true) return retry(after);
    // The one refusal a fresh token cures.
    if (disconnect.code === "token_expired" && canRefresh) return retry();
    return stop;
  }
  // A refusal whose `disconnect` frame was lost: the close code alone decides.
  if (code === 4401 || code === 4403) return stop;
  if (code === 4429 || code === 4503) return retry(1000);
  if (code === 1008) {
    if (reason === "authentication failed") {
      return { reconnect: canRefresh, minDelay: 0, authFailure: true };
    }
    if (reason === "authentication timeout") return retry();
    if (reason === "token expired" && canRefresh) return retry();
    return stop;
  }
  // No frame, an abnormal close (1006), a server going away, a heartbeat timeout.
  return retry();
}

function isPosition(p) {
  return (
    p !== null &&
    typeof p === "object" &&
    Number.isSafeInteger(p.offset) &&
    p.offset >= 0 &&
    typeof p.epoch === "string"
  );
}

function samePosition(a, b) {
  return a.offset === b.offset && a.epoch === b.epoch;
}

// === impl ChannelTracker ===

/**
 * Offset bookkeeping of one channel subscription: decides which deliveries reach the
 * app (each offset once, in order) and when to ask the server to replay what is
 * missing. It does no I/O; `Herald` feeds it and acts on its answers.
 *
 * `position` is the last delivery handed to the app (`{offset, epoch}`), or null before
 * the first `subscribed` of a subscription made without `since`. Each call returns a
 * step `{ deliver, gap, recover }`: the frames to hand to the app in order, a gap to
 * report (`{from, to, reason}`) or null, and whether to send a `subscribe` with
 * `since: request()` now.
 */
export class ChannelTracker {
  #position;
  #bufferSize;
  /** Deliveries that cannot be handed over yet (ahead of the position, another epoch,
   * or before the first `subscribed`), in arrival order. */
  #held = [];
  /** Held deliveries were dropped for lack of room: recover them from history. */
  #overflowed = false;
  /** A `subscribe` is in flight: its reply, not another request, fills any gap. */
  #inFlight = false;
  /** The last recovery claimed success yet left the position behind; a second such
   * answer in a row is reported as a gap instead of asked again, so a server that
   * cannot replay cannot keep the client asking forever. */
  #incompleteOnce = false;

  constructor({ since = null, bufferSize = TRACKER_BUFFER } = {}) {
    if (since !== null && since !== undefined && !isPosition(since)) {
      throw new TypeError("since must be {offset: integer >= 0, epoch: string}");
    }
    this.#position = since ? { offset: since.offset, epoch: since.epoch } : null;
    this.#bufferSize = bufferSize;
  }

  /** The last position handed to the app, or null. */
  get position() {
    return this.#position ? { ...this.#position } : null;
  }

  /** Whether a `subscribe` is in flight. */
  get inFlight() {
    return this.#inFlight;
  }

  /** Deliveries held back, waiting for `subscribed` or a replay. */
  get held() {
    return this.#held.length;
  }

  /** Marks a `subscribe` as sent and returns the `since` it must carry (null: none). */
  request() {
    this.#inFlight = true;
    return this.position;
  }

  /** The connection is gone: nothing is in flight, and what was held will be replayed
   * (or reported as a gap) after the next `subscribe` with `since`. */
  reset() {
    this.#inFlight = false;
    this.#held = [];
    this.#overflowed = false;
  }

  /** A channel delivery arrived. */
  delivery(frame) {
    const step = { deliver: [], gap: null, recover: false };
    if (!frame || !Number.isSafeInteger(frame.offset) || typeof frame.epoch !== "string") {
      return step;
    }
    if (this.#position === null) {
      this.#hold(frame);
      return step;
    }
    if (this.#apply(frame, step.deliver) === "ahead") {
      this.#hold(frame);
      step.recover = !this.#inFlight;
    }
    return step;
  }

  /** The reply to the `subscribe` in flight arrived. */
  subscribed(frame) {
    const step = { deliver: [], gap: null, recover: false };
    this.#inFlight = false;
    if (!frame || !Number.isSafeInteger(frame.offset) || typeof frame.epoch !== "string") {
      return step;
    }
    const to = { offset: frame.offset, epoch: frame.epoch };
    const from = this.#position;
    if (from === null) {
      // A fresh subscription: live delivery starts after the channel's current offset.
      this.#position = to;
    } else if (frame.recovered === true && from.epoch === to.epoch && from.offset < to.offset) {
      // Claimed recovered, yet the replay did not reach the channel's offset.
      if (this.#incompleteOnce) {
        this.#incompleteOnce = false;
        step.gap = { from: { ...from }, to: { ...to }, reason: "incomplete_recovery" };
        this.#position = to;
      } else {
        this.#incompleteOnce = true;
        step.recover = true;
      }
    } else if (frame.recovered === true && from.epoch === to.epoch) {
      this.#incompleteOnce = false;
    } else if (frame.recovered === false || from.epoch !== to.epoch || from.offset < to.offset) {
      // History could not fill what was missed (or `recovered` is missing where it
      // should be): report the hole and go on live from the channel's position.
      this.#incompleteOnce = false;
      if (!samePosition(from, to)) {
        const reason = from.epoch !== to.epoch ? "epoch_changed" : "not_recovered";
        step.gap = { from: { ...from }, to: { ...to }, reason };
      }
      this.#position = to;
    }
    // Whatever was held is judged again against the new position.
    const held = this.#held;
    this.#held = [];
    for (const f of held) {
      if (this.#apply(f, step.deliver) === "ahead") this.#hold(f);
    }
    if (this.#held.length > 0 || this.#overflowed) step.recover = true;
    this.#overflowed = false;
    return step;
  }

  /** Hands `frame` over if it is next, drops it if already handed over; "ahead" when
   * it is beyond the next offset or of another epoch. */
  #apply(frame, out) {
    const pos = this.#position;
    if (frame.epoch !== pos.epoch) return "ahead";
    if (frame.offset <= pos.offset) return "duplicate";
    if (frame.offset > pos.offset + 1) return "ahead";
    out.push(frame);
    this.#position = { offset: frame.offset, epoch: frame.epoch };
    this.#drainHeld(out);
    return "delivered";
  }

  /** After an advance, held deliveries that now follow on are handed over too, and
   * the ones already covered dropped. */
  #drainHeld(out) {
    let progressed = true;
    while (progressed && this.#held.length > 0) {
      progressed = false;
      const pos = this.#position;
      const keep = [];
      for (const f of this.#held) {
        if (f.epoch === pos.epoch && f.offset <= this.#position.offset) continue;
        if (f.epoch === pos.epoch && f.offset === this.#position.offset + 1) {
          out.push(f);
          this.#position = { offset: f.offset, epoch: f.epoch };
          progressed = true;
          continue;
        }
        keep.push(f);
      }
      this.#held = keep;
    }
  }

  #hold(frame) {
    if (this.#overflowed) return;
    if (this.#held.length >= this.#bufferSize) {
      // Holding more would grow without bound; history has them all anyway.
      this.#held = [];
      this.#overflowed = true;
      return;
    }
    this.#held.push(frame);
  }
}

// === internals ===

/** Listener sets per event name. A listener that throws is reported (as an uncaught
 * error would be) without breaking the client or the other listeners. */
class Emitter {
  #handlers = new Map();

  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    let set = this.#handlers.get(event);
    if (!set) this.#handlers.set(event, (set = new Set()));
    set.add(fn);
  }

  off(event, fn) {
    const set = this.#handlers.get(event);
    if (!set) return;
    set.delete(fn);
    if (set.size === 0) this.#handlers.delete(event);
  }

  has(event) {
    return this.#handlers.has(event);
  }

  emit(event, value) {
    const set = this.#handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (e) {
        if (typeof globalThis.reportError === "function") globalThis.reportError(e);
        else console.error(e);
      }
    }
  }

  clear() {
    this.#handlers.clear();
  }
}

/** Every timer of one client, so that stopping it can cancel them all: a stopped
 * client leaves nothing scheduled (and lets a Node process exit). */
class Timers {
  #clock;
  #live = new Set();

  constructor(clock) {
    this.#clock = clock;
  }

  after(ms, fn) {
    const handle = { id: null };
    const delay = Math.min(Math.max(0, ms), MAX_TIMER_MS);
    handle.id = this.#clock.setTimeout(() => {
      this.#live.delete(handle);
      fn();
    }, delay);
    this.#live.add(handle);
    return handle;
  }

  /** Cancels `handle` (if any); returns null, to be assigned back. */
  cancel(handle) {
    if (handle && this.#live.delete(handle)) this.#clock.clearTimeout(handle.id);
    return null;
  }

  clear() {
    for (const h of this.#live) this.#clock.clearTimeout(h.id);
    this.#live.clear();
  }

  get size() {
    return this.#live.size;
  }
}

const noop = () => {};

function detach(ws) {
  // Not null: some Node WebSocket classes throw on an `error` event nobody listens to.
  ws.onopen = noop;
  ws.onmessage = noop;
  ws.onclose = noop;
  ws.onerror = noop;
}

/** The app's view of a presence member (an entry of a `presence` answer, or the
 * subject of a `join`/`leave`): `{userId, connId, info?}`, named like the rest of the
 * client's own objects; null when `m` lacks the ids. */
function toMember(m) {
  if (!m || typeof m !== "object" || typeof m.user_id !== "string" || typeof m.conn_id !== "string") {
    return null;
  }
  const member = { userId: m.user_id, connId: m.conn_id };
  // Absent when the member's token had no `info` claim.
  if (m.info !== undefined && m.info !== null) member.info = m.info;
  return member;
}

/** The app's view of a delivery frame. */
function toMessage(f) {
  let data;
  let fromUser;
  switch (f.type) {
    case "message":
      data = f.message;
      fromUser = f.from_user;
      break;
    case "system_notification":
      data = f.message;
      break;
    case "user_message":
      data = f.content;
      fromUser = f.user_id;
      break;
    case "processing_result":
      data = { job_id: f.job_id, job_type: f.job_type, status: f.status, result: f.result };
      break;
  }
  return {
    channel: f.channel,
    type: f.type,
    data,
    offset: f.offset,
    epoch: f.epoch,
    timestamp: f.timestamp,
    fromUser,
    frame: f,
  };
}

// === impl Subscription ===

/** One channel subscription; made by `Herald.subscribe`. Its internal record (tracker,
 * request in flight, retry timer) lives with the `Herald`. */
export class Subscription {
  #record;

  /** @internal */
  constructor(record) {
    this.#record = record;
  }

  get channel() {
    return this.#record.channel;
  }

  /** `{offset, epoch}` of the last message handed to the app, or null. */
  get position() {
    return this.#record.tracker.position;
  }

  /** "subscribing" until the server confirms (again after each reconnect),
   * "subscribed", then "closed" once unsubscribed, refused, or ended by the backend. */
  get state() {
    return this.#record.state;
  }

  on(event, fn) {
    this.#record.emitter.on(event, fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#record.emitter.off(event, fn);
  }

  unsubscribe() {
    this.#record.unsubscribe();
  }
}

// === impl Herald ===

export class Herald {
  #urls;
  #urlIndex = 0;
  #opts;
  #WebSocket;
  #clock;
  #random;
  #network;
  #timers;
  #emitter = new Emitter();

  #state = "connecting";
  /** Stopped for good (by `close()` or a final refusal) until `connect()`. */
  #stopped = false;
  /** Bumped whenever an attempt is abandoned, so a late token or socket is ignored. */
  #generation = 0;
  /** The current socket and what belongs to it, or null. */
  #conn = null;
  #nextId = 1;
  #attempt = 0;
  /** A refused first-frame token was already retried with a fresh one. */
  #authRetried = false;
  #reconnectTimer = null;
  #stableTimer = null;
  #refreshTimer = null;
  #refreshFailures = 0;

  #token = null;
  /** When the client obtained `#token` (its own clock). */
  #tokenAt = 0;
  /** The `getToken` call in flight, shared so it is never called twice at once (a
   * refresh token that works once must not be presented twice). */
  #tokenPromise = null;

  /** channel → subscription record. */
  #subs = new Map();
  /** channel → server-side subscription entry: one the backend made and the app has
   * no subscription of its own for. Kept across reconnects, so that its position can
   * be recovered when the server subscribes the connection again. */
  #serverSubs = new Map();
  /** Publishes and reads not yet settled, queued or sent, in call order. */
  #pending = new Set();

  #onOnline = () => this.#online();
  #onOffline = () => this.#offline();

  constructor(urls, options = {}) {
    const list = typeof urls === "string" ? [urls] : Array.isArray(urls) ? [...urls] : [];
    if (list.length === 0 || !list.every((u) => typeof u === "string" && u)) {
      throw new TypeError("Herald needs a gateway URL or a non-empty array of them");
    }
    if (typeof options.getToken !== "function" && typeof options.token !== "string") {
      throw new TypeError("Herald needs a token or a getToken function");
    }
    this.#urls = list;
    this.#opts = { ...DEFAULTS };
    for (const [key, value] of Object.entries(options)) {
      if (value !== undefined) this.#opts[key] = value;
    }
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("no WebSocket class: pass one as options.WebSocket");
    }
    this.#clock = options.clock ?? {
      now: () => Date.now(),
      setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
      clearTimeout: (id) => globalThis.clearTimeout(id),
    };
    this.#random = options.random ?? Math.random;
    // `null` turns the events off; only a missing option means the default.
    this.#network =
      options.networkEvents !== undefined
        ? options.networkEvents
        : typeof globalThis.addEventListener === "function"
          ? globalThis
          : null;
    this.#timers = new Timers(this.#clock);
    if (typeof options.token === "string") {
      this.#token = options.token;
      this.#tokenAt = this.#clock.now();
    }
    this.#listenNetwork(true);
    // Started a microtask later, so that listeners attached right after construction
    // see the first "connecting".
    queueMicrotask(() => {
      if (!this.#stopped && this.#generation === 0) this.#attemptConnect();
    });
  }

  /** "connecting", "connected" or "disconnected". */
  get state() {
    return this.#state;
  }

  on(event, fn) {
    this.#emitter.on(event, fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#emitter.off(event, fn);
  }

  /** The server-side subscriptions the client keeps: `{channel, position, live}`,
   * `live` when the server confirmed it on the current connection. */
  get serverSubscriptions() {
    return [...this.#serverSubs.values()].map((entry) => ({
      channel: entry.channel,
      position: entry.handed && { ...entry.handed },
      live: entry.conn !== null && entry.conn === this.#conn,
    }));
  }

  /** Starts again after a stop (`close()` or a final refusal); a no-op otherwise. */
  connect() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#attempt = 0;
    this.#authRetried = false;
    this.#listenNetwork(true);
    this.#attemptConnect();
  }

  /** Stops for good: closes the socket, rejects every pending publish and read with
   * `closed` and cancels every timer. `connect()` starts again. */
  close() {
    if (this.#stopped) return;
    const conn = this.#conn;
    if (conn) {
      detach(conn.ws);
      try {
        conn.ws.close(1000, "client closed");
      } catch {
        // Already closed.
      }
      this.#teardown(conn, "closed");
    }
    this.#stop({ state: "disconnected", code: "closed", reason: "closed by the client", reconnect: false });
  }

  subscribe(channel, options = {}) {
    if (typeof channel !== "string" || channel === "") {
      throw new TypeError("channel must be a non-empty string");
    }
    if (this.#subs.has(channel)) {
      throw new HeraldError("already_subscribed", `already subscribed to ${channel}`, { channel });
    }
    const joinLeave = options.joinLeave ?? false;
    if (typeof joinLeave !== "boolean") throw new TypeError("joinLeave must be a boolean");
    // A server-side subscription of the channel is taken over: by default the app's
    // subscription goes on after its last publication, so nothing falls between the two.
    const server = this.#serverSubs.get(channel);
    const tracker = new ChannelTracker({ since: options.since ?? server?.handed ?? null });
    if (server) this.#dropServer(server);
    const record = {
      channel,
      tracker,
      /** Every `subscribe` for it carries `join_leave`: one without would stop the
       * events on the server. */
      joinLeave,
      emitter: new Emitter(),
      state: "subscribing",
      /** Id of the `subscribe` in flight. */
      requestId: null,
      /** The connection the server knows this subscription on. */
      conn: null,
      retries: 0,
      retryTimer: null,
      closed: false,
      sub: null,
      unsubscribe: () => this.#unsubscribe(record),
    };
    record.sub = new Subscription(record);
    this.#subs.set(channel, record);
    if (this.#conn?.authed) this.#sendSubscribe(record);
    return record.sub;
  }

  /** What every request checks before it is queued: false (and `reject` called) when
   * the client is closed or the channel is no channel name. */
  #admit(channel, reject) {
    if (this.#stopped) {
      reject(new HeraldError("closed", "the client is closed"));
      return false;
    }
    if (typeof channel !== "string" || channel === "") {
      reject(new TypeError("channel must be a non-empty string"));
      return false;
    }
    return true;
  }

  publish(channel, message) {
    return new Promise((resolve, reject) => {
      if (!this.#admit(channel, reject)) return;
      this.#enqueue({ kind: "publish", channel, message: message === undefined ? null : message, resolve, reject });
    });
  }

  /** Reads the messages `channel` keeps, without subscribing. Waits for the connection
   * like a publish does, under the same `publishTimeout` and `publishQueueSize`. */
  history(channel, options = {}) {
    return new Promise((resolve, reject) => {
      if (!this.#admit(channel, reject)) return;
      if (options === null || typeof options !== "object") {
        reject(new TypeError("history options must be an object"));
        return;
      }
      const since = options.since ?? null;
      const limit = options.limit ?? null;
      const reverse = options.reverse ?? false;
      if (since !== null && !isPosition(since)) {
        reject(new TypeError("since must be {offset: integer >= 0, epoch: string}"));
        return;
      }
      // The server refuses 0 too (`bad_request`); caught here, it never costs a frame.
      if (limit !== null && !(Number.isSafeInteger(limit) && limit > 0)) {
        reject(new TypeError("limit must be a positive integer"));
        return;
      }
      if (typeof reverse !== "boolean") {
        reject(new TypeError("reverse must be a boolean"));
        return;
      }
      this.#enqueue({
        kind: "history",
        channel,
        // A copy: the caller may reuse its object before the request is sent.
        since: since && { offset: since.offset, epoch: since.epoch },
        limit,
        reverse,
        resolve,
        reject,
      });
    });
  }

  /** Lists the connections subscribed to `channel`, on every gateway, without
   * subscribing. A read like `history()`: same queue, deadline and refusals. */
  presence(channel) {
    return new Promise((resolve, reject) => {
      if (!this.#admit(channel, reject)) return;
      this.#enqueue({ kind: "presence", channel, resolve, reject });
    });
  }

  /** Counts the connections and distinct users subscribed to `channel`. A read like
   * `history()`. */
  presenceStats(channel) {
    return new Promise((resolve, reject) => {
      if (!this.#admit(channel, reject)) return;
      this.#enqueue({ kind: "presence_stats", channel, resolve, reject });
    });
  }

  /** Queues a request (`kind` "publish", or a read: "history", "presence",
   * "presence_stats"), publishes and reads bounded apart so that reads never crowd out
   * publishes, with its deadline; sends it at once when authenticated. */
  #enqueue(entry) {
    const isPublish = entry.kind === "publish";
    let waiting = 0;
    for (const e of this.#pending) if ((e.kind === "publish") === isPublish) waiting++;
    if (waiting >= this.#opts.publishQueueSize) {
      const what = isPublish ? "publishes" : "reads";
      entry.reject(new HeraldError("queue_full", `too many ${what} waiting to be sent or answered`));
      return;
    }
    entry.id = null;
    entry.conn = null;
    entry.timer = this.#timers.after(this.#opts.publishTimeout, () => {
      entry.timer = null;
      const message =
        entry.kind === "publish" ? "no acknowledgement in time; it may or may not have been published" : "no answer in time";
      this.#settle(entry, new HeraldError("timeout", message));
    });
    this.#pending.add(entry);
    if (this.#conn?.authed) this.#sendRequest(this.#conn, entry);
  }

  // --- connecting ---

  async #attemptConnect() {
    this.#reconnectTimer = this.#timers.cancel(this.#reconnectTimer);
    const generation = ++this.#generation;
    const url = this.#urls[this.#urlIndex];
    this.#setState({ state: "connecting", url });
    let token;
    try {
      token = await this.#fetchToken();
    } catch (e) {
      if (generation !== this.#generation || this.#stopped) return;
      const message = `getToken failed: ${e?.message ?? e}`;
      this.#report({ code: "token_error", message });
      this.#scheduleReconnect({ state: "disconnected", code: "token_error", reason: message }, 0);
      return;
    }
    if (generation !== this.#generation || this.#stopped) return;
    let ws;
    try {
      ws = new this.#WebSocket(url, [SUBPROTOCOL]);
    } catch (e) {
      const message = `cannot open ${url}: ${e?.message ?? e}`;
      this.#report({ code: "transport", message });
      this.#scheduleReconnect({ state: "disconnected", code: "transport", reason: message }, 0);
      return;
    }
    const conn = {
      ws,
      url,
      token,
      authId: null,
      authed: false,
      /** The `disconnect` frame that explains the coming close. */
      disconnect: null,
      heartbeatMs: DEFAULT_HEARTBEAT_MS,
      lastFrameAt: 0,
      watchdog: null,
      connectTimer: null,
      /** id → the request it answers: {kind, record | entry | channel}. */
      requests: new Map(),
      /** channel → `unsubscribe` frames sent and not yet answered: deliveries the
       * server sent before it saw them are dropped. */
      leaving: new Map(),
      /** channel → deliveries on a channel the client holds nothing for: the replay of
       * a server-side subscription, which comes before its `subscribed`.
       * `{epoch, low, frames}`: `low` is the lowest offset seen, kept or not. */
      orphans: new Map(),
      /** Deliveries held in `orphans`, all channels together. */
      orphanCount: 0,
    };
    this.#conn = conn;
    ws.onopen = () => this.#conn === conn && this.#onOpen(conn);
    ws.onmessage = (ev) => this.#conn === conn && this.#onData(conn, ev.data);
    ws.onclose = (ev) => this.#conn === conn && this.#onClose(conn, ev.code, ev.reason);
    ws.onerror = noop; // A close event follows and says more.
    conn.connectTimer = this.#timers.after(this.#opts.connectTimeout, () => {
      conn.connectTimer = null;
      this.#abandon(conn, 4000, "connect timeout");
    });
  }

  #fetchToken() {
    const getToken = this.#opts.getToken;
    if (typeof getToken !== "function") return Promise.resolve(this.#token);
    if (!this.#tokenPromise) {
      const p = (async () => {
        try {
          const token = await getToken();
          if (typeof token !== "string" || token === "") {
            throw new TypeError("getToken must resolve to a non-empty string");
          }
          if (token !== this.#token) {
            this.#token = token;
            this.#tokenAt = this.#clock.now();
          }
          return token;
        } finally {
          if (this.#tokenPromise === p) this.#tokenPromise = null;
        }
      })();
      this.#tokenPromise = p;
    }
    return this.#tokenPromise;
  }

  #onOpen(conn) {
    conn.authId = this.#nextId++;
    // Subscriptions go in explicit `subscribe` frames after `auth_success`, each with
    // its own `since`, rather than in this frame's `channels`.
    this.#send(conn, { type: "auth", token: conn.token, batch: !!this.#opts.batch, id: conn.authId });
  }

  #onAuthenticated(conn, frame) {
    conn.authed = true;
    conn.connectTimer = this.#timers.cancel(conn.connectTimer);
    const hb = frame.heartbeat_interval_ms;
    conn.heartbeatMs = Number.isFinite(hb) && hb > 0 ? hb : DEFAULT_HEARTBEAT_MS;
    conn.lastFrameAt = this.#clock.now();
    this.#armWatchdog(conn, 2 * conn.heartbeatMs + HEARTBEAT_SLACK_MS);
    this.#authRetried = false;
    // Reset only once the connection has proved stable: a server that accepts and
    // drops at once must not get a tight reconnect loop.
    this.#stableTimer = this.#timers.cancel(this.#stableTimer);
    this.#stableTimer = this.#timers.after(this.#opts.stableAfter, () => {
      this.#stableTimer = null;
      this.#attempt = 0;
    });
    this.#refreshFailures = 0;
    this.#scheduleRefresh();
    this.#state = "connected";
    for (const record of this.#subs.values()) this.#sendSubscribe(record);
    for (const entry of this.#pending) {
      if (!entry.conn) this.#sendRequest(conn, entry);
    }
    this.#log("connected to", conn.url);
    this.#setState({
      state: "connected",
      url: conn.url,
      userId: frame.user_id,
      connId: frame.conn_id,
      node: frame.node,
    });
  }

  // --- frames ---

  #onData(conn, data) {
    conn.lastFrameAt = this.#clock.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      frame = null;
    }
    if (!frame || typeof frame !== "object" || Array.isArray(frame)) {
      this.#report({ code: "protocol", message: "the server sent a frame that is not a JSON object" });
      return;
    }
    switch (frame.type) {
      case "auth_success":
        if (!conn.authed) this.#onAuthenticated(conn, frame);
        else this.#onReauthenticated(conn, frame);
        break;
      case "disconnect":
        conn.disconnect = frame;
        break;
      case "subscribed":
        this.#onSubscribed(conn, frame);
        break;
      case "unsubscribed":
        this.#onUnsubscribed(conn, frame);
        break;
      case "ack":
        this.#onAck(conn, frame);
        break;
      case "history":
        this.#onHistory(conn, frame);
        break;
      case "presence":
        this.#onPresence(conn, frame);
        break;
      case "presence_stats":
        this.#onPresenceStats(conn, frame);
        break;
      case "join":
      case "leave":
        this.#onPresenceEvent(conn, frame);
        break;
      case "error":
        this.#onErrorFrame(conn, frame);
        break;
      case "batch_messages":
        for (const f of unpackBatch(frame)) {
          if (DELIVERY_TYPES.has(f.type)) this.#onDelivery(conn, f);
          // The gateway never batches events; one that is batched is still an event.
          else if (PRESENCE_EVENTS.has(f.type)) this.#onPresenceEvent(conn, f);
        }
        break;
      case "heartbeat":
      case "pong":
        break;
      default:
        if (DELIVERY_TYPES.has(frame.type)) this.#onDelivery(conn, frame);
        else this.#log("ignored frame", frame.type);
    }
  }

  #onDelivery(conn, frame) {
    // A delivery before `auth_success` cannot happen; one after is only trusted on an
    // authenticated connection.
    if (!conn.authed) return;
    const record = this.#subs.get(frame.channel);
    if (record) {
      this.#applyStep(conn, record, record.tracker.delivery(frame));
      return;
    }
    const entry = this.#serverSubs.get(frame.channel);
    if (entry) {
      this.#handOver(conn, entry, entry.tracker.delivery(frame));
      return;
    }
    // Sent before the server saw our `unsubscribe`.
    if (conn.leaving.has(frame.channel)) return;
    this.#holdOrphan(conn, frame);
  }

  #onSubscribed(conn, frame) {
    const req = frame.id !== undefined ? conn.requests.get(frame.id) : undefined;
    if (!req) {
      if (frame.server === true) this.#onServerSubscribed(conn, frame);
      return;
    }
    if (req.kind === "server_subscribe") {
      this.#onServerRenewed(conn, req.entry, frame);
      return;
    }
    if (req.kind !== "subscribe") return;
    conn.requests.delete(frame.id);
    const record = req.record;
    if (record.closed || record.requestId !== frame.id) return;
    record.requestId = null;
    record.retries = 0;
    record.state = "subscribed";
    const step = record.tracker.subscribed(frame);
    if (step.gap) {
      this.#log("gap on", record.channel, step.gap);
      record.emitter.emit("gap", { channel: record.channel, ...step.gap });
    }
    record.emitter.emit("subscribed", {
      channel: record.channel,
      offset: frame.offset,
      epoch: frame.epoch,
      recovered: frame.recovered,
    });
    this.#applyStep(conn, record, step);
  }

  /** A `join` or `leave`: handed to the subscription that asked for them, and nothing
   * else. Events have no offset, so the tracker and the position never see them. */
  #onPresenceEvent(conn, frame) {
    if (!conn.authed) return;
    const record = this.#subs.get(frame.channel);
    if (!record || record.closed || !record.joinLeave) return;
    const member = toMember(frame);
    if (!member) {
      this.#log("ignored malformed", frame.type);
      return;
    }
    record.emitter.emit(frame.type, { channel: record.channel, ...member });
  }

  #applyStep(conn, record, step) {
    for (const f of step.deliver) {
      if (record.closed) return;
      record.emitter.emit("message", toMessage(f));
    }
    if (step.recover && !record.closed && this.#conn === conn && record.requestId === null) {
      this.#sendSubscribe(record);
    }
  }

  // --- server-side subscriptions ---

  /** `unsubscribed`: the answer to an `unsubscribe` of ours, or the backend ending a
   * subscription (`server: true`). */
  #onUnsubscribed(conn, frame) {
    const req = frame.id !== undefined ? conn.requests.get(frame.id) : undefined;
    if (req) {
      conn.requests.delete(frame.id);
      if (req.kind !== "unsubscribe") return;
      this.#left(conn, req.channel);
      // The backend subscribed the connection again while the `unsubscribe` was on its
      // way, and the `unsubscribe` ended that too.
      const entry = this.#serverSubs.get(req.channel);
      if (entry) {
        this.#dropServer(entry);
        this.#emitter.emit("serverUnsubscribed", { channel: req.channel });
      }
      return;
    }
    if (frame.server !== true || !conn.authed || typeof frame.channel !== "string") return;
    const channel = frame.channel;
    this.#dropOrphans(conn, channel);
    const record = this.#subs.get(channel);
    if (record) {
      // A `subscribe` of the app's in flight reaches the server after this, and
      // subscribes the channel again: its answer settles the subscription.
      if (record.requestId !== null) return;
      this.#dropRecord(record);
      record.state = "closed";
      record.emitter.emit("unsubscribed", { channel });
      record.emitter.clear();
      return;
    }
    const entry = this.#serverSubs.get(channel);
    if (!entry) return;
    this.#dropServer(entry);
    this.#emitter.emit("serverUnsubscribed", { channel });
  }

  /** `subscribed` with `server: true`: the backend subscribed the connection (or the
   * gateway did, to the personal channel at login). */
  #onServerSubscribed(conn, frame) {
    const channel = frame.channel;
    if (!conn.authed) return;
    if (typeof channel !== "string" || channel === "" || !Number.isSafeInteger(frame.offset) || typeof frame.epoch !== "string") {
      this.#log("ignored malformed subscribed");
      return;
    }
    const record = this.#subs.get(channel);
    if (record) {
      // The app's own subscription holds the channel; the backend's only confirms it,
      // and the deliveries keep going through the subscription's tracker. But a
      // subscribe without `join_leave` turns the events off on the server: a
      // subscription that asked for them asks again (one in flight asks anyway).
      this.#dropOrphans(conn, channel);
      if (record.joinLeave && record.conn === conn && record.requestId === null && record.retryTimer === null) {
        this.#sendSubscribe(record);
      }
      return;
    }
    const to = { offset: frame.offset, epoch: frame.epoch };
    let entry = this.#serverSubs.get(channel);
    let step;
    if (!entry) {
      const orphans = conn.orphans.get(channel);
      this.#dropOrphans(conn, channel);
      // With `recovered: true` the deliveries held for the channel are the backend's
      // replay: delivery starts right before the first of them. Otherwise it starts
      // after the channel's offset, as for a subscription made without `since`.
      const since =
        frame.recovered === true && orphans && orphans.epoch === to.epoch
          ? { offset: Math.max(0, orphans.low - 1), epoch: to.epoch }
          : null;
      entry = { channel, tracker: new ChannelTracker({ since }), handed: null, conn, requestId: null, retries: 0, retryTimer: null };
      this.#serverSubs.set(channel, entry);
      entry.tracker.request();
      const deliver = [];
      for (const f of orphans?.frames ?? []) deliver.push(...entry.tracker.delivery(f).deliver);
      step = entry.tracker.subscribed(frame);
      step.deliver.unshift(...deliver);
    } else {
      entry.conn = conn;
      const pos = entry.tracker.position;
      if (entry.requestId !== null || entry.retryTimer !== null) {
        // A renewal of ours is on its way: its answer settles the position.
        step = { deliver: [], gap: null, recover: false };
      } else if (pos && pos.epoch === to.epoch && pos.offset < to.offset) {
        // Published while the connection was away (or left out of the backend's own
        // replay): recovered from history, as the tracker recovers any gap.
        step = { deliver: [], gap: null, recover: true };
      } else {
        // Another epoch is a gap; the same position (or one ahead) nothing to do.
        entry.tracker.request();
        step = entry.tracker.subscribed(to);
      }
    }
    this.#startStep(entry, step);
    if (step.gap) this.#emitGap(channel, step.gap);
    this.#emitter.emit("serverSubscribed", {
      channel,
      offset: frame.offset,
      epoch: frame.epoch,
      recovered: frame.recovered,
      position: entry.handed && { ...entry.handed },
    });
    this.#handOver(conn, entry, step);
  }

  /** The answer to a renewal (`subscribe` with `since`) of a server-side subscription. */
  #onServerRenewed(conn, entry, frame) {
    conn.requests.delete(frame.id);
    if (this.#serverSubs.get(entry.channel) !== entry) {
      // Dropped while the renewal was on its way (the backend ended it first), so
      // the renewal subscribed the channel again: undo that unless the app holds it now.
      if (!this.#subs.has(entry.channel) && !this.#serverSubs.has(entry.channel)) {
        this.#sendUnsubscribe(conn, entry.channel);
      }
      return;
    }
    if (entry.requestId !== frame.id) return;
    entry.requestId = null;
    entry.retries = 0;
    const step = entry.tracker.subscribed(frame);
    this.#startStep(entry, step);
    if (step.gap) this.#emitGap(entry.channel, step.gap);
    this.#handOver(conn, entry, step);
  }

  #serverRenewalRefused(conn, entry, id, code, message, retryAfterMs) {
    if (this.#serverSubs.get(entry.channel) !== entry || entry.requestId !== id) return;
    entry.requestId = null;
    if (RETRYABLE.has(code)) {
      // The tracker keeps its request in flight: the retry carries the same `since`.
      const delay = Math.max(
        retryAfterMs ?? 0,
        backoffDelay(entry.retries++, { min: this.#opts.minReconnectDelay, max: this.#opts.maxReconnectDelay }, this.#random),
      );
      entry.retryTimer = this.#timers.after(delay, () => {
        entry.retryTimer = null;
        if (this.#serverSubs.get(entry.channel) === entry && this.#conn === conn && conn.authed) this.#renewServer(conn, entry);
      });
      return;
    }
    // Renewing a channel the connection holds needs no permission: a refusal means
    // the connection no longer holds it, so the server-side subscription is over.
    this.#dropServer(entry);
    this.#emitter.emit("serverUnsubscribed", { channel: entry.channel });
    this.#report({ code, message, channel: entry.channel });
  }

  /** Sends a `subscribe` with `since` = the entry's position, to recover what it missed. */
  #renewServer(conn, entry) {
    entry.retryTimer = this.#timers.cancel(entry.retryTimer);
    const since = entry.tracker.request();
    const id = this.#nextId++;
    const frame = { type: "subscribe", channel: entry.channel, id };
    if (since) frame.since = since;
    entry.requestId = id;
    conn.requests.set(id, { kind: "server_subscribe", entry });
    this.#send(conn, frame);
  }

  /** Before a step's events: the position the app has seen is the one right before
   * the step's first delivery (the tracker has already moved past them all). */
  #startStep(entry, step) {
    const first = step.deliver[0];
    entry.handed = first ? { offset: first.offset - 1, epoch: first.epoch } : entry.tracker.position;
  }

  /** Emits a step's deliveries as `publication` events, then recovers if asked. A
   * listener may take the channel over (`subscribe`) meanwhile: `handed` then says
   * where the app's subscription goes on from, and the rest is left to it. */
  #handOver(conn, entry, step) {
    const current = () => this.#serverSubs.get(entry.channel) === entry;
    for (const f of step.deliver) {
      if (!current()) return;
      entry.handed = { offset: f.offset, epoch: f.epoch };
      this.#emitter.emit("publication", toMessage(f));
    }
    if (!current()) return;
    entry.handed = entry.tracker.position;
    if (step.recover && this.#conn === conn && entry.requestId === null && entry.retryTimer === null) {
      this.#renewServer(conn, entry);
    }
  }

  #emitGap(channel, gap) {
    this.#log("gap on", channel, gap);
    this.#emitter.emit("gap", { channel, ...gap });
  }

  #dropServer(entry) {
    entry.retryTimer = this.#timers.cancel(entry.retryTimer);
    // A renewal in flight stays in `requests`: its answer finds the entry gone.
    if (this.#serverSubs.get(entry.channel) === entry) this.#serverSubs.delete(entry.channel);
  }

  /** Holds a delivery on a channel the client holds nothing for, until a `subscribed`
   * with `server: true` says what it was; bounded, and forgotten with the connection. */
  #holdOrphan(conn, frame) {
    if (typeof frame.channel !== "string" || !Number.isSafeInteger(frame.offset) || frame.offset < 1 || typeof frame.epoch !== "string") {
      return;
    }
    let held = conn.orphans.get(frame.channel);
    if (held && held.epoch !== frame.epoch) {
      // A replay is of one epoch: what came before belongs to no replay.
      this.#dropOrphans(conn, frame.channel);
      held = undefined;
    }
    if (!held) {
      if (conn.orphanCount >= TRACKER_BUFFER) return;
      held = { epoch: frame.epoch, low: frame.offset, frames: [] };
      conn.orphans.set(frame.channel, held);
    }
    held.low = Math.min(held.low, frame.offset);
    // Past the bound only `low` is kept: the tracker then recovers the rest from history.
    if (conn.orphanCount < TRACKER_BUFFER) {
      held.frames.push(frame);
      conn.orphanCount++;
    }
  }

  #dropOrphans(conn, channel) {
    const held = conn.orphans.get(channel);
    if (!held) return;
    conn.orphanCount -= held.frames.length;
    conn.orphans.delete(channel);
  }

  #sendUnsubscribe(conn, channel) {
    const id = this.#nextId++;
    conn.requests.set(id, { kind: "unsubscribe", channel });
    conn.leaving.set(channel, (conn.leaving.get(channel) ?? 0) + 1);
    this.#send(conn, { type: "unsubscribe", channel, id });
  }

  /** An `unsubscribe` of ours was answered. */
  #left(conn, channel) {
    const n = (conn.leaving.get(channel) ?? 0) - 1;
    if (n > 0) conn.leaving.set(channel, n);
    else conn.leaving.delete(channel);
  }

  #onAck(conn, frame) {
    const req = conn.requests.get(frame.id);
    if (!req || req.kind !== "publish") return;
    this.#settle(req.entry, null, { channel: frame.channel, offset: frame.offset, epoch: frame.epoch });
  }

  #onHistory(conn, frame) {
    const req = conn.requests.get(frame.id);
    if (!req || req.kind !== "history") return;
    if (!Array.isArray(frame.publications) || !Number.isSafeInteger(frame.offset) || typeof frame.epoch !== "string") {
      // Resolving with a made-up empty page would pass for "nothing kept".
      const error = new HeraldError("protocol", "the server's history answer is malformed", { channel: req.entry.channel });
      this.#settle(req.entry, error);
      return;
    }
    this.#settle(req.entry, null, { publications: frame.publications, offset: frame.offset, epoch: frame.epoch });
  }

  #onPresence(conn, frame) {
    const req = conn.requests.get(frame.id);
    if (!req || req.kind !== "presence") return;
    const members = Array.isArray(frame.members) ? frame.members.map(toMember) : null;
    if (!members || members.includes(null)) {
      // Dropping the bad entries would pass for members that are not there.
      const error = new HeraldError("protocol", "the server's presence answer is malformed", { channel: req.entry.channel });
      this.#settle(req.entry, error);
      return;
    }
    this.#settle(req.entry, null, { members, truncated: frame.truncated === true });
  }

  #onPresenceStats(conn, frame) {
    const req = conn.requests.get(frame.id);
    if (!req || req.kind !== "presence_stats") return;
    const count = (n) => Number.isSafeInteger(n) && n >= 0;
    if (!count(frame.num_clients) || !count(frame.num_users)) {
      const error = new HeraldError("protocol", "the server's presence_stats answer is malformed", { channel: req.entry.channel });
      this.#settle(req.entry, error);
      return;
    }
    this.#settle(req.entry, null, { numClients: frame.num_clients, numUsers: frame.num_users });
  }

  #onErrorFrame(conn, frame) {
    const code = typeof frame.code === "string" ? frame.code : "unknown";
    const message = typeof frame.message === "string" ? frame.message : code;
    const retryAfterMs = Number.isFinite(frame.retry_after_ms) ? frame.retry_after_ms : undefined;
    const req = frame.id !== undefined ? conn.requests.get(frame.id) : undefined;
    if (req) conn.requests.delete(frame.id);
    switch (req?.kind) {
      case "publish":
      case "history":
      case "presence":
      case "presence_stats":
        this.#settle(req.entry, new HeraldError(code, message, { channel: frame.channel, retryAfterMs }));
        return;
      case "subscribe":
        this.#subscribeRefused(conn, req.record, frame.id, code, message, retryAfterMs);
        return;
      case "unsubscribe":
        // `not_subscribed`: the server had already dropped it; nothing to do.
        this.#left(conn, req.channel);
        return;
      case "server_subscribe":
        this.#serverRenewalRefused(conn, req.entry, frame.id, code, message, retryAfterMs);
        return;
      case "auth":
        this.#report({ code, message });
        this.#retryRefresh();
        return;
    }
    const event = { code, message };
    if (typeof frame.channel === "string") event.channel = frame.channel;
    if (retryAfterMs !== undefined) event.retryAfterMs = retryAfterMs;
    this.#report(event);
  }

  #subscribeRefused(conn, record, id, code, message, retryAfterMs) {
    if (record.closed || record.requestId !== id) return;
    record.requestId = null;
    if (RETRYABLE.has(code)) {
      // The tracker keeps its request in flight: the retry carries the same `since`.
      const delay = Math.max(
        retryAfterMs ?? 0,
        backoffDelay(record.retries++, { min: this.#opts.minReconnectDelay, max: this.#opts.maxReconnectDelay }, this.#random),
      );
      this.#log("subscribe", record.channel, code, "retry in", Math.round(delay), "ms");
      record.retryTimer = this.#timers.after(delay, () => {
        record.retryTimer = null;
        if (!record.closed && this.#conn === conn && conn.authed) this.#sendSubscribe(record);
      });
      return;
    }
    // Refused for good (forbidden, bad_request, …): retrying would meet the same answer.
    const error = { code, message, channel: record.channel };
    const listened = record.emitter.has("error");
    this.#dropRecord(record);
    record.state = "closed";
    record.emitter.emit("error", error);
    if (!listened) this.#report(error);
    record.emitter.clear();
  }

  // --- requests ---

  #send(conn, frame) {
    try {
      conn.ws.send(JSON.stringify(frame));
      return true;
    } catch (e) {
      this.#log("send failed", e);
      return false;
    }
  }

  #sendSubscribe(record) {
    const conn = this.#conn;
    record.retryTimer = this.#timers.cancel(record.retryTimer);
    const since = record.tracker.request();
    const id = this.#nextId++;
    const frame = { type: "subscribe", channel: record.channel, id };
    if (since) frame.since = since;
    if (record.joinLeave) frame.join_leave = true;
    record.requestId = id;
    record.conn = conn;
    conn.requests.set(id, { kind: "subscribe", record });
    this.#send(conn, frame);
  }

  #sendRequest(conn, entry) {
    entry.id = this.#nextId++;
    entry.conn = conn;
    conn.requests.set(entry.id, { kind: entry.kind, entry });
    if (entry.kind === "publish") {
      this.#send(conn, { type: "broadcast", channel: entry.channel, message: entry.message, id: entry.id });
      return;
    }
    // A read: its kind is its frame's type.
    const frame = { type: entry.kind, channel: entry.channel };
    if (entry.kind === "history") {
      if (entry.since) frame.since = entry.since;
      if (entry.limit !== null) frame.limit = entry.limit;
      if (entry.reverse) frame.reverse = true;
    }
    frame.id = entry.id;
    this.#send(conn, frame);
  }

  /** Settles a publish or read once: rejects with `error`, or resolves with `answer`. */
  #settle(entry, error, answer) {
    if (!this.#pending.delete(entry)) return;
    entry.timer = this.#timers.cancel(entry.timer);
    if (entry.conn) entry.conn.requests.delete(entry.id);
    if (error) entry.reject(error);
    else entry.resolve(answer);
  }

  #unsubscribe(record) {
    if (record.closed) return;
    const conn = this.#conn;
    this.#dropRecord(record);
    record.state = "closed";
    record.emitter.clear();
    if (conn?.authed && record.conn === conn) this.#sendUnsubscribe(conn, record.channel);
  }

  #dropRecord(record) {
    record.closed = true;
    record.retryTimer = this.#timers.cancel(record.retryTimer);
    if (record.requestId !== null) record.conn?.requests.delete(record.requestId);
    record.requestId = null;
    if (this.#subs.get(record.channel) === record) this.#subs.delete(record.channel);
  }

  // --- token refresh ---

  #scheduleRefresh() {
    this.#refreshTimer = this.#timers.cancel(this.#refreshTimer);
    if (typeof this.#opts.getToken !== "function") return;
    const delay = refreshDelay(this.#token, this.#tokenAt);
    if (delay === null) return;
    const remaining = this.#tokenAt + delay - this.#clock.now();
    this.#refreshTimer = this.#timers.after(remaining, () => {
      this.#refreshTimer = null;
      this.#refresh();
    });
  }

  async #refresh() {
    const conn = this.#conn;
    if (!conn?.authed) return;
    let token;
    try {
      token = await this.#fetchToken();
    } catch (e) {
      if (this.#conn !== conn) return;
      this.#report({ code: "token_error", message: `getToken failed: ${e?.message ?? e}` });
      this.#retryRefresh();
      return;
    }
    if (this.#conn !== conn || !conn.authed) return;
    // The same token again gains nothing. Ask again a little later (a caching getToken
    // may have a new one by then); past the last attempt, the server ends the
    // connection when the token expires and the reconnect asks for a token again.
    if (token === conn.token) {
      this.#retryRefresh();
      return;
    }
    conn.token = token;
    const id = this.#nextId++;
    conn.requests.set(id, { kind: "auth" });
    this.#send(conn, { type: "auth", token, id });
  }

  #onReauthenticated(conn, frame) {
    const req = conn.requests.get(frame.id);
    if (req?.kind !== "auth") return;
    conn.requests.delete(frame.id);
    this.#refreshFailures = 0;
    this.#scheduleRefresh();
  }

  #retryRefresh() {
    if (++this.#refreshFailures > REFRESH_ATTEMPTS) return;
    this.#refreshTimer = this.#timers.cancel(this.#refreshTimer);
    this.#refreshTimer = this.#timers.after(1000 * 2 ** (this.#refreshFailures - 1), () => {
      this.#refreshTimer = null;
      this.#refresh();
    });
  }

  // --- liveness ---

  /** Fires `afterMs` from now; a frame seen meanwhile moves the deadline on rather
   * than re-arming a timer per frame. */
  #armWatchdog(conn, afterMs) {
    conn.watchdog = this.#timers.cancel(conn.watchdog);
    conn.watchdog = this.#timers.after(afterMs, () => {
      conn.watchdog = null;
      const limit = 2 * conn.heartbeatMs + HEARTBEAT_SLACK_MS;
      const silent = this.#clock.now() - conn.lastFrameAt;
      if (silent < limit) this.#armWatchdog(conn, limit - silent);
      else this.#abandon(conn, 4000, "heartbeat timeout");
    });
  }

  /** Gives up on a socket without waiting for its close event, which a dead network
   * may deliver only minutes later. */
  #abandon(conn, code, reason) {
    if (this.#conn !== conn) return;
    detach(conn.ws);
    try {
      conn.ws.close(code, reason);
    } catch {
      // Already closed.
    }
    this.#onClose(conn, code, reason);
  }

  #onClose(conn, code, reason) {
    if (this.#conn !== conn) return;
    detach(conn.ws);
    this.#teardown(conn, "disconnected");
    const disconnect = conn.disconnect;
    const canRefresh = typeof this.#opts.getToken === "function";
    const verdict = classifyClose(code, reason, disconnect, canRefresh);
    const info = { state: "disconnected", code, reason: disconnect?.reason ?? reason ?? "" };
    if (disconnect?.code) info.disconnect = disconnect.code;
    this.#log("closed", code, info.reason);
    let reconnect = verdict.reconnect;
    if (verdict.authFailure) {
      reconnect = reconnect && !this.#authRetried;
      this.#authRetried = true;
    }
    if (reconnect) this.#scheduleReconnect(info, verdict.minDelay);
    else this.#stop({ ...info, reconnect: false });
  }

  /** Drops what belonged to `conn`: its timers, the publishes and reads it carried
   * (rejected with `code`: a publish may or may not have been published and is never
   * resent; a read is not resent either, so that both kinds fail alike), and the
   * subscriptions' requests on it. */
  #teardown(conn, code) {
    conn.connectTimer = this.#timers.cancel(conn.connectTimer);
    conn.watchdog = this.#timers.cancel(conn.watchdog);
    this.#stableTimer = this.#timers.cancel(this.#stableTimer);
    this.#refreshTimer = this.#timers.cancel(this.#refreshTimer);
    this.#conn = null;
    this.#state = "disconnected";
    for (const entry of [...this.#pending]) {
      if (entry.conn !== conn) continue;
      let message = "the client was closed";
      if (code !== "closed") {
        message =
          entry.kind === "publish"
            ? "the connection dropped before the acknowledgement; it may or may not have been published"
            : "the connection dropped before the answer";
      }
      this.#settle(entry, new HeraldError(code, message));
    }
    for (const record of this.#subs.values()) {
      record.tracker.reset();
      record.requestId = null;
      record.conn = null;
      record.retryTimer = this.#timers.cancel(record.retryTimer);
      record.state = "subscribing";
    }
    // Server-side subscriptions last as long as the connection; each keeps its
    // position in case the server subscribes the next one again.
    for (const entry of this.#serverSubs.values()) {
      entry.tracker.reset();
      entry.requestId = null;
      entry.conn = null;
      entry.retryTimer = this.#timers.cancel(entry.retryTimer);
    }
    conn.requests.clear();
  }

  #scheduleReconnect(info, minDelay) {
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.#opts;
    const delay = Math.max(minDelay, backoffDelay(this.#attempt, { min, max }, this.#random));
    this.#attempt++;
    this.#urlIndex = (this.#urlIndex + 1) % this.#urls.length;
    this.#state = "disconnected";
    this.#reconnectTimer = this.#timers.cancel(this.#reconnectTimer);
    this.#reconnectTimer = this.#timers.after(delay, () => {
      this.#reconnectTimer = null;
      this.#attemptConnect();
    });
    this.#setState({ ...info, reconnect: true, delay: Math.round(delay) });
  }

  #stop(info) {
    this.#stopped = true;
    this.#generation++;
    this.#timers.clear();
    this.#reconnectTimer = null;
    this.#stableTimer = null;
    this.#refreshTimer = null;
    this.#listenNetwork(false);
    for (const entry of [...this.#pending]) {
      this.#settle(entry, new HeraldError("closed", `the client stopped: ${info.reason || info.code}`));
    }
    for (const record of this.#subs.values()) record.retryTimer = null;
    for (const entry of this.#serverSubs.values()) entry.retryTimer = null;
    this.#setState(info);
  }

  // --- browser network events ---

  #listenNetwork(on) {
    const target = this.#network;
    if (!target) return;
    const method = on ? "addEventListener" : "removeEventListener";
    target[method]("online", this.#onOnline);
    target[method]("offline", this.#onOffline);
  }

  #offline() {
    if (this.#stopped) return;
    this.#generation++;
    const conn = this.#conn;
    if (conn) {
      detach(conn.ws);
      try {
        conn.ws.close(1000, "offline");
      } catch {
        // Already closed.
      }
      this.#teardown(conn, "disconnected");
    }
    // `online` normally ends the wait; the timer covers a browser whose idea of being
    // offline is wrong.
    this.#scheduleReconnect({ state: "disconnected", code: "offline", reason: "the browser is offline" }, this.#opts.maxReconnectDelay);
  }

  #online() {
    if (this.#stopped || this.#conn) return;
    this.#attempt = 0;
    this.#attemptConnect();
  }

  // --- reporting ---

  #setState(info) {
    this.#state = info.state;
    this.#emitter.emit("state", info);
  }

  #report(error) {
    this.#log("error", error.code, error.message);
    this.#emitter.emit("error", error);
  }

  #log(...args) {
    if (this.#opts.debug) console.debug("[herald]", ...args);
  }
}
