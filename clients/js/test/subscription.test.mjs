// Subscriptions through the socket: message shapes, gap recovery, refusals and
// retries, unsubscribing.

import { test } from "node:test";
import assert from "node:assert/strict";

import { accept, client, msg } from "./helpers.mjs";

/** A client subscribed to `channel`, live at `offset`. */
async function subscribed(channel = "news", offset = 0, options = {}) {
  const c = client(undefined, options);
  const sub = c.herald.subscribe(channel);
  const events = { messages: [], gaps: [], subscribed: [], errors: [] };
  sub.on("message", (m) => events.messages.push(m));
  sub.on("gap", (g) => events.gaps.push(g));
  sub.on("subscribed", (i) => events.subscribed.push(i));
  sub.on("error", (e) => events.errors.push(e));
  const ws = await accept(c.Socket);
  ws.receive({ type: "subscribed", channel, offset, epoch: "e1", id: ws.frames("subscribe")[0].id });
  return { ...c, sub, ws, events };
}

test("every delivery type becomes a message with data and fromUser", async () => {
  const { herald, ws, events } = await subscribed("news");
  const ts = "2026-01-05T14:47:57.123Z";
  ws.receive({ type: "message", channel: "news", offset: 1, epoch: "e1", message: { t: 1 }, from_user: "u1", timestamp: ts });
  ws.receive({ type: "system_notification", channel: "news", offset: 2, epoch: "e1", message: "maintenance", timestamp: ts });
  ws.receive({ type: "user_message", channel: "news", offset: 3, epoch: "e1", user_id: "bot", content: { text: "hi" }, timestamp: ts });
  ws.receive({
    type: "processing_result",
    channel: "news",
    offset: 4,
    epoch: "e1",
    job_id: "j",
    job_type: "sleep",
    status: "done",
    result: { slept_ms: 1 },
    timestamp: ts,
  });
  const view = events.messages.map(({ frame, ...m }) => m);
  assert.deepEqual(view, [
    { channel: "news", type: "message", data: { t: 1 }, offset: 1, epoch: "e1", timestamp: ts, fromUser: "u1" },
    { channel: "news", type: "system_notification", data: "maintenance", offset: 2, epoch: "e1", timestamp: ts, fromUser: undefined },
    { channel: "news", type: "user_message", data: { text: "hi" }, offset: 3, epoch: "e1", timestamp: ts, fromUser: "bot" },
    {
      channel: "news",
      type: "processing_result",
      data: { job_id: "j", job_type: "sleep", status: "done", result: { slept_ms: 1 } },
      offset: 4,
      epoch: "e1",
      timestamp: ts,
      fromUser: undefined,
    },
  ]);
  assert.equal(events.messages[0].frame.type, "message");
  assert.deepEqual(events.subscribed, [{ channel: "news", offset: 0, epoch: "e1", recovered: undefined }]);
  herald.close();
});

test("a gap while connected is recovered with since, one request at a time", async () => {
  const { herald, ws, events } = await subscribed("news", 0);
  ws.receive(msg("news", 1));
  ws.receive(msg("news", 4));
  ws.receive(msg("news", 5));
  const recoveries = ws.frames("subscribe").slice(1);
  assert.equal(recoveries.length, 1);
  assert.deepEqual(recoveries[0].since, { offset: 1, epoch: "e1" });
  ws.receive(msg("news", 2));
  ws.receive(msg("news", 3));
  ws.receive(msg("news", 4));
  ws.receive(msg("news", 5));
  ws.receive({ type: "subscribed", channel: "news", offset: 5, epoch: "e1", recovered: true, id: recoveries[0].id });
  ws.receive(msg("news", 6));
  assert.deepEqual(
    events.messages.map((m) => m.offset),
    [1, 2, 3, 4, 5, 6],
  );
  assert.deepEqual(events.gaps, []);
  herald.close();
});

test("history that cannot fill a disconnect is reported as a gap", async () => {
  const { herald, clock, Socket, ws, events, sub } = await subscribed("news", 0);
  for (const o of [1, 2, 3]) ws.receive(msg("news", o));
  ws.drop(1006);
  await clock.advance(500);
  const ws2 = await accept(Socket);
  const [again] = ws2.frames("subscribe");
  assert.deepEqual(again.since, { offset: 3, epoch: "e1" });
  ws2.receive({ type: "subscribed", channel: "news", offset: 53, epoch: "e1", recovered: false, id: again.id });
  ws2.receive(msg("news", 54));
  assert.deepEqual(events.gaps, [
    { channel: "news", from: { offset: 3, epoch: "e1" }, to: { offset: 53, epoch: "e1" }, reason: "not_recovered" },
  ]);
  assert.deepEqual(
    events.messages.map((m) => m.offset),
    [1, 2, 3, 54],
  );
  assert.deepEqual(sub.position, { offset: 54, epoch: "e1" });
  assert.equal(events.subscribed.at(-1).recovered, false);
  herald.close();
});

