// The pure helpers of herald.js: backoff, token refresh timing, batch unpacking and the
// verdict on a closed socket.

import { test } from "node:test";
import assert from "node:assert/strict";

import { backoffDelay, classifyClose, decodeJwtPayload, refreshDelay, unpackBatch } from "../herald.js";
import { jwt } from "./helpers.mjs";

const bounds = { min: 500, max: 20000 };

test("backoffDelay grows exponentially up to the maximum", () => {
  const ceil = (n) => backoffDelay(n, bounds, () => 1);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map(ceil), [500, 1000, 2000, 4000, 8000, 16000, 20000]);
  assert.equal(ceil(100), 20000);
  assert.equal(ceil(1e9), 20000);
});

test("backoffDelay has full jitter: anywhere from 0 to the ceiling", () => {
  assert.equal(backoffDelay(3, bounds, () => 0), 0);
  assert.equal(backoffDelay(3, bounds, () => 0.5), 2000);
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(i % 12, bounds);
    assert.ok(d >= 0 && d <= 20000, `${d}`);
  }
});

test("decodeJwtPayload reads base64url claims and refuses what is not a JWT", () => {
  assert.deepEqual(decodeJwtPayload(jwt({ sub: "ann", exp: 10, name: "Zoë ✓" })), { sub: "ann", exp: 10, name: "Zoë ✓" });
  assert.equal(decodeJwtPayload("opaque"), null);
  assert.equal(decodeJwtPayload("a.%%%.c"), null);
  assert.equal(decodeJwtPayload(null), null);
});

test("refreshDelay uses exp - iat so the browser's clock does not matter", () => {
  const now = 1_767_623_577_000;
  // 15 minutes: margin 60 s (lifetime / 5 capped) + 1 s for whole-second claims.
  const t = jwt({ iat: 100, exp: 100 + 900 });
  assert.equal(refreshDelay(t, now), 900_000 - 61_000);
  // The same token whatever the client's clock says.
  assert.equal(refreshDelay(t, 0), refreshDelay(t, now));
  // 60 s: margin 12 s + 1 s.
  assert.equal(refreshDelay(jwt({ iat: 0, exp: 60 }), now), 47_000);
  // 4 s: margin 1 s (at least) + 1 s.
  assert.equal(refreshDelay(jwt({ iat: 0, exp: 4 }), now), 2_000);
  // 2 s: never earlier than half the lifetime.
  assert.equal(refreshDelay(jwt({ iat: 0, exp: 2 }), now), 1_000);
});

test("refreshDelay falls back to exp - now without iat, and to null without exp", () => {
  const now = 1_000_000_000;
  assert.equal(refreshDelay(jwt({ exp: now / 1000 + 100 }), now), 100_000 - 21_000);
  assert.equal(refreshDelay(jwt({ exp: now / 1000 - 1 }), now), null);
  assert.equal(refreshDelay(jwt({ sub: "ann" }), now), null);
  assert.equal(refreshDelay("opaque", now), null);
});

test("unpackBatch returns the inner deliveries in order, or the frame itself", () => {
  const a = { type: "message", channel: "c", offset: 1, epoch: "e" };
  const b = { type: "user_message", channel: "c", offset: 2, epoch: "e" };
  assert.deepEqual(unpackBatch({ type: "batch_messages", count: 2, messages: [a, b] }), [a, b]);
  assert.deepEqual(unpackBatch(a), [a]);
  assert.deepEqual(unpackBatch({ type: "batch_messages", messages: [a, 3, null, { type: "batch_messages", messages: [b] }] }), [a]);
  assert.deepEqual(unpackBatch({ type: "batch_messages" }), []);
  assert.deepEqual(unpackBatch(null), []);
});

test("classifyClose: disconnect frames decide", () => {
  const d = (code, reconnect, extra = {}) => ({ type: "disconnect", code, reason: code, reconnect, ...extra });
  assert.equal(classifyClose(1013, "slow_consumer", d("slow_consumer", true), false).reconnect, true);
  assert.equal(classifyClose(1001, "going away", d("shutdown", true), false).reconnect, true);
  assert.equal(classifyClose(1008, "token revoked", d("token_revoked", false), true).reconnect, false);
  assert.equal(classifyClose(1008, "token expired", d("token_expired", false), false).reconnect, false);
  assert.equal(classifyClose(1008, "token expired", d("token_expired", false), true).reconnect, true);
  assert.equal(classifyClose(4403, "forbidden", d("forbidden", false), true).reconnect, false);
  assert.equal(classifyClose(4401, "authentication_failed", d("authentication_failed", false), true).reconnect, false);
  assert.deepEqual(classifyClose(4429, "rate_limited", d("rate_limited", true, { retry_after_ms: 1000 }), false), {
    reconnect: true,
    minDelay: 1000,
    authFailure: false,
  });
  assert.equal(classifyClose(4503, "over_capacity", d("over_capacity", true, { retry_after_ms: 3000 }), false).minDelay, 3000);
});

test("classifyClose: without a frame the close code decides", () => {
  assert.equal(classifyClose(1006, "", null, false).reconnect, true);
  assert.equal(classifyClose(1001, "heartbeat timeout", null, false).reconnect, true);
  assert.equal(classifyClose(4403, "forbidden", null, true).reconnect, false);
  assert.equal(classifyClose(4429, "rate_limited", null, false).reconnect, true);
  assert.deepEqual(classifyClose(1008, "authentication failed", null, true), { reconnect: true, minDelay: 0, authFailure: true });
  assert.deepEqual(classifyClose(1008, "authentication failed", null, false), { reconnect: false, minDelay: 0, authFailure: true });
  assert.equal(classifyClose(1008, "authentication timeout", null, false).reconnect, true);
  assert.equal(classifyClose(1008, "rate limit exceeded", null, true).reconnect, false);
});
