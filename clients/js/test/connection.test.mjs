// The connection's life through the WebSocket stub: authentication, refusals, closes,
// reconnect backoff, dead-socket detection, token refresh and network events.

import { test } from "node:test";
import assert from "node:assert/strict";

import { accept, client, flush, jwt, msg } from "./helpers.mjs";

test("authenticates in the first frame over the herald.v1 subprotocol, never in the URL", async () => {
  const { herald, Socket, log } = client(["ws://gw1/ws?x=1"], { token: "secret-token", batch: true });
  assert.equal(herald.state, "connecting");
  await flush();
  const ws = Socket.last;
  assert.equal(ws.url, "ws://gw1/ws?x=1");
  assert.ok(!ws.url.includes("secret-token"));
  assert.deepEqual(ws.protocols, ["herald.v1"]);
  ws.open();
  assert.equal(ws.sent.length, 1);
  const auth = ws.sent[0];
  assert.deepEqual(Object.keys(auth).sort(), ["batch", "id", "token", "type"]);
  assert.equal(auth.type, "auth");
  assert.equal(auth.token, "secret-token");
  assert.equal(auth.batch, true);
  assert.equal(typeof auth.id, "number");
  assert.equal(herald.state, "connecting");
  ws.receive({ type: "auth_success", id: auth.id, heartbeat_interval_ms: 25000, node: "gw-1", user_id: "ann" });
  assert.equal(herald.state, "connected");
  assert.deepEqual(
    log.states.map((s) => s.state),
    ["connecting", "connected"],
  );
  assert.equal(log.states[1].node, "gw-1");
  herald.close();
});

test("request ids are increasing integers", async () => {
  const { herald, Socket } = client();
  herald.subscribe("a");
  herald.subscribe("b");
  const ws = await accept(Socket);
  herald.publish("a", 1).catch(() => {});
  herald.subscribe("c").unsubscribe();
  const ids = ws.sent.map((f) => f.id);
  assert.ok(ids.every(Number.isInteger));
  assert.deepEqual([...ids].sort((x, y) => x - y), ids);
  assert.equal(new Set(ids).size, ids.length);
  herald.close();
});

test("after a drop it reconnects to the next URL and resubscribes with since", async () => {
  const { herald, clock, Socket, log } = client(["ws://gw1/ws", "ws://gw2/ws"]);
  const sub = herald.subscribe("news");
  const got = [];
  sub.on("message", (m) => got.push(m.offset));
  const ws1 = await accept(Socket);
  const s1 = ws1.frames("subscribe");
  assert.deepEqual(s1.map((f) => [f.channel, f.since]), [["news", undefined]]);
  ws1.receive({ type: "subscribed", channel: "news", offset: 40, epoch: "e1", id: s1[0].id });
  ws1.receive(msg("news", 41));
  assert.deepEqual(sub.position, { offset: 41, epoch: "e1" });

  ws1.drop(1006);
  const down = log.states.at(-1);
  assert.equal(down.state, "disconnected");
  assert.equal(down.code, 1006);
  assert.equal(down.reconnect, true);
  // random() = 1: the first retry waits the whole minimum delay.
  assert.equal(down.delay, 500);
  await clock.advance(499);
  assert.equal(Socket.instances.length, 1);
  await clock.advance(1);
  const ws2 = await accept(Socket);
  assert.equal(ws2.url, "ws://gw2/ws");
  const s2 = ws2.frames("subscribe");
  assert.deepEqual(s2.map((f) => [f.channel, f.since]), [["news", { offset: 41, epoch: "e1" }]]);
  // The replay, then live delivery; nothing twice.
  ws2.receive(msg("news", 41));
  ws2.receive(msg("news", 42));
  ws2.receive({ type: "subscribed", channel: "news", offset: 42, epoch: "e1", recovered: true, id: s2[0].id });
  ws2.receive(msg("news", 43));
  assert.deepEqual(got, [41, 42, 43]);
  herald.close();
});

test("4403 refusal stops for good", async () => {
  const { herald, clock, Socket, log } = client();
  await flush();
  const ws = Socket.last;
  ws.open();
  ws.receive({ type: "disconnect", code: "forbidden", reason: "origin not allowed", reconnect: false });
  ws.drop(4403, "forbidden");
  const last = log.states.at(-1);
  assert.deepEqual(last, { state: "disconnected", code: 4403, reason: "origin not allowed", disconnect: "forbidden", reconnect: false });
  assert.equal(herald.state, "disconnected");
  await clock.advance(600_000);
  assert.equal(Socket.instances.length, 1);
  assert.equal(log.states.filter((s) => s.state === "connecting").length, 1);
  assert.equal(clock.pending, 0);
  await assert.rejects(herald.publish("x", 1), { code: "closed" });
});

