// Type declarations of herald.js, the browser client of Herald, written by hand. The
// gateway serves them at `GET /herald.d.ts`; README.md describes the behaviour.

/** The WebSocket subprotocol the client offers: `"herald.v1"`. */
export const SUBPROTOCOL: "herald.v1";

/** Defaults of the tunable options. */
export const DEFAULTS: Readonly<{
  minReconnectDelay: 500;
  maxReconnectDelay: 20000;
  stableAfter: 10000;
  publishTimeout: 10000;
  publishQueueSize: 100;
  connectTimeout: 15000;
  batch: false;
  debug: false;
}>;

/** A position in a channel: the offset of a message and the epoch of its history. */
export interface Position {
  offset: number;
  epoch: string;
}

export type ConnectionState = "connecting" | "connected" | "disconnected";

/** A `state` event. */
export interface StateChange {
  state: ConnectionState;
  /** Why the client is disconnected: the socket's close code (a number: 1006, 4403,
   * 1008, 4000 for a client-side heartbeat or connect timeout, …) or one of the
   * client's own: `"closed"` (`close()`), `"offline"`, `"token_error"`, `"transport"`. */
  code?: number | string;
  /** Human-readable: the `disconnect` frame's reason, or the close reason. */
  reason?: string;
  /** The server's `disconnect` code when one preceded the close (`"forbidden"`,
   * `"token_expired"`, `"slow_consumer"`, …, or the backend's own: `"server_disconnect"`
   * or any code it gave `/v1/disconnect`). */
  disconnect?: string;
  /** Whether the client will try again by itself. `false`: stopped for good until
   * `connect()`. */
  reconnect?: boolean;
  /** With `reconnect: true`: milliseconds until the next attempt. */
  delay?: number;
  /** "connecting", "connected": the gateway URL. */
  url?: string;
  /** "connected": what `auth_success` said. */
  userId?: string;
  connId?: string;
  node?: string;
}

/** An `error` event: an error frame not tied to a pending request (`rate_limited`, …),
 * a refused token refresh, a transport or token problem (`transport`, `token_error`,
 * `protocol`), or a refused subscription nobody listens to on the subscription. */
export interface ErrorEvent {
  code: string;
  message: string;
  channel?: string;
  retryAfterMs?: number;
}

export type DeliveryType = "message" | "system_notification" | "user_message" | "processing_result";

/** A channel delivery as the server sent it. */
export interface DeliveryFrame {
  type: DeliveryType;
  channel: string;
  offset: number;
  epoch: string;
  timestamp?: string;
  [field: string]: unknown;
}

/** The `data` of a `processing_result`. */
export interface ProcessingResult {
  job_id: string;
  job_type: string;
  status: "done" | "failed";
  result: unknown;
}

/** A delivered message. */
export interface Message<T = unknown> {
  channel: string;
  type: DeliveryType;
  /** `message` for `message` and `system_notification`, `content` for `user_message`,
   * `{job_id, job_type, status, result}` for `processing_result`. */
  data: T;
  offset: number;
  epoch: string;
  timestamp?: string;
  /** `from_user` of a `message` (absent for server-side publishes), `user_id` of a
   * `user_message`. */
  fromUser?: string;
  /** The frame itself. */
  frame: DeliveryFrame;
}

/** A `subscribed` event: the server confirmed the subscription (after each connect). */
export interface SubscribedInfo {
  channel: string;
  /** The channel's latest offset and epoch. */
  offset: number;
  epoch: string;
  /** Whether history filled everything since the position; undefined when the
   * subscribe carried no `since`. */
  recovered?: boolean;
}

/** A `gap` event: messages between `from` and `to` were lost for this client (history
 * trimmed or expired, the channel's epoch changed); delivery goes on after `to`. */
export interface GapInfo {
  channel: string;
  from: Position;
  to: Position;
  reason: "not_recovered" | "epoch_changed" | "incomplete_recovery";
}

/** A `serverSubscribed` event: the server subscribed the connection itself (the
 * backend's `/v1/subscribe`, or the personal channel `user:<id>` at each login with
 * `HERALD_USER_CHANNEL=1`). Its deliveries come as the client's `publication` events. */
export interface ServerSubscribedInfo {
  channel: string;
  /** The channel's latest offset and epoch. */
  offset: number;
  epoch: string;
  /** Whether the backend's `since` was recovered; undefined when it gave none. */
  recovered?: boolean;
  /** Where the client's deliveries on the channel stand: `publication`s go on after
   * it. After a reconnect, the position kept from before: what was published since is
   * recovered from history (or a `gap` says it could not be). */
  position: Position;
}

