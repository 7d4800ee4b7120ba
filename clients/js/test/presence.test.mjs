// Presence: the presence and presence_stats reads (frames, answers, refusals, the
// queue while disconnected), and join/leave events of a subscription made with
// joinLeave (the flag on every subscribe, the events kept out of the offset tracking).

import { test } from "node:test";
import assert from "node:assert/strict";

import { HeraldError } from "../herald.js";
import { accept, client, flush, msg } from "./helpers.mjs";

const ALICE = { user_id: "alice", conn_id: "c-alice", info: { name: "Alice" } };
const BOB = { user_id: "bob", conn_id: "c-bob" };

// --- reads ---

test("presence() sends a presence request and resolves with the members", async () => {
  const { herald, Socket, log } = client();
  const ws = await accept(Socket);
  const p = herald.presence("room:1");
  const [frame] = ws.frames("presence");
  assert.deepEqual(frame, { type: "presence", channel: "room:1", id: frame.id });
  assert.equal(typeof frame.id, "number");
  ws.receive({ type: "presence", channel: "room:1", id: frame.id, members: [ALICE, BOB], truncated: false });
  assert.deepEqual(await p, {
    members: [
      { userId: "alice", connId: "c-alice", info: { name: "Alice" } },
      { userId: "bob", connId: "c-bob" },
    ],
    truncated: false,
  });
  const q = herald.presence("room:1");
  ws.receive({ type: "presence", channel: "room:1", id: ws.frames("presence")[1].id, members: [], truncated: true, extra: 1 });
  assert.deepEqual(await q, { members: [], truncated: true });
  assert.deepEqual(log.errors, []);
  herald.close();
});

test("presenceStats() sends a presence_stats request and resolves with the counts", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const p = herald.presenceStats("room:1");
  const [frame] = ws.frames("presence_stats");
  assert.deepEqual(frame, { type: "presence_stats", channel: "room:1", id: frame.id });
  ws.receive({ type: "presence_stats", channel: "room:1", id: frame.id, num_clients: 3, num_users: 2 });
  assert.deepEqual(await p, { numClients: 3, numUsers: 2 });
  herald.close();
});

test("answers are matched by id and kind: another kind's reply with the id settles nothing", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const members = herald.presence("room:1");
  const stats = herald.presenceStats("room:1");
  const read = herald.history("room:1");
  const [fm] = ws.frames("presence");
  const [fs] = ws.frames("presence_stats");
  const [fh] = ws.frames("history");
  ws.receive({ type: "presence_stats", channel: "room:1", id: fm.id, num_clients: 9, num_users: 9 });
  ws.receive({ type: "history", channel: "room:1", id: fm.id, publications: [], offset: 0, epoch: "e1" });
  ws.receive({ type: "presence", channel: "room:1", id: fs.id, members: [BOB], truncated: false });
  ws.receive({ type: "presence", channel: "room:1", id: fh.id, members: [BOB], truncated: false });
  ws.receive({ type: "ack", channel: "room:1", id: fs.id, offset: 1, epoch: "e1" });
  ws.receive({ type: "presence", channel: "room:1", id: 9999, members: [], truncated: false });
  let settled = 0;
  for (const p of [members, stats, read]) p.then(() => settled++, () => settled++);
  await flush();
  assert.equal(settled, 0);
  ws.receive({ type: "presence_stats", channel: "room:1", id: fs.id, num_clients: 1, num_users: 1 });
  ws.receive({ type: "presence", channel: "room:1", id: fm.id, members: [ALICE], truncated: false });
  ws.receive({ type: "history", channel: "room:1", id: fh.id, publications: [], offset: 0, epoch: "e1" });
  assert.deepEqual(await stats, { numClients: 1, numUsers: 1 });
  assert.deepEqual((await members).members.map((m) => m.userId), ["alice"]);
  assert.deepEqual(await read, { publications: [], offset: 0, epoch: "e1" });
  herald.close();
});