test("4429 refusal waits at least retry_after_ms, then tries the next URL", async () => {
  const { herald, clock, Socket, log } = client(["ws://gw1/ws", "ws://gw2/ws"], { random: () => 0 });
  await flush();
  const ws = Socket.last;
  ws.open();
  ws.receive({ type: "disconnect", code: "rate_limited", reason: "too many connections", reconnect: true, retry_after_ms: 3000 });
  ws.drop(4429, "rate_limited");
  assert.equal(log.states.at(-1).reconnect, true);
  assert.equal(log.states.at(-1).code, 4429);
  await clock.advance(2999);
  assert.equal(Socket.instances.length, 1);
  await clock.advance(1);
  assert.equal(Socket.instances.length, 2);
  assert.equal(Socket.last.url, "ws://gw2/ws");
  herald.close();
});

test("a disconnect with reconnect:false stops", async () => {
  const { herald, clock, Socket, log } = client();
  const ws = await accept(Socket);
  ws.receive({ type: "disconnect", code: "token_revoked", reason: "token revoked", reconnect: false });
  ws.drop(1008, "token revoked");
  assert.deepEqual(log.states.at(-1), {
    state: "disconnected",
    code: 1008,
    reason: "token revoked",
    disconnect: "token_revoked",
    reconnect: false,
  });
  await clock.advance(600_000);
  assert.equal(Socket.instances.length, 1);
  assert.equal(clock.pending, 0);
  herald.close();
});

test("token_expired with getToken reconnects with a fresh token", async () => {
  let n = 0;
  const { herald, clock, Socket, log } = client(undefined, { token: undefined, getToken: async () => `token-${++n}` });
  const ws1 = await accept(Socket);
  assert.equal(ws1.sent[0].token, "token-1");
  ws1.receive({ type: "disconnect", code: "token_expired", reason: "token expired", reconnect: false });
  ws1.drop(1008, "token expired");
  assert.equal(log.states.at(-1).reconnect, true);
  await clock.advance(500);
  const ws2 = await accept(Socket);
  assert.equal(ws2.sent[0].token, "token-2");
  assert.equal(herald.state, "connected");
  herald.close();
});

test("token_expired with a static token stops", async () => {
  const { herald, clock, Socket, log } = client();
  const ws = await accept(Socket);
  ws.receive({ type: "disconnect", code: "token_expired", reason: "token expired", reconnect: false });
  ws.drop(1008, "token expired");
  assert.equal(log.states.at(-1).reconnect, false);
  await clock.advance(60_000);
  assert.equal(Socket.instances.length, 1);
  herald.close();
});

test("a refused first-frame token is retried once with a fresh one, then the client stops", async () => {
  let n = 0;
  const { clock, Socket, log } = client(undefined, { token: undefined, getToken: async () => `bad-${++n}` });
  await flush();
  Socket.last.open();
  Socket.last.drop(1008, "authentication failed");
  assert.equal(log.states.at(-1).reconnect, true);
  await clock.advance(500);
  Socket.last.open();
  assert.equal(Socket.last.sent[0].token, "bad-2");
  Socket.last.drop(1008, "authentication failed");
  assert.equal(log.states.at(-1).reconnect, false);
  await clock.advance(60_000);
  assert.equal(Socket.instances.length, 2);
});

test("a refused static token stops at once", async () => {
  const { clock, Socket, log } = client();
  await flush();
  Socket.last.open();
  Socket.last.drop(1008, "authentication failed");
  assert.deepEqual(log.states.at(-1), { state: "disconnected", code: 1008, reason: "authentication failed", reconnect: false });
  await clock.advance(60_000);
  assert.equal(Socket.instances.length, 1);
});

