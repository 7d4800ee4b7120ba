// With the real clock: a closed client leaves no timer behind, so a Node process that
// used it exits on its own. The waits here are short and bounded.

import { test } from "node:test";
import assert from "node:assert/strict";

import { Herald } from "../herald.js";
import { flush, jwt, socketClass } from "./helpers.mjs";

const timeouts = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;

test("close() leaves no timer running", async () => {
  const before = timeouts();
  const Socket = socketClass();
  const herald = new Herald(["ws://gw1/ws", "ws://gw2/ws"], {
    getToken: async () => jwt({ iat: 0, exp: 3600 }),
    WebSocket: Socket,
    networkEvents: null,
  });
  const sub = herald.subscribe("news");
  sub.on("message", () => {});
  await flush();
  const ws = Socket.last;
  ws.open();
  ws.receive({ type: "auth_success", id: ws.sent[0].id, heartbeat_interval_ms: 25000 });
  const pending = herald.publish("news", { text: "hi" });
  const queuedAfterDrop = (async () => {
    ws.drop(1006);
    return herald.publish("news", 2);
  })();
  // A reconnect, a publish timeout and more are now scheduled.
  assert.ok(timeouts() > before);
  herald.close();
  await assert.rejects(pending, { code: "disconnected" });
  await assert.rejects(queuedAfterDrop, { code: "closed" });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(timeouts(), before);
});

test("a client stopped by the server leaves no timer running either", async () => {
  const before = timeouts();
  const Socket = socketClass();
  const herald = new Herald("ws://gw/ws", { token: "t", WebSocket: Socket, networkEvents: null });
  const stopped = new Promise((resolve) => herald.on("state", (s) => s.reconnect === false && resolve(s)));
  await flush();
  Socket.last.open();
  Socket.last.receive({ type: "disconnect", code: "forbidden", reason: "origin not allowed", reconnect: false });
  Socket.last.drop(4403, "forbidden");
  assert.equal((await stopped).code, 4403);
  assert.equal(timeouts(), before);
});