for (const [method, type] of [
  ["presence", "presence"],
  ["presenceStats", "presence_stats"],
]) {
  for (const code of ["forbidden", "unavailable", "bad_request"]) {
    test(`${method}() refused with ${code} rejects with that code`, async () => {
      const { herald, Socket, log } = client();
      const ws = await accept(Socket);
      const p = herald[method]("room:1");
      const [frame] = ws.frames(type);
      ws.receive({ type: "error", code, message: `refused: ${code}`, channel: "room:1", id: frame.id });
      await assert.rejects(
        p,
        (e) => e instanceof HeraldError && e.code === code && e.message === `refused: ${code}` && e.channel === "room:1",
      );
      // It answered the request: not reported as a stray error.
      assert.deepEqual(log.errors, []);
      herald.close();
    });
  }

  test(`${method}() rate limited rejects with rate_limited and the delay`, async () => {
    const { herald, Socket } = client();
    const ws = await accept(Socket);
    const p = herald[method]("room:1");
    ws.receive({ type: "error", code: "rate_limited", message: "slow down", retry_after_ms: 700, id: ws.frames(type)[0].id });
    await assert.rejects(p, { code: "rate_limited", retryAfterMs: 700 });
    herald.close();
  });

  test(`${method}() with a bad channel rejects with a TypeError and sends nothing`, async () => {
    const { herald, Socket } = client();
    const ws = await accept(Socket);
    for (const channel of [undefined, "", 42, null]) {
      await assert.rejects(herald[method](channel), TypeError, String(channel));
    }
    assert.deepEqual(ws.frames(type), []);
    herald.close();
  });
}

test("malformed answers reject with protocol rather than passing for fewer members", async () => {
  const { herald, Socket } = client();
  const ws = await accept(Socket);
  const bad = [
    { truncated: false },
    { members: "alice", truncated: false },
    { members: [ALICE, { user_id: "bob" }], truncated: false },
    { members: [ALICE, null], truncated: false },
  ];
  for (const answer of bad) {
    const p = herald.presence("room:1");
    ws.receive({ type: "presence", channel: "room:1", id: ws.frames("presence").at(-1).id, ...answer });
    await assert.rejects(p, (e) => e instanceof HeraldError && e.code === "protocol" && e.channel === "room:1", JSON.stringify(answer));
  }
  for (const answer of [{ num_clients: 1 }, { num_clients: -1, num_users: 0 }, { num_clients: "3", num_users: 2 }]) {
    const p = herald.presenceStats("room:1");
    ws.receive({ type: "presence_stats", channel: "room:1", id: ws.frames("presence_stats").at(-1).id, ...answer });
    await assert.rejects(p, { code: "protocol" }, JSON.stringify(answer));
  }
  herald.close();
});

test("reads made while disconnected wait and are sent after auth_success, in call order", async () => {
  const { herald, Socket } = client();
  const a = herald.presence("room:1");
  const pub = herald.publish("room:1", "x");
  const b = herald.presenceStats("room:1");
  const c = herald.history("room:1");
  await flush();
  Socket.last.open();
  assert.deepEqual(Socket.last.frames("presence"), []);
  const ws = await accept(Socket);
  assert.deepEqual(
    ws.sent.filter((f) => f.type !== "auth").map((f) => [f.type, f.channel]),
    [
      ["presence", "room:1"],
      ["broadcast", "room:1"],
      ["presence_stats", "room:1"],
      ["history", "room:1"],
    ],
  );
  ws.receive({ type: "presence_stats", channel: "room:1", id: ws.frames("presence_stats")[0].id, num_clients: 1, num_users: 1 });
  ws.receive({ type: "presence", channel: "room:1", id: ws.frames("presence")[0].id, members: [BOB], truncated: false });
  ws.receive({ type: "history", channel: "room:1", id: ws.frames("history")[0].id, publications: [], offset: 0, epoch: "e1" });
  ws.receive({ type: "ack", channel: "room:1", id: ws.frames("broadcast")[0].id, offset: 1, epoch: "e1" });
  assert.deepEqual(await a, { members: [{ userId: "bob", connId: "c-bob" }], truncated: false });
  assert.deepEqual(await b, { numClients: 1, numUsers: 1 });
  await c;
  await pub;
  herald.close();
});

test("a read in flight when the connection drops rejects with disconnected and is not resent", async () => {
  const { herald, clock, Socket } = client();
  const ws = await accept(Socket);
  const p = herald.presence("room:1");
  const s = herald.presenceStats("room:1");
  ws.drop(1006);
  await assert.rejects(p, (e) => e instanceof HeraldError && e.code === "disconnected");
  await assert.rejects(s, { code: "disconnected" });
  await clock.advance(500);
  const ws2 = await accept(Socket);
  assert.deepEqual(ws2.frames("presence"), []);
  assert.deepEqual(ws2.frames("presence_stats"), []);
  herald.close();
});

