// Checks herald.d.ts against typical use; compiled, never run. From clients/js:
//   tsc --noEmit --strict --target es2022 --module es2022 --moduleResolution node test/types-check.ts
// (TypeScript ≥ 5 also accepts `--moduleResolution bundler`.)

import {
  backoffDelay,
  ChannelTracker,
  classifyClose,
  decodeJwtPayload,
  DEFAULTS,
  Herald,
  HeraldError,
  refreshDelay,
  SUBPROTOCOL,
  unpackBatch,
  type GapInfo,
  type HistoryResult,
  type Message,
  type Position,
  type PresenceEvent,
  type PresenceMember,
  type PresenceResult,
  type PresenceStats,
  type PublishAck,
  type ServerSubscribedInfo,
  type ServerSubscription,
  type StateChange,
  type Subscription,
  type WebSocketClass,
} from "../herald.js";

declare const NodeWebSocket: WebSocketClass;

const herald = new Herald(["ws://gw1:8765/ws", "ws://gw2:8766/ws"], {
  getToken: async () => "token",
  batch: true,
  minReconnectDelay: DEFAULTS.minReconnectDelay,
  maxReconnectDelay: 20_000,
  stableAfter: 10_000,
  publishTimeout: 10_000,
  publishQueueSize: 100,
  WebSocket: NodeWebSocket,
  debug: false,
});
new Herald("ws://gw/ws", { token: "static" }).close();

const off = herald.on("state", (s: StateChange) => {
  const state: "connecting" | "connected" | "disconnected" = s.state;
  if (s.state === "disconnected" && s.reconnect === false) console.log(s.code, s.reason, s.disconnect);
  void state;
});
off();
const onError = (e: { code: string; message: string; channel?: string }) => console.warn(e.code, e.message, e.channel);
herald.on("error", onError);
herald.off("error", onError);
const now: string = herald.state;

interface Chat {
  text: string;
  name: string;
}
const since: Position = { offset: 41, epoch: "a1b2c3d4e5f6" };
const sub: Subscription<Chat> = herald.subscribe<Chat>("chat:lobby", { since });
sub.on("message", (m: Message<Chat>) => {
  const text: string = m.data.text;
  const who: string | undefined = m.fromUser;
  const at: Position = { offset: m.offset, epoch: m.epoch };
  console.log(text, who, at, m.type, m.timestamp, m.frame.channel);
});
sub.on("subscribed", (info) => {
  const recovered: boolean | undefined = info.recovered;
  console.log(info.channel, info.offset, info.epoch, recovered);
});
sub.on("gap", (g: GapInfo) => console.log(g.from.offset, g.to.offset, g.reason));
sub.on("error", (e) => console.log(e.code, e.channel));
const pos: Position | null = sub.position;
const subState: "subscribing" | "subscribed" | "closed" = sub.state;
sub.unsubscribe();
herald.subscribe("news").on("message", (m) => {
  const data: unknown = m.data;
  void data;
});

async function send(): Promise<void> {
  try {
    const ack: PublishAck = await herald.publish("chat:lobby", { text: "hi", name: "ann" });
    console.log(ack.channel, ack.offset, ack.epoch);
  } catch (e) {
    if (e instanceof HeraldError) {
      const code: string = e.code;
      console.log(code, e.message, e.retryAfterMs);
    }
  }
}
void send();

async function read(): Promise<void> {
  const all: HistoryResult = await herald.history("news");
  const first = all.publications[0];
  const at: Position = { offset: all.offset, epoch: all.epoch };
  console.log(first?.type, first?.offset, first?.channel, at);
  const newest = await herald.history("news", { limit: 20, reverse: true });
  const after = await herald.history("news", { since: at, limit: null, reverse: null });
  console.log(newest.publications.length, after.epoch);
  try {
    await herald.history("secret", {});
  } catch (e) {
    if (e instanceof HeraldError) console.log(e.code, e.channel);
  }
}
void read();

async function who(): Promise<void> {
  const here: PresenceResult = await herald.presence("room:1");
  const first: PresenceMember | undefined = here.members[0];
  const name: unknown = first?.info?.name;
  const truncated: boolean = here.truncated;
  console.log(first?.userId, first?.connId, name, truncated);
  const stats: PresenceStats = await herald.presenceStats("room:1");
  const counts: [number, number] = [stats.numClients, stats.numUsers];
  console.log(counts);
  const room = herald.subscribe("room:1", { joinLeave: true });
  room.on("join", (e: PresenceEvent) => console.log(e.channel, e.userId, e.connId, e.info));
  room.on("leave", (e) => {
    const conn: string = e.connId;
    console.log(conn);
  });
  herald.subscribe("room:2", { since: null, joinLeave: null });
}
void who();

// Server-side subscriptions: the personal channel, the backend's `/v1/subscribe`.
herald.on("serverSubscribed", (s: ServerSubscribedInfo) => {
  const recovered: boolean | undefined = s.recovered;
  const from: Position = s.position;
  console.log(s.channel, s.offset, s.epoch, recovered, from);
});
herald.on("publication", (m: Message) => {
  const at: Position = { offset: m.offset, epoch: m.epoch };
  console.log(m.channel, m.type, m.data, m.fromUser, at);
});
herald.on("gap", (g: GapInfo) => console.log(g.channel, g.from, g.to, g.reason));
herald.on("serverUnsubscribed", (e) => {
  const channel: string = e.channel;
  console.log(channel);
});
const kept: ServerSubscription[] = herald.serverSubscriptions;
console.log(kept.map((k) => [k.channel, k.position.offset, k.live]));
herald.subscribe("room:4").on("unsubscribed", (e) => console.log(e.channel));
herald.connect();
herald.close();

const delay: number = backoffDelay(3, { min: 500, max: 20_000 }, Math.random);
const refresh: number | null = refreshDelay("a.b.c", Date.now());
const claims = decodeJwtPayload("a.b.c");
const inner = unpackBatch({ type: "batch_messages", messages: [] });
const verdict = classifyClose(4403, "forbidden", { code: "forbidden", reconnect: false }, true);
const tracker = new ChannelTracker({ since: null, bufferSize: 10 });
const step = tracker.delivery(inner[0]);
if (step.recover) tracker.request();
const protocol: "herald.v1" = SUBPROTOCOL;
console.log(now, pos, subState, delay, refresh, claims, verdict.reconnect, step.deliver.length, step.gap, protocol);

// @ts-expect-error: the event names are checked.
herald.on("message", () => {});
// @ts-expect-error: the list is read-only.
herald.serverSubscriptions = [];
// @ts-expect-error: a publish needs a channel.
void herald.publish();
// @ts-expect-error: since is a position.
void herald.history("news", { since: 41 });
// @ts-expect-error: the options are checked.
void herald.history("news", { limt: 3 });
// @ts-expect-error: joinLeave is a boolean.
herald.subscribe("room:3", { joinLeave: "yes" });
// @ts-expect-error: presence takes a channel.
void herald.presence();
// @ts-expect-error: the stats are named like the rest of the client.
void herald.presenceStats("room:1").then((s) => s.num_clients);
