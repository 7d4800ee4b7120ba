// ChannelTracker: each offset reaches the app once, in order; holes are recovered from
// history or reported as gaps.

import { test } from "node:test";
import assert from "node:assert/strict";

import { ChannelTracker } from "../herald.js";

const d = (offset, epoch = "e1") => ({ type: "message", channel: "c", offset, epoch });
const offsets = (step) => step.deliver.map((f) => f.offset);
const subscribed = (offset, epoch = "e1", recovered) => {
  const f = { type: "subscribed", channel: "c", offset, epoch };
  if (recovered !== undefined) f.recovered = recovered;
  return f;
};

/** A tracker that is live at `offset`. */
function live(offset = 0, epoch = "e1") {
  const t = new ChannelTracker();
  assert.equal(t.request(), null);
  t.subscribed(subscribed(offset, epoch));
  return t;
}

test("in-order deliveries pass and advance the position", () => {
  const t = live(41);
  assert.deepEqual(t.position, { offset: 41, epoch: "e1" });
  assert.deepEqual(offsets(t.delivery(d(42))), [42]);
  assert.deepEqual(offsets(t.delivery(d(43))), [43]);
  assert.deepEqual(t.position, { offset: 43, epoch: "e1" });
});

test("duplicates are dropped", () => {
  const t = live(0);
  t.delivery(d(1));
  t.delivery(d(2));
  for (const o of [0, 1, 2]) {
    const step = t.delivery(d(o));
    assert.deepEqual(offsets(step), []);
    assert.equal(step.recover, false);
  }
  assert.deepEqual(t.position, { offset: 2, epoch: "e1" });
});

test("a gap asks for one recovery, and the replay fills it in order", () => {
  const t = live(3);
  const step = t.delivery(d(6));
  assert.deepEqual(offsets(step), []);
  assert.equal(step.recover, true);
  assert.deepEqual(t.request(), { offset: 3, epoch: "e1" });
  // Only one recovery in flight, whatever else arrives.
  assert.equal(t.delivery(d(7)).recover, false);
  // The replay: 4 and 5 come, then the held 6 and 7 follow on.
  assert.deepEqual(offsets(t.delivery(d(4))), [4]);
  assert.deepEqual(offsets(t.delivery(d(5))), [5, 6, 7]);
  // The rest of the replay is already known.
  assert.deepEqual(offsets(t.delivery(d(6))), []);
  assert.deepEqual(offsets(t.delivery(d(7))), []);
  const done = t.subscribed(subscribed(7, "e1", true));
  assert.equal(done.gap, null);
  assert.equal(done.recover, false);
  assert.deepEqual(offsets(t.delivery(d(8))), [8]);
});

test("a different epoch is held and recovered; recovered:false reports a gap and goes on live", () => {
  const t = live(10, "old");
  const step = t.delivery(d(3, "new"));
  assert.equal(step.recover, true);
  assert.deepEqual(offsets(step), []);
  assert.deepEqual(t.request(), { offset: 10, epoch: "old" });
  const after = t.subscribed(subscribed(3, "new", false));
  assert.deepEqual(after.gap, { from: { offset: 10, epoch: "old" }, to: { offset: 3, epoch: "new" }, reason: "epoch_changed" });
  // The held delivery is at or below the new position: already counted in the gap.
  assert.deepEqual(offsets(after), []);
  assert.deepEqual(t.position, { offset: 3, epoch: "new" });
  assert.deepEqual(offsets(t.delivery(d(4, "new"))), [4]);
});

test("trimmed history: recovered:false in the same epoch is a gap", () => {
  const t = new ChannelTracker({ since: { offset: 3, epoch: "e1" } });
  assert.deepEqual(t.request(), { offset: 3, epoch: "e1" });
  const step = t.subscribed(subscribed(53, "e1", false));
  assert.deepEqual(step.gap, { from: { offset: 3, epoch: "e1" }, to: { offset: 53, epoch: "e1" }, reason: "not_recovered" });
  assert.deepEqual(offsets(t.delivery(d(54))), [54]);
});

test("recovered:true leaves the position where the replay took it", () => {
  const t = new ChannelTracker({ since: { offset: 3, epoch: "e1" } });
  t.request();
  assert.deepEqual(offsets(t.delivery(d(4))), [4]);
  assert.deepEqual(offsets(t.delivery(d(5))), [5]);
  const step = t.subscribed(subscribed(5, "e1", true));
  assert.equal(step.gap, null);
  assert.equal(step.recover, false);
  assert.deepEqual(t.position, { offset: 5, epoch: "e1" });
});

test("a recovery that claims success but falls short is asked once more, then reported", () => {
  const t = new ChannelTracker({ since: { offset: 3, epoch: "e1" } });
  t.request();
  const first = t.subscribed(subscribed(9, "e1", true));
  assert.equal(first.recover, true);
  assert.equal(first.gap, null);
  t.request();
  const second = t.subscribed(subscribed(9, "e1", true));
  assert.equal(second.recover, false);
  assert.equal(second.gap.reason, "incomplete_recovery");
  assert.deepEqual(t.position, { offset: 9, epoch: "e1" });
});

test("before the first subscribed, deliveries are buffered and judged against it", () => {
  const t = new ChannelTracker();
  t.request();
  assert.equal(t.position, null);
  for (const o of [40, 41, 42, 43]) {
    const step = t.delivery(d(o));
    assert.deepEqual(offsets(step), []);
    assert.equal(step.recover, false);
  }
  const step = t.subscribed(subscribed(41));
  assert.equal(step.gap, null);
  assert.deepEqual(offsets(step), [42, 43]);
  assert.deepEqual(t.position, { offset: 43, epoch: "e1" });
});

test("a buffer overflow drops what was held and recovers it after subscribed", () => {
  const t = new ChannelTracker({ bufferSize: 3 });
  t.request();
  for (const o of [11, 12, 13, 14]) t.delivery(d(o));
  assert.equal(t.held, 0);
  const step = t.subscribed(subscribed(10));
  assert.deepEqual(offsets(step), []);
  assert.equal(step.recover, true);
  assert.deepEqual(t.request(), { offset: 10, epoch: "e1" });
});

test("reset forgets what is held and in flight but keeps the position", () => {
  const t = live(5);
  t.delivery(d(8));
  t.request();
  t.reset();
  assert.equal(t.inFlight, false);
  assert.equal(t.held, 0);
  assert.deepEqual(t.position, { offset: 5, epoch: "e1" });
});

test("malformed deliveries are ignored, a malformed since refused", () => {
  const t = live(0);
  assert.deepEqual(offsets(t.delivery({ type: "message", channel: "c", offset: "1", epoch: "e1" })), []);
  assert.deepEqual(offsets(t.delivery({ type: "message", channel: "c", offset: 1 })), []);
  assert.throws(() => new ChannelTracker({ since: { offset: -1, epoch: "e" } }), TypeError);
  assert.throws(() => new ChannelTracker({ since: { offset: 1 } }), TypeError);
});
