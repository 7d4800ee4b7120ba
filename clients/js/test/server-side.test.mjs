// Server-side subscriptions through the WebSocket stub: the backend (or the personal
// channel at login) subscribes the connection, the client keeps the subscription's
// position across reconnects and recovers what it missed, and `disconnect` frames with
// the backend's own codes stop or reconnect the client.

import { test } from "node:test";
import assert from "node:assert/strict";

import { classifyClose } from "../herald.js";
import { accept, client, msg } from "./helpers.mjs";

const ME = "user:ann";

/** A `user_message` on `channel`, as `/v1/user-messages` publishes it. */
function userMsg(channel, offset, epoch = "e1") {
  return {
    type: "user_message",
    channel,
    offset,
    epoch,
    user_id: "ann",
    content: { n: offset },
    timestamp: "2026-01-05T14:47:57.123Z",
  };
}

/** The `subscribed` the server sends when it subscribes the connection itself. */
function serverSubscribed(channel, offset, epoch = "e1", extra = {}) {
  return { type: "subscribed", channel, offset, epoch, server: true, ...extra };
}

/** A client recording the server-side subscriptions' client-level events. */
function recording(urls, options) {
  const c = client(urls, options);
  const events = [];
  for (const name of ["serverSubscribed", "serverUnsubscribed", "publication", "gap"]) {
    c.herald.on(name, (value) => events.push([name, value]));
  }
  const offsets = () => events.filter(([name]) => name === "publication").map(([, m]) => m.offset);
  return { ...c, events, offsets };
}

test("a server-side subscription emits serverSubscribed, then its deliveries as publications", async () => {
  const { herald, Socket, events, offsets } = recording();
  const ws = await accept(Socket);
  ws.receive(serverSubscribed(ME, 3));
  assert.deepEqual(events, [
    ["serverSubscribed", { channel: ME, offset: 3, epoch: "e1", recovered: undefined, position: { offset: 3, epoch: "e1" } }],
  ]);
  ws.receive(userMsg(ME, 4));
  ws.receive(userMsg(ME, 4));
  ws.receive({ type: "batch_messages", count: 2, messages: [userMsg(ME, 5), userMsg(ME, 3)] });
  assert.deepEqual(offsets(), [4, 5]);
  const [, m] = events[1];
  // The shape of a subscription's `message` event.
  assert.deepEqual(
    { ...m, frame: undefined },
    {
      channel: ME,
      type: "user_message",
      data: { n: 4 },
      offset: 4,
      epoch: "e1",
      timestamp: "2026-01-05T14:47:57.123Z",
      fromUser: "ann",
      frame: undefined,
    },
  );
  assert.deepEqual(m.frame, userMsg(ME, 4));
  assert.deepEqual(herald.serverSubscriptions, [{ channel: ME, position: { offset: 5, epoch: "e1" }, live: true }]);
  // Nothing was asked of the server.
  assert.deepEqual(ws.sent.map((f) => f.type), ["auth"]);
  herald.close();
});

test("after a reconnect, a re-subscribe at a higher offset is recovered with since: each message once", async () => {
  const { herald, clock, Socket, events, offsets } = recording();
  const ws1 = await accept(Socket);
  ws1.receive(serverSubscribed(ME, 0));
  ws1.receive(userMsg(ME, 1));
  ws1.receive(userMsg(ME, 2));
  ws1.drop(1006);
  assert.deepEqual(herald.serverSubscriptions, [{ channel: ME, position: { offset: 2, epoch: "e1" }, live: false }]);

  await clock.advance(500);
  const ws2 = await accept(Socket);
  // The personal channel again at login; 3 and 4 were published meanwhile.
  ws2.receive(serverSubscribed(ME, 4));
  assert.deepEqual(events.at(-1), [
    "serverSubscribed",
    { channel: ME, offset: 4, epoch: "e1", recovered: undefined, position: { offset: 2, epoch: "e1" } },
  ]);
  const renew = ws2.frames("subscribe");
  assert.deepEqual(renew, [{ type: "subscribe", channel: ME, since: { offset: 2, epoch: "e1" }, id: renew[0].id }]);
  // A live delivery overtakes the replay: held, not delivered out of order.
  ws2.receive(userMsg(ME, 5));
  assert.deepEqual(offsets(), [1, 2]);
  ws2.receive(userMsg(ME, 3));
  ws2.receive(userMsg(ME, 3));
  ws2.receive(userMsg(ME, 4));
  ws2.receive({ type: "subscribed", channel: ME, offset: 4, epoch: "e1", recovered: true, id: renew[0].id });
  ws2.receive(userMsg(ME, 5));
  ws2.receive(userMsg(ME, 6));
  assert.deepEqual(offsets(), [1, 2, 3, 4, 5, 6]);
  assert.equal(events.filter(([name]) => name === "gap").length, 0);
  assert.equal(ws2.frames("subscribe").length, 1);
  assert.deepEqual(herald.serverSubscriptions, [{ channel: ME, position: { offset: 6, epoch: "e1" }, live: true }]);
  herald.close();
});