test("backoff grows while connections fail and resets only after one stayed up", async () => {
  const { herald, clock, Socket, log } = client(["ws://gw/ws"], { stableAfter: 10_000 });
  const delays = [];
  const fail = async () => {
    const ws = await accept(Socket);
    ws.drop(1006);
    delays.push(log.states.at(-1).delay);
    await clock.advance(log.states.at(-1).delay);
  };
  // Accepted and dropped at once: each one counts as a failure.
  for (let i = 0; i < 7; i++) await fail();
  assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16000, 20000]);
  // One connection stays up for stableAfter: the next drop starts from the minimum.
  const ws = await accept(Socket);
  await clock.advance(9_999);
  ws.receive({ type: "heartbeat" });
  await clock.advance(1);
  ws.drop(1006);
  assert.equal(log.states.at(-1).delay, 500);
  herald.close();
});

test("a silent socket is closed after 2 heartbeats + 1 s and the client reconnects", async () => {
  const { herald, clock, Socket, log } = client(["ws://gw/ws"]);
  const ws = await accept(Socket, { heartbeat: 1000 });
  // Frames keep it alive.
  for (let i = 0; i < 5; i++) {
    await clock.advance(1000);
    ws.receive({ type: "heartbeat", timestamp: "…" });
  }
  assert.equal(ws.closedWith, null);
  await clock.advance(2999);
  assert.equal(ws.closedWith, null);
  await clock.advance(1);
  assert.deepEqual(ws.closedWith, { code: 4000, reason: "heartbeat timeout" });
  assert.deepEqual(log.states.at(-1), { state: "disconnected", code: 4000, reason: "heartbeat timeout", reconnect: true, delay: 500 });
  await clock.advance(500);
  assert.equal(Socket.instances.length, 2);
  // The client never pings on its own: client frames count toward the rate limit.
  assert.deepEqual(ws.frames("ping"), []);
  herald.close();
});

test("a socket that never authenticates is given up after connectTimeout", async () => {
  const { herald, clock, Socket, log } = client(["ws://gw/ws"], { connectTimeout: 5000 });
  await flush();
  await clock.advance(5000);
  assert.deepEqual(Socket.last.closedWith, { code: 4000, reason: "connect timeout" });
  assert.equal(log.states.at(-1).reconnect, true);
  herald.close();
});

test("the token is refreshed on the live connection before it expires", async () => {
  let n = 0;
  const issued = [];
  const { herald, clock, Socket, log } = client(undefined, {
    token: undefined,
    getToken: async () => {
      const iat = Math.floor(clock.now() / 1000);
      const t = jwt({ sub: "ann", n: ++n, iat, exp: iat + 60 });
      issued.push(t);
      return t;
    },
  });
  const ws = await accept(Socket);
  // 60 s tokens: refreshed 60 - 12 - 1 = 47 s after they were obtained.
  await clock.advance(46_999);
  assert.equal(ws.frames("auth").length, 1);
  await clock.advance(1);
  const reauth = ws.frames("auth")[1];
  assert.deepEqual(Object.keys(reauth).sort(), ["id", "token", "type"]);
  assert.equal(reauth.token, issued[1]);
  ws.receive({ type: "auth_success", id: reauth.id, heartbeat_interval_ms: 25000 });
  await clock.advance(47_000);
  assert.equal(ws.frames("auth").length, 3);
  // Not a reconnect: the state never changed.
  assert.deepEqual(
    log.states.map((s) => s.state),
    ["connecting", "connected"],
  );
  herald.close();
});

test("a refused refresh is reported and retried a bounded number of times", async () => {
  let n = 0;
  const { herald, clock, Socket, log } = client(undefined, {
    token: undefined,
    getToken: async () => jwt({ n: ++n, iat: 0, exp: 60 }),
  });
  const ws = await accept(Socket, { heartbeat: 1_000_000 });
  await clock.advance(47_000);
  let answered = 1;
  for (let i = 0; i < 10; i++) {
    const auths = ws.frames("auth");
    if (auths.length > answered) {
      answered = auths.length;
      ws.receive({ type: "error", code: "forbidden", message: "token for another user", id: auths.at(-1).id });
    }
    await clock.advance(60_000);
  }
  assert.equal(log.errors.filter((e) => e.code === "forbidden").length, 6);
  assert.equal(ws.frames("auth").length, 7);
  herald.close();
});

test("a getToken that keeps returning the same token is asked a bounded number of times", async () => {
  let calls = 0;
  const same = jwt({ iat: 0, exp: 60 });
  const { herald, clock, Socket, log } = client(undefined, {
    token: undefined,
    getToken: async () => {
      calls++;
      return same;
    },
  });
  const ws = await accept(Socket, { heartbeat: 1_000_000 });
  await clock.advance(600_000);
  // Nothing new to send: no re-authentication, no error, and the asking stops.
  assert.equal(ws.frames("auth").length, 1);
  assert.equal(calls, 1 + 1 + 5);
  assert.deepEqual(log.errors, []);
  herald.close();
});