test("an unanswered read rejects with timeout after publishTimeout", async () => {
  const { herald, clock, Socket } = client(undefined, { publishTimeout: 3000 });
  const ws = await accept(Socket);
  const p = herald.presence("room:1");
  const s = herald.presenceStats("room:1");
  p.catch(() => {});
  s.catch(() => {});
  await clock.advance(3000);
  await assert.rejects(p, { code: "timeout" });
  await assert.rejects(s, { code: "timeout" });
  // A late answer is ignored.
  ws.receive({ type: "presence", channel: "room:1", id: ws.frames("presence")[0].id, members: [], truncated: false });
  herald.close();
  assert.equal(clock.pending, 0);
});

test("presence reads share the reads' bound: they never crowd out publishes", async () => {
  const { herald, Socket } = client(undefined, { publishQueueSize: 1 });
  const read = herald.history("room:1");
  await assert.rejects(herald.presence("room:1"), { code: "queue_full" });
  await assert.rejects(herald.presenceStats("room:1"), { code: "queue_full" });
  const pub = herald.publish("room:1", 1);
  await accept(Socket);
  herald.close();
  await assert.rejects(read, { code: "closed" });
  await assert.rejects(pub, { code: "closed" });
});

test("a closed client rejects presence reads with closed, pending and new", async () => {
  const { herald, Socket } = client();
  await accept(Socket);
  const pending = herald.presence("room:1");
  herald.close();
  await assert.rejects(pending, { code: "closed" });
  await assert.rejects(herald.presence("room:1"), { code: "closed" });
  await assert.rejects(herald.presenceStats("room:1"), { code: "closed" });
});

// --- join/leave ---

/** A client whose subscription to room:1 asked for join/leave, confirmed at `offset`. */
async function listening(offset = 0, options = {}) {
  const c = client();
  const sub = c.herald.subscribe("room:1", { joinLeave: true, ...options });
  const events = { joins: [], leaves: [], messages: [], gaps: [] };
  sub.on("join", (e) => events.joins.push(e));
  sub.on("leave", (e) => events.leaves.push(e));
  sub.on("message", (m) => events.messages.push(m.offset));
  sub.on("gap", (g) => events.gaps.push(g));
  const ws = await accept(c.Socket);
  ws.receive({ type: "subscribed", channel: "room:1", offset, epoch: "e1", id: ws.frames("subscribe")[0].id });
  return { ...c, sub, ws, events };
}

test("joinLeave puts join_leave on the subscribe; without it the frame has none", async () => {
  const { herald, Socket } = client();
  herald.subscribe("room:1", { joinLeave: true });
  herald.subscribe("room:2");
  herald.subscribe("room:3", { joinLeave: false });
  herald.subscribe("room:4", { joinLeave: null });
  const ws = await accept(Socket);
  const frames = ws.frames("subscribe");
  assert.deepEqual(frames[0], { type: "subscribe", channel: "room:1", join_leave: true, id: frames[0].id });
  for (const f of frames.slice(1)) assert.deepEqual(f, { type: "subscribe", channel: f.channel, id: f.id });
  // A subscription made while connected asks at once.
  herald.subscribe("room:5", { joinLeave: true });
  assert.equal(ws.frames("subscribe").at(-1).join_leave, true);
  herald.close();
});

test("joinLeave that is not a boolean is refused", async () => {
  const { herald } = client();
  for (const joinLeave of ["yes", 1, {}]) {
    assert.throws(() => herald.subscribe("room:1", { joinLeave }), TypeError);
  }
  herald.close();
});

test("join_leave is on the resubscribe after a reconnect, with since", async () => {
  const { herald, clock, Socket, ws } = await listening(4);
  ws.receive(msg("room:1", 5));
  ws.drop(1006);
  await clock.advance(500);
  const ws2 = await accept(Socket);
  const [again] = ws2.frames("subscribe");
  assert.deepEqual(again, { type: "subscribe", channel: "room:1", since: { offset: 5, epoch: "e1" }, join_leave: true, id: again.id });
  herald.close();
});

test("join_leave is on a recovery subscribe and on a retried one", async () => {
  const { herald, clock, ws, events } = await listening(0);
  ws.receive(msg("room:1", 1));
  ws.receive(msg("room:1", 3));
  const [, recovery] = ws.frames("subscribe");
  assert.deepEqual(recovery, { type: "subscribe", channel: "room:1", since: { offset: 1, epoch: "e1" }, join_leave: true, id: recovery.id });
  ws.receive({ type: "error", code: "unavailable", message: "redis down", channel: "room:1", id: recovery.id });
  await clock.advance(500);
  const [, , retry] = ws.frames("subscribe");
  assert.deepEqual(retry, { type: "subscribe", channel: "room:1", since: { offset: 1, epoch: "e1" }, join_leave: true, id: retry.id });
  ws.receive(msg("room:1", 2));
  ws.receive({ type: "subscribed", channel: "room:1", offset: 3, epoch: "e1", recovered: true, id: retry.id });
  assert.deepEqual(events.messages, [1, 2, 3]);
  herald.close();
});