test("a re-subscribe at the same offset needs nothing; one in another epoch is a gap", async () => {
  const { herald, clock, Socket, events, offsets } = recording();
  const ws1 = await accept(Socket);
  ws1.receive(serverSubscribed(ME, 7));
  ws1.receive(serverSubscribed("room:1", 2));
  ws1.receive(userMsg(ME, 8));
  ws1.drop(1006);
  await clock.advance(500);
  const ws2 = await accept(Socket);
  ws2.receive(serverSubscribed(ME, 8));
  ws2.receive(serverSubscribed("room:1", 1, "e2"));
  assert.deepEqual(ws2.frames("subscribe"), []);
  assert.deepEqual(
    events.filter(([name]) => name === "gap"),
    [["gap", { channel: "room:1", from: { offset: 2, epoch: "e1" }, to: { offset: 1, epoch: "e2" }, reason: "epoch_changed" }]],
  );
  ws2.receive(msg("room:1", 2, "e2"));
  ws2.receive(userMsg(ME, 9));
  assert.deepEqual(offsets(), [8, 2, 9]);
  herald.close();
});

test("a server-side subscription that does not come back after a reconnect is silent", async () => {
  const { herald, clock, Socket, events } = recording();
  const ws1 = await accept(Socket);
  ws1.receive(serverSubscribed("secret:1", 4));
  ws1.drop(1006);
  await clock.advance(500);
  const ws2 = await accept(Socket);
  await clock.advance(60_000);
  assert.deepEqual(ws2.sent.map((f) => f.type), ["auth"]);
  assert.deepEqual(events.map(([name]) => name), ["serverSubscribed"]);
  // Kept, with its position, in case the backend subscribes the connection again.
  assert.deepEqual(herald.serverSubscriptions, [{ channel: "secret:1", position: { offset: 4, epoch: "e1" }, live: false }]);
  herald.close();
});

test("the backend's replay before a new server-side subscription is delivered, then live delivery", async () => {
  const { herald, Socket, events, offsets } = recording();
  const ws = await accept(Socket);
  // `/v1/subscribe` with since 1: 2 and 3 replayed, then `subscribed` recovered.
  ws.receive(msg("secret:1", 2));
  ws.receive(msg("secret:1", 3));
  ws.receive(serverSubscribed("secret:1", 3, "e1", { recovered: true }));
  ws.receive(msg("secret:1", 3));
  ws.receive(msg("secret:1", 4));
  assert.deepEqual(events[0], [
    "serverSubscribed",
    { channel: "secret:1", offset: 3, epoch: "e1", recovered: true, position: { offset: 1, epoch: "e1" } },
  ]);
  assert.deepEqual(offsets(), [2, 3, 4]);
  assert.deepEqual(ws.frames("subscribe"), []);
  herald.close();
});

test("deliveries before a server-side subscription without a replay are not delivered", async () => {
  const { herald, Socket, offsets } = recording();
  const ws = await accept(Socket);
  ws.receive(msg("news", 5));
  ws.receive(serverSubscribed("news", 5));
  ws.receive(msg("news", 6));
  assert.deepEqual(offsets(), [6]);
  herald.close();
});

test("a gap on a live server-side subscription is recovered with since, one request at a time", async () => {
  const { herald, Socket, offsets } = recording();
  const ws = await accept(Socket);
  ws.receive(serverSubscribed(ME, 1));
  ws.receive(userMsg(ME, 2));
  ws.receive(userMsg(ME, 5));
  ws.receive(userMsg(ME, 6));
  const renew = ws.frames("subscribe");
  assert.deepEqual(renew.map((f) => f.since), [{ offset: 2, epoch: "e1" }]);
  ws.receive(userMsg(ME, 3));
  ws.receive(userMsg(ME, 4));
  ws.receive({ type: "subscribed", channel: ME, offset: 6, epoch: "e1", recovered: true, id: renew[0].id });
  assert.deepEqual(offsets(), [2, 3, 4, 5, 6]);
  herald.close();
});