/** A `serverUnsubscribed` event: the backend ended a server-side subscription
 * (`/v1/unsubscribe`). */
export interface ServerUnsubscribedInfo {
  channel: string;
}

/** A server-side subscription the client keeps (`Herald.serverSubscriptions`). */
export interface ServerSubscription {
  channel: string;
  /** The last `publication` handed to the app, or where delivery starts. */
  position: Position;
  /** The server confirmed it on the current connection. A server-side subscription
   * lasts as long as its connection: after a reconnect it is kept (with its position)
   * but silent until the server subscribes the connection again. */
  live: boolean;
}

/** An `unsubscribed` event of a subscription: the backend ended it (`/v1/unsubscribe`);
 * the subscription is closed. Never for the app's own `unsubscribe()`. */
export interface UnsubscribedInfo {
  channel: string;
}

/** A `subscription` `error` event: the subscribe was refused for good (`forbidden`,
 * `bad_request`, …); the subscription is closed and not retried. `unavailable` and
 * `rate_limited` are retried instead and never reported here. */
export interface SubscriptionError {
  code: string;
  message: string;
  channel: string;
}

export interface PublishAck {
  channel: string;
  offset: number;
  epoch: string;
}

export interface HistoryOptions {
  /** Only what was published after this position, when its epoch is the channel's
   * current one; another epoch's position gets the answer from the oldest kept (and
   * the answer's `epoch` shows the change). */
  since?: Position | null;
  /** How many at most, a positive integer; the server's default is 100 and its cap
   * `HERALD_HISTORY_SIZE`. */
  limit?: number | null;
  /** Newest first. Default false: oldest first. */
  reverse?: boolean | null;
}

/** What `history()` resolves with. */
export interface HistoryResult {
  /** The kept deliveries, as the server sent them (not turned into `Message`s), in the
   * order asked for. */
  publications: DeliveryFrame[];
  /** The channel's latest position (offset 0 when nothing was ever published). */
  offset: number;
  epoch: string;
}

/** A connection subscribed to a channel, as presence shows it. The names follow the
 * client's own objects (`userId`, `connId`), not the wire's `user_id`, `conn_id`. */
export interface PresenceMember {
  userId: string;
  /** Unique per connection: one user may be present through several. */
  connId: string;
  /** The `info` claim of the member's token; absent when it had none. */
  info?: Record<string, unknown>;
}

/** What `presence()` resolves with. */
export interface PresenceResult {
  /** Every connection subscribed to the channel, on every gateway, in no set order. */
  members: PresenceMember[];
  /** More were subscribed than the gateway lists (`HERALD_PRESENCE_LIMIT`, default
   * 1000). */
  truncated: boolean;
}

/** What `presenceStats()` resolves with. */
export interface PresenceStats {
  /** Connections subscribed to the channel. */
  numClients: number;
  /** Distinct users among them. */
  numUsers: number;
}

/** A `join` or `leave` event of a subscription made with `joinLeave: true`: another
 * connection subscribed to the channel, or unsubscribed, disconnected or lost its
 * gateway. Never for the subscription's own connection. */
export interface PresenceEvent extends PresenceMember {
  channel: string;
}

/** The part of a WebSocket the client uses: the browser's, or one given in
 * `options.WebSocket` (Node 20 has none of its own). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketClass = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Where the client's time comes from; tests pass a fake one. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: any): void;
}

/** Where `online` and `offline` events come from. */
export interface NetworkEvents {
  addEventListener(type: "online" | "offline", listener: () => void): void;
  removeEventListener(type: "online" | "offline", listener: () => void): void;
}

