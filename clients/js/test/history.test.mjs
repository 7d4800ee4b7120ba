// History reads: the request frame, the answer, refusals, argument checks, and what
// becomes of a read while disconnected (the same rules as a publish).

import { test } from "node:test";
import assert from "node:assert/strict";

import { HeraldError } from "../herald.js";
import { accept, client, flush, msg } from "./helpers.mjs";

test("a history read sends a history request and resolves with the frames as received", async () => {
  const { herald, Socket, log } = client();
  const ws = await accept(Socket);
  const p = herald.history("news");
  const [frame] = ws.frames("history");
  assert.deepEqual(frame, { type: "history", channel: "news", id: frame.id });
  assert.equal(typeof frame.id, "number");
  const publications = [msg("news", 1), { type: "system_notification", channel: "news", offset: 2, epoch: "e1", message: "hi", extra: [1] }];
  ws.receive({ type: "history", channel: "news", id: frame.id, publications, offset: 2, epoch: "e1" });
  assert.deepEqual(await p, { publications, offset: 2, epoch: "e1" });
  assert.deepEqual(log.errors, []);
  herald.close();
});

test("since, limit and reverse go into the frame; defaults are left to the server", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const since = { offset: 41, epoch: "e1", note: "not sent" };
  const reads = [
    herald.history("news", { since, limit: 20, reverse: true }),
    herald.history("news", { since: null, limit: null, reverse: false }),
    herald.history("news", {}),
  ];
  const [a, b, c] = ws.frames("history");
  assert.deepEqual(a, { type: "history", channel: "news", since: { offset: 41, epoch: "e1" }, limit: 20, reverse: true, id: a.id });
  assert.deepEqual(b, { type: "history", channel: "news", id: b.id });
  assert.deepEqual(c, { type: "history", channel: "news", id: c.id });
  assert.equal(new Set([a.id, b.id, c.id]).size, 3);
  herald.close();
  for (const r of reads) await assert.rejects(r, { code: "closed" });
});

test("answers are matched by id: concurrent reads each get their own", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const news = herald.history("news");
  const chat = herald.history("chat", { reverse: true, limit: 1 });
  const pub = herald.publish("chat", "x");
  const [fn, fc] = ws.frames("history");
  const [fp] = ws.frames("broadcast");
  // An ack carrying a read's id, a history answer carrying a publish's id or an unknown
  // id settle nothing.
  ws.receive({ type: "ack", id: fn.id, channel: "news", offset: 9, epoch: "e1" });
  ws.receive({ type: "history", channel: "chat", id: fp.id, publications: [], offset: 0, epoch: "e1" });
  ws.receive({ type: "history", channel: "chat", id: 9999, publications: [], offset: 0, epoch: "e1" });
  ws.receive({ type: "history", channel: "chat", id: fc.id, publications: [msg("chat", 3)], offset: 3, epoch: "e2" });
  ws.receive({ type: "history", channel: "news", id: fn.id, publications: [msg("news", 1)], offset: 1, epoch: "e1" });
  ws.receive({ type: "ack", id: fp.id, channel: "chat", offset: 4, epoch: "e2" });
  assert.deepEqual(await chat, { publications: [msg("chat", 3)], offset: 3, epoch: "e2" });
  assert.deepEqual(await news, { publications: [msg("news", 1)], offset: 1, epoch: "e1" });
  assert.equal((await pub).offset, 4);
  herald.close();
});

test("a history answer is not delivered to a subscription of the channel", async () => {
  const { herald, Socket } = client();
  const sub = herald.subscribe("news");
  const messages = [];
  sub.on("message", (m) => messages.push(m.offset));
  const ws = await accept(Socket);
  ws.receive({ type: "subscribed", channel: "news", offset: 2, epoch: "e1", id: ws.frames("subscribe")[0].id });
  const p = herald.history("news");
  const id = ws.frames("history")[0].id;
  ws.receive({ type: "history", channel: "news", id, publications: [msg("news", 1), msg("news", 2)], offset: 2, epoch: "e1" });
  assert.equal((await p).publications.length, 2);
  ws.receive(msg("news", 3));
  assert.deepEqual(messages, [3]);
  assert.deepEqual(sub.position, { offset: 3, epoch: "e1" });
  herald.close();
});

for (const code of ["forbidden", "unavailable", "bad_request"]) {
  test(`a history read refused with ${code} rejects with that code`, async () => {
    const { herald, Socket, log } = client();
    const ws = await accept(Socket);
    const p = herald.history("news");
    const [frame] = ws.frames("history");
    ws.receive({ type: "error", code, message: `refused: ${code}`, channel: "news", id: frame.id });
    await assert.rejects(
      p,
      (e) => e instanceof HeraldError && e.code === code && e.message === `refused: ${code}` && e.channel === "news",
    );
    // It answered the request: not reported as a stray error.
    assert.deepEqual(log.errors, []);
    herald.close();
  });
}

test("a rate-limited history read rejects with rate_limited and the delay", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const p = herald.history("news");
  ws.receive({ type: "error", code: "rate_limited", message: "slow down", retry_after_ms: 700, id: ws.frames("history")[0].id });
  await assert.rejects(p, { code: "rate_limited", retryAfterMs: 700 });
  herald.close();
});

test("a malformed answer rejects with protocol rather than passing for an empty history", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const p = herald.history("news");
  ws.receive({ type: "history", channel: "news", id: ws.frames("history")[0].id, offset: 3, epoch: "e1" });
  await assert.rejects(p, (e) => e instanceof HeraldError && e.code === "protocol" && e.channel === "news");
  herald.close();
});