test("join and leave are emitted with the member, and leave the position alone", async () => {
  const { herald, ws, sub, events } = await listening(7);
  ws.receive(msg("room:1", 8));
  ws.receive({ type: "join", channel: "room:1", ...ALICE });
  ws.receive({ type: "join", channel: "room:1", ...BOB });
  ws.receive({ type: "leave", channel: "room:1", ...ALICE });
  assert.deepEqual(events.joins, [
    { channel: "room:1", userId: "alice", connId: "c-alice", info: { name: "Alice" } },
    { channel: "room:1", userId: "bob", connId: "c-bob" },
  ]);
  assert.deepEqual(events.leaves, [{ channel: "room:1", userId: "alice", connId: "c-alice", info: { name: "Alice" } }]);
  // No recovery asked, no gap, delivery goes on from the same position.
  assert.deepEqual(sub.position, { offset: 8, epoch: "e1" });
  assert.equal(ws.frames("subscribe").length, 1);
  ws.receive(msg("room:1", 9));
  assert.deepEqual(events.messages, [8, 9]);
  assert.deepEqual(events.gaps, []);
  assert.deepEqual(sub.position, { offset: 9, epoch: "e1" });
  herald.close();
});

test("an event before the first subscribed is emitted, not held as a delivery", async () => {
  const { herald, Socket } = client();
  const sub = herald.subscribe("room:1", { joinLeave: true });
  const joins = [];
  const messages = [];
  sub.on("join", (e) => joins.push(e.userId));
  sub.on("message", (m) => messages.push(m.offset));
  const ws = await accept(Socket);
  ws.receive({ type: "join", channel: "room:1", ...BOB });
  assert.deepEqual(joins, ["bob"]);
  assert.equal(sub.position, null);
  ws.receive({ type: "subscribed", channel: "room:1", offset: 2, epoch: "e1", id: ws.frames("subscribe")[0].id });
  ws.receive(msg("room:1", 3));
  assert.deepEqual(messages, [3]);
  assert.deepEqual(sub.position, { offset: 3, epoch: "e1" });
  assert.equal(ws.frames("subscribe").length, 1);
  herald.close();
});

test("events reach only a subscription that asked for them", async () => {
  const { herald, Socket } = client();
  const plain = herald.subscribe("room:2");
  const seen = [];
  plain.on("join", (e) => seen.push(e));
  plain.on("leave", (e) => seen.push(e));
  const ws = await accept(Socket);
  ws.receive({ type: "subscribed", channel: "room:2", offset: 0, epoch: "e1", id: ws.frames("subscribe")[0].id });
  ws.receive({ type: "join", channel: "room:2", ...BOB });
  ws.receive({ type: "leave", channel: "room:9", ...BOB });
  assert.deepEqual(seen, []);
  // Nor after unsubscribing.
  const { herald: h2, ws: ws2, sub, events } = await listening(0);
  sub.unsubscribe();
  ws2.receive({ type: "join", channel: "room:1", ...BOB });
  assert.deepEqual(events.joins, []);
  herald.close();
  h2.close();
});

test("an event inside a batch is still an event; a malformed one is ignored", async () => {
  const { herald, ws, sub, events, log } = await listening(0);
  ws.receive({
    type: "batch_messages",
    count: 3,
    messages: [msg("room:1", 1), { type: "join", channel: "room:1", ...BOB }, msg("room:1", 2)],
  });
  ws.receive({ type: "leave", channel: "room:1", user_id: "bob" });
  ws.receive({ type: "leave", channel: "room:1", conn_id: 5, user_id: "bob" });
  assert.deepEqual(events.joins, [{ channel: "room:1", userId: "bob", connId: "c-bob" }]);
  assert.deepEqual(events.leaves, []);
  assert.deepEqual(events.messages, [1, 2]);
  assert.deepEqual(sub.position, { offset: 2, epoch: "e1" });
  assert.deepEqual(log.errors, []);
  herald.close();
});