export interface HeraldOptions {
  /** A static access token. It is never refreshed: when it expires the server ends the
   * connection (`token_expired`) and the client stops. */
  token?: string;
  /** Supplies a fresh access token: at each connect, a little before the current one
   * expires (read from its `exp` and `iat`), and after `token_expired`. The moment it
   * resolves counts as the token's issue time, so return a token obtained just now. It
   * is never called again while a call is pending. */
  getToken?: () => Promise<string> | string;
  /** Ask for `batch_messages`; they are unpacked transparently. Default false. */
  batch?: boolean;
  /** First reconnect delay ceiling, in ms. Default 500. */
  minReconnectDelay?: number;
  /** Largest reconnect delay, in ms. Default 20000. */
  maxReconnectDelay?: number;
  /** The backoff resets once a connection has stayed up this long, in ms. Default 10000. */
  stableAfter?: number;
  /** A publish not acknowledged, or a read (history, presence) not answered, within
   * this many ms rejects with `timeout`. Default 10000. */
  publishTimeout?: number;
  /** Publishes pending at once (waiting to be sent or for their ack); more reject with
   * `queue_full`. Reads (history, presence, presence stats together) are bounded by the
   * same number, counted apart. Default 100. */
  publishQueueSize?: number;
  /** A socket not authenticated within this many ms is given up. Default 15000. */
  connectTimeout?: number;
  /** The WebSocket class; default `globalThis.WebSocket`. */
  WebSocket?: WebSocketClass;
  /** Log the connection's life with `console.debug` (never tokens). Default false. */
  debug?: boolean;
  /** The clock; default `Date.now` and the global timers. */
  clock?: Clock;
  /** The random source of the backoff jitter; default `Math.random`. */
  random?: () => number;
  /** Source of `online`/`offline` events; default `globalThis` when it has
   * `addEventListener` (a browser), none otherwise. `null` turns them off. */
  networkEvents?: NetworkEvents | null;
}

export interface HeraldEvents {
  state: StateChange;
  error: ErrorEvent;
  /** The server subscribed the connection to a channel the app has no subscription
   * of its own for (one it has is only confirmed, and keeps its deliveries). */
  serverSubscribed: ServerSubscribedInfo;
  serverUnsubscribed: ServerUnsubscribedInfo;
  /** A message on a server-side subscription, each once, in order per channel. */
  publication: Message;
  /** Messages of a server-side subscription were lost (as a subscription's `gap`). */
  gap: GapInfo;
}

export interface SubscriptionEvents<T = unknown> {
  message: Message<T>;
  subscribed: SubscribedInfo;
  gap: GapInfo;
  error: SubscriptionError;
  /** Only with `joinLeave: true`. */
  join: PresenceEvent;
  /** Only with `joinLeave: true`. */
  leave: PresenceEvent;
  unsubscribed: UnsubscribedInfo;
}

export interface SubscribeOptions {
  /** Resume after this position: what was published since is delivered first (or a
   * `gap` says it could not be). */
  since?: Position | null;
  /** Receive `join` and `leave` events. Needs the right to see the channel's presence
   * (the token's `presence` claim, else the right to subscribe): without it the
   * subscribe is refused with `forbidden`. Default false. */
  joinLeave?: boolean | null;
}

/** A publish or read (history, presence) refusal or failure. `code` is the server's
 * error code (`forbidden`, `bad_request`, `unavailable`, `rate_limited`, …) or the
 * client's own:
 * - `queue_full`: `publishQueueSize` publishes (or reads) are already pending; not
 *   sent;
 * - `timeout`: no acknowledgement (answer) within `publishTimeout`; a publish may or
 *   may not have been published;
 * - `disconnected`: the connection dropped after it was sent; a publish may or may not
 *   have been published, and is never resent automatically (that could publish it
 *   twice); a read is not resent either;
 * - `closed`: the client stopped (`close()`, or refused for good by the server) before
 *   it was sent or answered;
 * - `protocol`: the server's answer to a read was malformed. */
export class HeraldError extends Error {
  constructor(code: string, message?: string, details?: { channel?: string; retryAfterMs?: number });
  readonly code: string;
  readonly channel?: string;
  readonly retryAfterMs?: number;
}

/** One channel subscription, made by `Herald.subscribe`. */
export class Subscription<T = unknown> {
  private constructor();
  readonly channel: string;
  /** The position of the last message delivered to the app, or null before the first
   * (without `since`). Persist it and pass it back as `since` to resume. */
  readonly position: Position | null;
  /** "subscribing" until the server confirms (again after each reconnect), then
   * "subscribed"; "closed" once unsubscribed, refused, or ended by the backend. */
  readonly state: "subscribing" | "subscribed" | "closed";
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof SubscriptionEvents<T>>(event: K, listener: (value: SubscriptionEvents<T>[K]) => void): () => void;
  off<K extends keyof SubscriptionEvents<T>>(event: K, listener: (value: SubscriptionEvents<T>[K]) => void): void;
  /** Drops the subscription at once (and tells the server when connected). */
  unsubscribe(): void;
}

/** A connection to a Herald cluster that survives disconnects: it reconnects with
 * backoff (rotating through the URLs), resubscribes, recovers missed messages and
 * delivers each message of a channel once, in order. */
