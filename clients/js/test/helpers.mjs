// Test doubles for herald.js: a WebSocket stub the test drives as the server, a fake
// clock the client's timers run on, and small helpers to build tokens and connect.

import { Herald } from "../herald.js";

/** Lets pending promise callbacks and microtasks run (a token fetch, a close event). */
export async function flush() {
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A clock whose time moves only when the test says so. */
export class FakeClock {
  #now = 1_767_623_577_000;
  #seq = 0;
  #timers = new Map();

  now = () => this.#now;

  setTimeout = (fn, ms) => {
    const id = ++this.#seq;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), seq: id, fn });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** Timers scheduled and not yet fired or cleared. */
  get pending() {
    return this.#timers.size;
  }

  /** Delay until the next timer fires, or null. */
  get nextIn() {
    let next = null;
    for (const t of this.#timers.values()) if (next === null || t.at < next) next = t.at;
    return next === null ? null : next - this.#now;
  }

  /** Moves time on by `ms`, firing due timers in order and letting each one's
   * consequences (promises) settle before the next. */
  async advance(ms) {
    const target = this.#now + ms;
    for (;;) {
      let due = null;
      for (const [id, t] of this.#timers) {
        if (t.at <= target && (due === null || t.at < due.t.at || (t.at === due.t.at && t.seq < due.t.seq))) {
          due = { id, t };
        }
      }
      if (!due) break;
      this.#timers.delete(due.id);
      this.#now = due.t.at;
      due.t.fn();
      await flush();
    }
    this.#now = target;
    await flush();
  }
}

/** A fresh WebSocket stub class with its own list of instances. The test plays the
 * server: `open()`, `receive(frame)`, `drop(code, reason)`; what the client sent is in
 * `sent` (parsed), how it closed in `closedWith`. */
export function socketClass() {
  class StubSocket {
    static instances = [];

    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.onopen = null;
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      StubSocket.instances.push(this);
    }

    static get last() {
      return StubSocket.instances[StubSocket.instances.length - 1];
    }

    send(data) {
      if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
      this.sent.push(JSON.parse(data));
    }

    close(code, reason) {
      this.closedWith = { code, reason };
      if (this.readyState === 3) return;
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code: code ?? 1005, reason: reason ?? "", wasClean: true }));
    }

    // --- the server's side ---

    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    receive(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }

    /** Frames of `type` the client sent. */
    frames(type) {
      return this.sent.filter((f) => f.type === type);
    }
  }
  return StubSocket;
}

/** An unsigned JWT carrying `claims` (the client never verifies signatures). */
export function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.c2ln`;
}

/** A client on a fake clock and a stub socket class, recording its events. */
export function client(urls = ["ws://gw1/ws", "ws://gw2/ws"], options = {}) {
  const clock = new FakeClock();
  const Socket = socketClass();
  const herald = new Herald(urls, {
    token: "t0",
    WebSocket: Socket,
    clock,
    random: () => 1,
    networkEvents: null,
    ...options,
  });
  const log = { states: [], errors: [] };
  herald.on("state", (s) => log.states.push(s));
  herald.on("error", (e) => log.errors.push(e));
  return { herald, clock, Socket, log };
}

/** Opens the latest socket, answers its `auth` with `auth_success` and returns it. */
export async function accept(Socket, { heartbeat = 25000 } = {}) {
  await flush();
  const ws = Socket.last;
  ws.open();
  const auth = ws.sent[0];
  ws.receive({
    type: "auth_success",
    message: "authenticated",
    user_id: "ann",
    conn_id: "c1",
    node: "gw",
    channels: [],
    heartbeat_interval_ms: heartbeat,
    id: auth.id,
  });
  return ws;
}

/** A channel delivery frame. */
export function msg(channel, offset, epoch = "e1", message = { n: offset }) {
  return { type: "message", channel, offset, epoch, message, from_user: "bob", timestamp: "2026-01-05T14:47:57.123Z" };
}