test("unsubscribed with server:true ends a server-side subscription", async () => {
  const { herald, Socket, events, offsets } = recording();
  const ws = await accept(Socket);
  ws.receive(serverSubscribed("secret:1", 0));
  ws.receive(msg("secret:1", 1));
  ws.receive({ type: "unsubscribed", channel: "secret:1", server: true });
  assert.deepEqual(events.at(-1), ["serverUnsubscribed", { channel: "secret:1" }]);
  assert.deepEqual(herald.serverSubscriptions, []);
  ws.receive(msg("secret:1", 2));
  assert.deepEqual(offsets(), [1]);
  // One for a channel the client holds nothing for says nothing.
  ws.receive({ type: "unsubscribed", channel: "other", server: true });
  assert.equal(events.length, 3);
  herald.close();
});

test("an own subscription is only confirmed by a server subscribed: one delivery each, on the subscription", async () => {
  const { herald, Socket, events } = recording();
  const sub = herald.subscribe(ME);
  const got = [];
  sub.on("message", (m) => got.push(m.offset));
  const ws = await accept(Socket);
  const [s] = ws.frames("subscribe");
  // The gateway subscribes the personal channel before it reads the client's frames.
  ws.receive(serverSubscribed(ME, 3));
  ws.receive({ type: "subscribed", channel: ME, offset: 3, epoch: "e1", id: s.id });
  ws.receive(userMsg(ME, 4));
  ws.receive(serverSubscribed(ME, 4));
  ws.receive(userMsg(ME, 4));
  ws.receive(userMsg(ME, 5));
  assert.deepEqual(got, [4, 5]);
  assert.deepEqual(events, []);
  assert.deepEqual(herald.serverSubscriptions, []);
  assert.equal(ws.frames("subscribe").length, 1);
  herald.close();
});

test("a server subscribed turns join/leave off on the server, so a joinLeave subscription asks again", async () => {
  const { herald, Socket } = recording();
  herald.subscribe("room:1", { joinLeave: true });
  const ws = await accept(Socket);
  const [s] = ws.frames("subscribe");
  ws.receive({ type: "subscribed", channel: "room:1", offset: 3, epoch: "e1", id: s.id });
  ws.receive(serverSubscribed("room:1", 3));
  const again = ws.frames("subscribe");
  assert.equal(again.length, 2);
  assert.deepEqual(again[1], { type: "subscribe", channel: "room:1", since: { offset: 3, epoch: "e1" }, join_leave: true, id: again[1].id });
  herald.close();
});

test("the backend ending an own subscription closes it with an unsubscribed event", async () => {
  const { herald, Socket, events } = recording();
  const sub = herald.subscribe("room:1");
  const ended = [];
  sub.on("unsubscribed", (e) => ended.push(e));
  const ws = await accept(Socket);
  const [s] = ws.frames("subscribe");
  ws.receive({ type: "subscribed", channel: "room:1", offset: 3, epoch: "e1", id: s.id });
  ws.receive({ type: "unsubscribed", channel: "room:1", server: true });
  assert.deepEqual(ended, [{ channel: "room:1" }]);
  assert.equal(sub.state, "closed");
  assert.deepEqual(events, []);
  // The channel is free for a new subscription.
  herald.subscribe("room:1");
  herald.close();
});

test("an own subscribe in flight when the backend ends the channel is left to its answer", async () => {
  const { herald, Socket } = recording();
  const sub = herald.subscribe("room:1");
  const ws = await accept(Socket);
  ws.receive({ type: "unsubscribed", channel: "room:1", server: true });
  assert.equal(sub.state, "subscribing");
  const [s] = ws.frames("subscribe");
  ws.receive({ type: "subscribed", channel: "room:1", offset: 3, epoch: "e1", id: s.id });
  assert.equal(sub.state, "subscribed");
  herald.close();
});