export class Herald {
  /** Connects at once (a microtask later, so listeners attached right after see the
   * first `connecting`). Throws a TypeError without URL, token or WebSocket class. */
  constructor(urls: string | readonly string[], options: HeraldOptions);
  /** The current state. */
  readonly state: ConnectionState;
  /** The server-side subscriptions the client keeps, a fresh array at each read. */
  readonly serverSubscriptions: ServerSubscription[];
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof HeraldEvents>(event: K, listener: (value: HeraldEvents[K]) => void): () => void;
  off<K extends keyof HeraldEvents>(event: K, listener: (value: HeraldEvents[K]) => void): void;
  /** Subscribes to `channel`; returns at once, the subscribe is sent when connected.
   * Throws a HeraldError `already_subscribed` if the channel has a live subscription.
   * A server-side subscription of the channel is taken over: its deliveries come to
   * this subscription from then on, after the last `publication` unless `since` says
   * otherwise. */
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions): Subscription<T>;
  /** Publishes `message` to `channel`. While disconnected it waits in a bounded queue
   * and is sent after the next authentication; see HeraldError for the rejections. */
  publish(channel: string, message: unknown): Promise<PublishAck>;
  /** Reads the messages `channel` keeps (what `subscribe` with `since` could recover),
   * without subscribing; needs the right to subscribe to it. Like a publish, a read
   * made while disconnected waits for the next authentication, under `publishTimeout`
   * and `publishQueueSize`, and rejects with a HeraldError: the server's `forbidden`,
   * `unavailable`, `bad_request`, `rate_limited`, or the client's `queue_full`,
   * `timeout`, `disconnected`, `closed`, `protocol`. Bad arguments reject with a
   * TypeError. */
  history(channel: string, options?: HistoryOptions): Promise<HistoryResult>;
  /** Lists the connections subscribed to `channel` on every gateway, without
   * subscribing; needs the right to see its presence (the token's `presence` claim,
   * else the right to subscribe). A read like `history()`: the same queue, deadline
   * and rejections. */
  presence(channel: string): Promise<PresenceResult>;
  /** Counts the connections and distinct users subscribed to `channel`; the same rights
   * and rejections as `presence()`. */
  presenceStats(channel: string): Promise<PresenceStats>;
  /** Starts again after a stop (`close()` or a refusal for good); a no-op otherwise. */
  connect(): void;
  /** Stops for good: state "disconnected" with code "closed", every pending publish and
   * read rejected with `closed`, every timer cancelled. */
  close(): void;
}

/** Per-channel offset bookkeeping: which deliveries reach the app, and when to ask the
 * server to replay what is missing. Pure; `Herald` drives one per subscription. */
export class ChannelTracker {
  constructor(options?: { since?: Position | null; bufferSize?: number });
  readonly position: Position | null;
  readonly inFlight: boolean;
  readonly held: number;
  /** Marks a subscribe as sent; returns the `since` it must carry. */
  request(): Position | null;
  /** The connection is gone. */
  reset(): void;
  delivery(frame: DeliveryFrame): TrackerStep;
  subscribed(frame: { offset: number; epoch: string; recovered?: boolean }): TrackerStep;
}

export interface TrackerStep {
  /** Deliveries to hand to the app, in order. */
  deliver: DeliveryFrame[];
  gap: { from: Position; to: Position; reason: GapInfo["reason"] } | null;
  /** Send a subscribe with `since: tracker.request()` now. */
  recover: boolean;
}

/** `random() * min(max, min * 2^attempt)`. */
export function backoffDelay(attempt: number, bounds: { min: number; max: number }, random?: () => number): number;

/** Milliseconds after obtaining `token` at `nowMs` when it should be refreshed; null
 * without `exp` or when already expired. */
export function refreshDelay(token: string, nowMs: number): number | null;

/** The JWT's payload, not verified; null when not a JWT. */
export function decodeJwtPayload(token: string): Record<string, unknown> | null;

/** The deliveries of a `batch_messages` frame, in order, or `[frame]`. */
export function unpackBatch(frame: unknown): DeliveryFrame[];

/** What to do after a close. */
export function classifyClose(
  code: number,
  reason: string,
  disconnect: { code?: string; reason?: string; reconnect?: boolean; retry_after_ms?: number } | null,
  canRefresh: boolean,
): { reconnect: boolean; minDelay: number; authFailure: boolean };