test("a subscription made with since recovers from it on the first connection", async () => {
  const { herald, Socket } = client();
  const sub = herald.subscribe("news", { since: { offset: 41, epoch: "e9" } });
  assert.deepEqual(sub.position, { offset: 41, epoch: "e9" });
  const ws = await accept(Socket);
  assert.deepEqual(ws.frames("subscribe")[0].since, { offset: 41, epoch: "e9" });
  herald.close();
});

test("a forbidden subscribe is final: an error event, no retries, the subscription gone", async () => {
  const { herald, clock, Socket, log } = client();
  const sub = herald.subscribe("secret");
  const errors = [];
  sub.on("error", (e) => errors.push(e));
  const ws = await accept(Socket);
  const [f] = ws.frames("subscribe");
  ws.receive({ type: "error", code: "forbidden", message: "not allowed", channel: "secret", id: f.id });
  assert.deepEqual(errors, [{ code: "forbidden", message: "not allowed", channel: "secret" }]);
  assert.equal(sub.state, "closed");
  assert.deepEqual(log.errors, []);
  await clock.advance(60_000);
  ws.receive({ type: "heartbeat" });
  assert.equal(ws.frames("subscribe").length, 1);
  // Not resubscribed after a reconnect either, and the channel may be subscribed anew.
  ws.drop(1006);
  await clock.advance(500);
  const ws2 = await accept(Socket);
  assert.deepEqual(ws2.frames("subscribe"), []);
  herald.subscribe("secret");
  assert.equal(ws2.frames("subscribe").length, 1);
  herald.close();
});

test("a refused subscribe nobody listens to is reported on the client", async () => {
  const { herald, Socket, log } = client();
  herald.subscribe("bad name!");
  const ws = await accept(Socket);
  ws.receive({ type: "error", code: "bad_request", message: "invalid channel name", id: ws.frames("subscribe")[0].id });
  assert.deepEqual(log.errors, [{ code: "bad_request", message: "invalid channel name", channel: "bad name!" }]);
  herald.close();
});

test("an unavailable subscribe is retried after a backoff, with the same since", async () => {
  const { herald, clock, Socket } = client(undefined, { random: () => 1 });
  const sub = herald.subscribe("news", { since: { offset: 7, epoch: "e1" } });
  const got = [];
  sub.on("subscribed", (i) => got.push(i));
  const ws = await accept(Socket, { heartbeat: 1_000_000 });
  ws.receive({ type: "error", code: "unavailable", message: "redis down", channel: "news", id: ws.frames("subscribe")[0].id });
  await clock.advance(499);
  assert.equal(ws.frames("subscribe").length, 1);
  await clock.advance(1);
  const [, retry] = ws.frames("subscribe");
  assert.deepEqual(retry.since, { offset: 7, epoch: "e1" });
  ws.receive({ type: "error", code: "unavailable", message: "redis down", channel: "news", id: retry.id });
  await clock.advance(1000);
  const third = ws.frames("subscribe")[2];
  ws.receive({ type: "subscribed", channel: "news", offset: 7, epoch: "e1", recovered: true, id: third.id });
  assert.equal(got.length, 1);
  assert.equal(sub.state, "subscribed");
  herald.close();
});

test("unsubscribe sends the frame and drops the local state at once", async () => {
  const { herald, ws, sub, events } = await subscribed("news", 0);
  ws.receive(msg("news", 1));
  sub.unsubscribe();
  const [u] = ws.frames("unsubscribe");
  assert.deepEqual(u, { type: "unsubscribe", channel: "news", id: u.id });
  ws.receive(msg("news", 2));
  ws.receive({ type: "unsubscribed", channel: "news", id: u.id });
  assert.deepEqual(
    events.messages.map((m) => m.offset),
    [1],
  );
  assert.equal(sub.state, "closed");
  // A second unsubscribe is a no-op; the channel can be subscribed again.
  sub.unsubscribe();
  assert.equal(ws.frames("unsubscribe").length, 1);
  const again = herald.subscribe("news");
  assert.notEqual(again, sub);
  herald.close();
});

test("subscribing twice to one channel is refused", async () => {
  const { herald } = client();
  herald.subscribe("news");
  assert.throws(() => herald.subscribe("news"), { code: "already_subscribed" });
  herald.close();
});

test("a listener that throws does not break delivery", async () => {
  const { herald, ws, sub, events } = await subscribed("news", 0);
  const reported = [];
  const original = console.error;
  console.error = (e) => reported.push(e);
  try {
    sub.on("message", () => {
      throw new Error("app bug");
    });
    ws.receive(msg("news", 1));
    ws.receive(msg("news", 2));
  } finally {
    console.error = original;
  }
  assert.deepEqual(
    events.messages.map((m) => m.offset),
    [1, 2],
  );
  assert.equal(reported.length, 2);
  herald.close();
});
