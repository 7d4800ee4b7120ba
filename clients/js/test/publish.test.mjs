// Publishing: acknowledgements, refusals, the queue while disconnected, timeouts, and
// what becomes of a publish when the connection drops.

import { test } from "node:test";
import assert from "node:assert/strict";

import { HeraldError } from "../herald.js";
import { accept, client, flush } from "./helpers.mjs";

test("a publish is acknowledged with its position", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const p = herald.publish("chat:lobby", { text: "hi" });
  const [frame] = ws.frames("broadcast");
  assert.deepEqual(frame, { type: "broadcast", channel: "chat:lobby", message: { text: "hi" }, id: frame.id });
  ws.receive({ type: "ack", id: frame.id, channel: "chat:lobby", offset: 42, epoch: "e1" });
  assert.deepEqual(await p, { channel: "chat:lobby", offset: 42, epoch: "e1" });
  herald.close();
});

test("a refused publish rejects with the server's code", async () => {
  const { herald, Socket, log } = client();
  const ws = await accept(Socket);
  const p = herald.publish("news", {});
  const [frame] = ws.frames("broadcast");
  ws.receive({ type: "error", code: "forbidden", message: "not allowed to publish", channel: "news", id: frame.id });
  await assert.rejects(p, (e) => e instanceof HeraldError && e.code === "forbidden" && e.message === "not allowed to publish");
  // It answered the request: not reported as a stray error.
  assert.deepEqual(log.errors, []);
  herald.close();
});

test("publishes made while disconnected wait and are sent after auth_success, in order", async () => {
  const { herald, Socket } = client();
  const a = herald.publish("c", "a");
  const b = herald.publish("c", "b");
  await flush();
  Socket.last.open();
  assert.deepEqual(Socket.last.frames("broadcast"), []);
  const ws = await accept(Socket);
  const frames = ws.frames("broadcast");
  assert.deepEqual(
    frames.map((f) => f.message),
    ["a", "b"],
  );
  for (const [i, f] of frames.entries()) ws.receive({ type: "ack", id: f.id, channel: "c", offset: i + 1, epoch: "e" });
  assert.equal((await a).offset, 1);
  assert.equal((await b).offset, 2);
  herald.close();
});

test("the queue is bounded: beyond publishQueueSize a publish rejects at once", async () => {
  const { herald } = client(undefined, { publishQueueSize: 2 });
  const a = herald.publish("c", 1);
  const b = herald.publish("c", 2);
  await assert.rejects(herald.publish("c", 3), { code: "queue_full" });
  herald.close();
  await assert.rejects(a, { code: "closed" });
  await assert.rejects(b, { code: "closed" });
});

test("the bound counts publishes awaiting their ack too", async () => {
  const { herald, Socket } = client(undefined, { publishQueueSize: 1 });
  const ws = await accept(Socket);
  const a = herald.publish("c", 1);
  await assert.rejects(herald.publish("c", 2), { code: "queue_full" });
  const [f] = ws.frames("broadcast");
  ws.receive({ type: "ack", id: f.id, channel: "c", offset: 1, epoch: "e" });
  await a;
  const b = herald.publish("c", 3);
  herald.close();
  await assert.rejects(b, { code: "closed" });
});

test("an unacknowledged publish rejects with timeout, queued or sent", async () => {
  const { herald, clock, Socket } = client(undefined, { publishTimeout: 3000, connectTimeout: 60_000 });
  const queued = herald.publish("c", "never sent");
  queued.catch(() => {});
  await clock.advance(3000);
  await assert.rejects(queued, { code: "timeout" });
  const ws = await accept(Socket);
  assert.deepEqual(ws.frames("broadcast"), []);
  const sent = herald.publish("c", "no ack");
  sent.catch(() => {});
  await clock.advance(3000);
  await assert.rejects(sent, { code: "timeout" });
  // A late ack is ignored.
  ws.receive({ type: "ack", id: ws.frames("broadcast")[0].id, channel: "c", offset: 1, epoch: "e" });
  herald.close();
});

test("a publish in flight when the connection drops rejects with disconnected and is not resent", async () => {
  const { herald, clock, Socket } = client();
  const ws = await accept(Socket);
  const p = herald.publish("c", "maybe");
  ws.drop(1006);
  await assert.rejects(p, { code: "disconnected" });
  const queued = herald.publish("c", "later");
  await clock.advance(500);
  const ws2 = await accept(Socket);
  assert.deepEqual(
    ws2.frames("broadcast").map((f) => f.message),
    ["later"],
  );
  herald.close();
  await assert.rejects(queued, { code: "closed" });
});

test("a rate-limited publish rejects with rate_limited and the delay", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const p = herald.publish("c", 1);
  ws.receive({ type: "error", code: "rate_limited", message: "slow down", retry_after_ms: 1200, id: ws.frames("broadcast")[0].id });
  await assert.rejects(p, { code: "rate_limited", retryAfterMs: 1200 });
  herald.close();
});