test("subscribe() takes a server-side subscription over from its position", async () => {
  const { herald, Socket, events, offsets } = recording();
  const ws = await accept(Socket);
  ws.receive(serverSubscribed("secret:1", 3));
  ws.receive(msg("secret:1", 4));
  const sub = herald.subscribe("secret:1");
  const got = [];
  sub.on("message", (m) => got.push(m.offset));
  assert.deepEqual(herald.serverSubscriptions, []);
  const s = ws.frames("subscribe");
  assert.deepEqual(s.map((f) => f.since), [{ offset: 4, epoch: "e1" }]);
  ws.receive(msg("secret:1", 5));
  ws.receive({ type: "subscribed", channel: "secret:1", offset: 5, epoch: "e1", recovered: true, id: s[0].id });
  ws.receive(msg("secret:1", 6));
  assert.deepEqual(offsets(), [4]);
  assert.deepEqual(got, [5, 6]);
  assert.deepEqual(events.map(([name]) => name), ["serverSubscribed", "publication"]);
  herald.close();
});

test("a listener taking the channel over mid-step leaves the rest to the new subscription", async () => {
  const { herald, Socket, offsets } = recording();
  const ws = await accept(Socket);
  ws.receive(serverSubscribed("secret:1", 3));
  const got = [];
  herald.on("publication", (m) => {
    if (m.offset !== 5) return;
    herald.subscribe("secret:1").on("message", (own) => got.push(own.offset));
  });
  ws.receive(msg("secret:1", 4));
  // 6 is held and recovered; 5 then releases both in one step.
  ws.receive(msg("secret:1", 6));
  const [renew] = ws.frames("subscribe");
  assert.deepEqual(renew.since, { offset: 4, epoch: "e1" });
  ws.receive(msg("secret:1", 5));
  assert.deepEqual(offsets(), [4, 5]);
  // The subscription goes on after 5, the last publication handed over.
  const [, own] = ws.frames("subscribe");
  assert.deepEqual(own.since, { offset: 5, epoch: "e1" });
  ws.receive({ type: "subscribed", channel: "secret:1", offset: 6, epoch: "e1", recovered: true, id: renew.id });
  ws.receive(msg("secret:1", 6));
  ws.receive({ type: "subscribed", channel: "secret:1", offset: 6, epoch: "e1", recovered: true, id: own.id });
  ws.receive(msg("secret:1", 7));
  assert.deepEqual(got, [6, 7]);
  assert.deepEqual(offsets(), [4, 5]);
  // The renewal's answer found the channel held by the app: nothing undone.
  assert.deepEqual(ws.frames("unsubscribe"), []);
  herald.close();
});

test("deliveries sent before the server saw an unsubscribe are no replay of a later server-side subscription", async () => {
  const { herald, Socket, offsets } = recording();
  const sub = herald.subscribe("room:1");
  const ws = await accept(Socket);
  const [s] = ws.frames("subscribe");
  ws.receive({ type: "subscribed", channel: "room:1", offset: 5, epoch: "e1", id: s.id });
  sub.unsubscribe();
  const [u] = ws.frames("unsubscribe");
  ws.receive(msg("room:1", 6));
  ws.receive(msg("room:1", 7));
  ws.receive({ type: "unsubscribed", channel: "room:1", id: u.id });
  // The backend subscribes the connection with since 8.
  ws.receive(msg("room:1", 9));
  ws.receive(msg("room:1", 10));
  ws.receive(serverSubscribed("room:1", 10, "e1", { recovered: true }));
  assert.deepEqual(offsets(), [9, 10]);
  assert.deepEqual(ws.frames("subscribe").length, 1);
  herald.close();
});

test("a server-side subscription made while our unsubscribe was on its way ends with it", async () => {
  const { herald, Socket, events } = recording();
  const sub = herald.subscribe("room:1");
  const ws = await accept(Socket);
  const [s] = ws.frames("subscribe");
  ws.receive({ type: "subscribed", channel: "room:1", offset: 5, epoch: "e1", id: s.id });
  sub.unsubscribe();
  const [u] = ws.frames("unsubscribe");
  ws.receive(serverSubscribed("room:1", 5));
  ws.receive({ type: "unsubscribed", channel: "room:1", id: u.id });
  assert.deepEqual(events.map(([name]) => name), ["serverSubscribed", "serverUnsubscribed"]);
  assert.deepEqual(herald.serverSubscriptions, []);
  herald.close();
});