test("a failing getToken is reported and the connect retried", async () => {
  let fail = true;
  const { herald, clock, Socket, log } = client(undefined, {
    token: undefined,
    getToken: async () => {
      if (fail) throw new Error("auth-svc down");
      return "good";
    },
  });
  await flush();
  assert.equal(Socket.instances.length, 0);
  assert.equal(log.errors[0].code, "token_error");
  assert.match(log.errors[0].message, /auth-svc down/);
  assert.equal(log.states.at(-1).reconnect, true);
  fail = false;
  await clock.advance(500);
  const ws = await accept(Socket);
  assert.equal(ws.sent[0].token, "good");
  herald.close();
});

test("offline closes the socket, online reconnects at once", async () => {
  const network = new EventTarget();
  const { herald, Socket, log } = client(["ws://gw/ws"], { networkEvents: network });
  const ws = await accept(Socket);
  network.dispatchEvent(new Event("offline"));
  assert.equal(ws.closedWith.code, 1000);
  assert.equal(log.states.at(-1).code, "offline");
  assert.equal(log.states.at(-1).reconnect, true);
  network.dispatchEvent(new Event("online"));
  await accept(Socket);
  assert.equal(herald.state, "connected");
  herald.close();
  // close() removed the listeners.
  network.dispatchEvent(new Event("online"));
  await flush();
  assert.equal(Socket.instances.length, 2);
});

test("batch_messages are unpacked into their deliveries, in order", async () => {
  const { herald, Socket } = client(undefined, { batch: true });
  const got = [];
  const sub = herald.subscribe("news");
  sub.on("message", (m) => got.push([m.offset, m.data]));
  const ws = await accept(Socket);
  assert.equal(ws.sent[0].batch, true);
  ws.receive({ type: "subscribed", channel: "news", offset: 0, epoch: "e1", id: ws.frames("subscribe")[0].id });
  ws.receive({ type: "batch_messages", count: 3, messages: [msg("news", 1), msg("news", 2), msg("news", 3)] });
  assert.deepEqual(got, [
    [1, { n: 1 }],
    [2, { n: 2 }],
    [3, { n: 3 }],
  ]);
  herald.close();
});

test("error frames not tied to a request are reported", async () => {
  const { herald, Socket, log } = client();
  const ws = await accept(Socket);
  ws.receive({ type: "error", code: "rate_limited", message: "slow down", retry_after_ms: 700 });
  ws.receive("not json");
  assert.deepEqual(log.errors[0], { code: "rate_limited", message: "slow down", retryAfterMs: 700 });
  assert.equal(log.errors[1].code, "protocol");
  herald.close();
});

test("close() reports closed, stops and cancels every timer", async () => {
  const { herald, clock, Socket, log } = client(undefined, {
    token: undefined,
    getToken: async () => jwt({ iat: 0, exp: 600 }),
  });
  const sub = herald.subscribe("news");
  const ws = await accept(Socket);
  ws.receive({ type: "subscribed", channel: "news", offset: 0, epoch: "e1", id: ws.frames("subscribe")[0].id });
  const sent = herald.publish("news", 1);
  assert.ok(clock.pending > 0);
  herald.close();
  await assert.rejects(sent, { code: "closed" });
  assert.deepEqual(ws.closedWith, { code: 1000, reason: "client closed" });
  assert.deepEqual(log.states.at(-1), { state: "disconnected", code: "closed", reason: "closed by the client", reconnect: false });
  assert.equal(clock.pending, 0);
  assert.equal(herald.state, "disconnected");
  // Subscriptions survive for connect().
  assert.equal(sub.state, "subscribing");
  herald.connect();
  const ws2 = await accept(Socket);
  assert.deepEqual(ws2.frames("subscribe")[0].since, { offset: 0, epoch: "e1" });
  herald.close();
  assert.equal(clock.pending, 0);
});

test("close() right after construction never opens a socket", async () => {
  const { herald, Socket, clock } = client();
  herald.close();
  await flush();
  assert.equal(Socket.instances.length, 0);
  assert.equal(clock.pending, 0);
});