test("bad arguments reject with a TypeError and send nothing", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const bad = [
    [undefined],
    [""],
    [42],
    ["news", null],
    ["news", "limit=3"],
    ["news", { since: { offset: 3 } }],
    ["news", { since: { offset: -1, epoch: "e1" } }],
    ["news", { since: { offset: 1.5, epoch: "e1" } }],
    ["news", { since: { offset: "3", epoch: "e1" } }],
    ["news", { since: 3 }],
    ["news", { limit: 0 }],
    ["news", { limit: -2 }],
    ["news", { limit: 2.5 }],
    ["news", { limit: "20" }],
    ["news", { limit: Infinity }],
    ["news", { reverse: "yes" }],
    ["news", { reverse: 1 }],
  ];
  for (const args of bad) {
    await assert.rejects(herald.history(...args), TypeError, JSON.stringify(args));
  }
  assert.deepEqual(ws.frames("history"), []);
  herald.close();
});

test("reads made while disconnected wait and are sent after auth_success, in call order with publishes", async () => {
  const { herald, Socket } = client();
  const since = { offset: 5, epoch: "e1" };
  const a = herald.history("news", { since });
  const pub = herald.publish("news", "x");
  const b = herald.history("news", { reverse: true });
  // The read was copied when it was made.
  since.offset = 99;
  await flush();
  Socket.last.open();
  assert.deepEqual(Socket.last.frames("history"), []);
  const ws = await accept(Socket);
  assert.deepEqual(
    ws.sent.filter((f) => f.type !== "auth").map((f) => [f.type, f.since?.offset ?? f.reverse ?? f.message]),
    [
      ["history", 5],
      ["broadcast", "x"],
      ["history", true],
    ],
  );
  const [fa, fb] = ws.frames("history");
  ws.receive({ type: "history", channel: "news", id: fb.id, publications: [], offset: 0, epoch: "e1" });
  ws.receive({ type: "history", channel: "news", id: fa.id, publications: [], offset: 0, epoch: "e1" });
  ws.receive({ type: "ack", id: ws.frames("broadcast")[0].id, channel: "news", offset: 1, epoch: "e1" });
  assert.deepEqual(await a, { publications: [], offset: 0, epoch: "e1" });
  assert.deepEqual(await b, { publications: [], offset: 0, epoch: "e1" });
  await pub;
  herald.close();
});

test("a read in flight when the connection drops rejects with disconnected and is not resent", async () => {
  const { herald, clock, Socket } = client();
  const ws = await accept(Socket);
  const p = herald.history("news");
  ws.drop(1006);
  await assert.rejects(p, (e) => e instanceof HeraldError && e.code === "disconnected");
  const queued = herald.history("later");
  await clock.advance(500);
  const ws2 = await accept(Socket);
  assert.deepEqual(
    ws2.frames("history").map((f) => f.channel),
    ["later"],
  );
  herald.close();
  await assert.rejects(queued, { code: "closed" });
});

test("an unanswered read rejects with timeout after publishTimeout, queued or sent", async () => {
  const { herald, clock, Socket } = client(undefined, { publishTimeout: 3000, connectTimeout: 60_000 });
  const queued = herald.history("news");
  queued.catch(() => {});
  await clock.advance(3000);
  await assert.rejects(queued, { code: "timeout" });
  const ws = await accept(Socket);
  assert.deepEqual(ws.frames("history"), []);
  const sent = herald.history("news");
  sent.catch(() => {});
  await clock.advance(2999);
  await flush();
  let settled = false;
  sent.then(
    () => (settled = true),
    () => (settled = true),
  );
  await flush();
  assert.equal(settled, false);
  await clock.advance(1);
  await assert.rejects(sent, { code: "timeout" });
  // A late answer is ignored.
  ws.receive({ type: "history", channel: "news", id: ws.frames("history")[0].id, publications: [], offset: 0, epoch: "e1" });
  herald.close();
  assert.equal(clock.pending, 0);
});

test("reads are bounded by publishQueueSize on their own: they never crowd out publishes", async () => {
  const { herald, Socket } = client(undefined, { publishQueueSize: 1 });
  const a = herald.history("news");
  await assert.rejects(herald.history("news"), { code: "queue_full" });
  const pub = herald.publish("news", 1);
  const ws = await accept(Socket);
  ws.receive({ type: "history", channel: "news", id: ws.frames("history")[0].id, publications: [], offset: 0, epoch: "e1" });
  await a;
  // Answered, it no longer counts.
  const b = herald.history("news");
  herald.close();
  await assert.rejects(pub, { code: "closed" });
  await assert.rejects(b, { code: "closed" });
});

test("a closed client rejects reads with closed, pending and new", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const pending = herald.history("news");
  herald.close();
  await assert.rejects(pending, { code: "closed" });
  await assert.rejects(herald.history("news"), { code: "closed" });
  assert.equal(ws.frames("history").length, 1);
  // Started again, reads go out once more.
  herald.connect();
  const ws2 = await accept(Socket);
  const p = herald.history("news", { limit: 1 });
  const [frame] = ws2.frames("history");
  ws2.receive({ type: "history", channel: "news", id: frame.id, publications: [msg("news", 7)], offset: 7, epoch: "e1" });
  assert.deepEqual((await p).publications, [msg("news", 7)]);
  herald.close();
});