test("a renewal answered after the backend ended the subscription is undone", async () => {
  const { herald, clock, Socket, events } = recording();
  const ws1 = await accept(Socket);
  ws1.receive(serverSubscribed(ME, 1));
  ws1.drop(1006);
  await clock.advance(500);
  const ws2 = await accept(Socket);
  ws2.receive(serverSubscribed(ME, 3));
  const [renew] = ws2.frames("subscribe");
  ws2.receive({ type: "unsubscribed", channel: ME, server: true });
  ws2.receive({ type: "subscribed", channel: ME, offset: 3, epoch: "e1", recovered: true, id: renew.id });
  const [u] = ws2.frames("unsubscribe");
  assert.equal(u.channel, ME);
  assert.deepEqual(events.map(([name]) => name), ["serverSubscribed", "serverSubscribed", "serverUnsubscribed"]);
  herald.close();
});

test("a renewal refused as unavailable is retried; refused for good, the subscription is over", async () => {
  const { herald, clock, Socket, events, log } = recording();
  const ws = await accept(Socket);
  ws.receive(serverSubscribed(ME, 1));
  ws.receive(userMsg(ME, 3));
  const [first] = ws.frames("subscribe");
  ws.receive({ type: "error", code: "unavailable", message: "retry", channel: ME, id: first.id });
  await clock.advance(500);
  const [, second] = ws.frames("subscribe");
  assert.deepEqual(second.since, { offset: 1, epoch: "e1" });
  ws.receive({ type: "error", code: "forbidden", message: "not allowed", channel: ME, id: second.id });
  assert.deepEqual(events.at(-1), ["serverUnsubscribed", { channel: ME }]);
  assert.deepEqual(log.errors, [{ code: "forbidden", message: "not allowed", channel: ME }]);
  assert.deepEqual(herald.serverSubscriptions, []);
  herald.close();
});

test("a disconnect with the backend's own code and reconnect:false stops with that code and reason", async () => {
  const { herald, clock, Socket, log } = recording();
  const ws = await accept(Socket);
  ws.receive({ type: "disconnect", code: "banned", reason: "bye", reconnect: false });
  ws.drop(1008, "bye");
  assert.deepEqual(log.states.at(-1), {
    state: "disconnected",
    code: 1008,
    reason: "bye",
    disconnect: "banned",
    reconnect: false,
  });
  await clock.advance(600_000);
  assert.equal(Socket.instances.length, 1);
  assert.equal(clock.pending, 0);
  herald.close();
});

test("a disconnect with reconnect:true backs off and reconnects, and the personal channel is recovered", async () => {
  const { herald, clock, Socket, log, offsets } = recording();
  const ws1 = await accept(Socket);
  ws1.receive(serverSubscribed(ME, 0));
  ws1.receive(userMsg(ME, 1));
  ws1.receive({ type: "disconnect", code: "server_disconnect", reason: "disconnected by the application", reconnect: true });
  ws1.drop(1001, "disconnected by the application");
  const down = log.states.at(-1);
  assert.equal(down.disconnect, "server_disconnect");
  assert.equal(down.reason, "disconnected by the application");
  assert.equal(down.reconnect, true);
  assert.equal(down.delay, 500);
  await clock.advance(499);
  assert.equal(Socket.instances.length, 1);
  await clock.advance(1);
  const ws2 = await accept(Socket);
  ws2.receive(serverSubscribed(ME, 2));
  const [renew] = ws2.frames("subscribe");
  assert.deepEqual(renew.since, { offset: 1, epoch: "e1" });
  ws2.receive(userMsg(ME, 2));
  ws2.receive({ type: "subscribed", channel: ME, offset: 2, epoch: "e1", recovered: true, id: renew.id });
  assert.deepEqual(offsets(), [1, 2]);
  herald.close();
});

test("classifyClose: the backend's own disconnect codes follow their reconnect flag", () => {
  const d = (code, reconnect) => ({ type: "disconnect", code, reason: "bye", reconnect });
  assert.equal(classifyClose(1008, "bye", d("banned", false), true).reconnect, false);
  assert.equal(classifyClose(1008, "bye", d("server_disconnect", false), true).reconnect, false);
  assert.deepEqual(classifyClose(1001, "bye", d("server_disconnect", true), false), {
    reconnect: true,
    minDelay: 0,
    authFailure: false,
  });
  assert.equal(classifyClose(1001, "bye", d("maintenance_2", true), false).reconnect, true);
});
