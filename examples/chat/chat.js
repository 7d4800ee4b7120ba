// Herald chat: a small chat page built on herald.js.
//
// Rooms are channels `chat:<room>`. It logs in at auth-svc, keeps the access token
// fresh with the refresh token, and misses nothing across reloads and network drops:
// each room's last position and recent messages live in localStorage, and the position
// is handed back to herald.js as `since` when the room is subscribed again.
//
// Query parameters: `auth` (auth-svc base URL), `gateway` (WebSocket URL), and `user`
// with `password` to sign in at once (for tests and screenshots).

import { Herald } from "/herald.js";

const params = new URLSearchParams(location.search);
const DEFAULT_AUTH = `${location.protocol}//${location.hostname}:8081`;
const DEFAULT_GATEWAY = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
/** Messages kept per room, in the page and in localStorage. */
const KEEP_MESSAGES = 200;
const ROOM_NAME = /^[a-z0-9][a-z0-9_-]{0,39}$/;

const $ = (selector) => document.querySelector(selector);

// === storage ===

/** localStorage, keyed per user; a full or disabled storage only costs persistence. */
const store = {
  key: (user, ...parts) => ["herald-chat", user, ...parts].join(":"),
  load(key, fallback) {
    try {
      return JSON.parse(localStorage.getItem(key)) ?? fallback;
    } catch {
      return fallback;
    }
  },
  save(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      // Quota exceeded or storage disabled.
    }
  },
  remove(key) {
    try {
      localStorage.removeItem(key);
    } catch {
      // Storage disabled.
    }
  },
};

// The session lives in sessionStorage: it survives a reload but is not shared with
// other tabs, which would otherwise present the same single-use refresh token twice
// (and auth-svc then revokes the whole session).
const SESSION_KEY = "herald-chat:session";

function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch {
    return null;
  }
}

function saveSession(session) {
  try {
    if (session) sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    else sessionStorage.removeItem(SESSION_KEY);
  } catch {
    // Storage disabled: the session lasts as long as the page.
  }
}

// === auth-svc ===

class AuthError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function postJson(url, body) {
  let res;
  try {
    // No Content-Type header: auth-svc does not need it, and without it the request
    // is a "simple" one that needs no CORS preflight.
    res = await fetch(url, { method: "POST", body: JSON.stringify(body) });
  } catch {
    throw new AuthError(`cannot reach auth-svc at ${new URL(url).origin}`, 0, "network");
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    throw new AuthError(data?.error?.message ?? `HTTP ${res.status}`, res.status, data?.error?.code);
  }
  return data;
}

function sessionFrom(user, authUrl, gatewayUrl, pair) {
  return {
    user,
    authUrl,
    gatewayUrl,
    access: pair.access_token,
    refresh: pair.refresh_token,
    expiresIn: pair.expires_in,
    obtainedAt: Date.now(),
    /** Not handed to herald.js yet. */
    unused: true,
  };
}

// === rendering ===

function colourOf(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 55% 52%)`;
}

function timeOf(timestamp) {
  const d = timestamp ? new Date(timestamp) : new Date();
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderItem(item, me) {
  if (item.kind === "notice") {
    const li = el("li", `notice${item.bad ? " bad" : ""}`, item.text);
    return li;
  }
  const li = el("li", `msg${item.name === me ? " mine" : ""}`);
  const avatar = el("span", "avatar", (item.name || "?").slice(0, 1));
  avatar.style.background = colourOf(item.name || "?");
  avatar.setAttribute("aria-hidden", "true");
  const bubble = el("div", "bubble");
  const meta = el("div", "meta");
  meta.append(el("span", "name", item.name || "?"), el("time", "", timeOf(item.ts)));
  if (item.ts) meta.lastChild.dateTime = item.ts;
  bubble.append(meta, el("div", "text", item.text));
  li.append(avatar, bubble);
  return li;
}

/** The text and author of a delivery: chat messages carry `{text, name}`, anything
 * else published on the channel is shown as JSON. */
function itemOf(m) {
  const data = m.data;
  const text = typeof data?.text === "string" ? data.text : JSON.stringify(data);
  const name = typeof data?.name === "string" ? data.name : (m.fromUser ?? "server");
  return { kind: "msg", offset: m.offset, epoch: m.epoch, name, user: m.fromUser, text, ts: m.timestamp };
}

// === the chat ===

class Chat {
  /** room name → { name, sub, items, position, unread } */
  rooms = new Map();
  current = null;

  constructor(session, onSignOut) {
    this.session = session;
    this.user = session.user;
    this.onSignOut = onSignOut;
    this.herald = new Herald(session.gatewayUrl, { getToken: () => this.getToken() });
    this.herald.on("state", (s) => this.showState(s));
    this.herald.on("error", (e) => {
      if (e.code === "token_error") return; // shown through the state and the login form
      showBanner(`${e.code}: ${e.message}`);
    });
    const names = store.load(store.key(this.user, "rooms"), ["lobby"]);
    for (const name of names.includes("lobby") ? names : ["lobby", ...names]) this.addRoom(name, false);
    this.select(store.load(store.key(this.user, "current"), "lobby"));
  }

  // The token from the login is handed out once, for the first connect; every later
  // call refreshes. herald.js schedules its next refresh from the moment this resolves,
  // so what it returns must be new. herald.js never calls this twice at once, so one
  // refresh token is never presented twice.
  async getToken() {
    const s = this.session;
    if (s.unused) {
      s.unused = false;
      return s.access;
    }
    try {
      const pair = await postJson(`${s.authUrl}/v1/token/refresh`, { refresh_token: s.refresh });
      this.session = { ...sessionFrom(s.user, s.authUrl, s.gatewayUrl, pair), unused: false };
      saveSession(this.session);
      return this.session.access;
    } catch (e) {
      if (e.status === 401) {
        // The refresh token is spent or revoked: only signing in again helps.
        queueMicrotask(() => this.onSignOut("Your session has ended; please sign in again."));
        throw e;
      }
      // auth-svc unreachable: the current access token may still be good a while.
      if (Date.now() - s.obtainedAt < s.expiresIn * 1000 - 5000) return s.access;
      throw e;
    }
  }

  close() {
    this.herald.close();
  }

  showState(s) {
    const state = $("#state");
    state.textContent = s.state;
    state.dataset.state = s.state;
    state.title = s.reason ? `${s.state}: ${s.reason}` : s.state;
    if (s.state === "connected") {
      hideBanner();
    } else if (s.state === "disconnected" && s.reconnect === false && s.code !== "closed") {
      showBanner(`Disconnected: ${s.reason || s.code}.`, { bad: true, action: "Reconnect", onAction: () => this.herald.connect() });
    }
  }

  roomKey(name) {
    return store.key(this.user, "room", name);
  }

  saveRooms() {
    store.save(store.key(this.user, "rooms"), [...this.rooms.keys()]);
  }

  persist(room) {
    // Position and messages in one entry, so a reload never sees one without the other.
    store.save(this.roomKey(room.name), { position: room.position, items: room.items });
  }

  addRoom(name, select = true) {
    if (!ROOM_NAME.test(name)) return;
    if (this.rooms.has(name)) {
      if (select) this.select(name);
      return;
    }
    const saved = store.load(this.roomKey(name), { position: null, items: [] });
    const room = {
      name,
      items: Array.isArray(saved.items) ? saved.items.slice(-KEEP_MESSAGES) : [],
      position: saved.position ?? null,
      unread: 0,
      sub: null,
    };
    let sub;
    try {
      sub = this.herald.subscribe(`chat:${name}`, { since: room.position });
    } catch {
      // A stored position of the wrong shape: start afresh.
      room.position = null;
      sub = this.herald.subscribe(`chat:${name}`);
    }
    room.sub = sub;
    sub.on("message", (m) => {
      room.position = { offset: m.offset, epoch: m.epoch };
      this.append(room, itemOf(m));
    });
    sub.on("subscribed", () => {
      // A room seen for the first time starts at the channel's current position:
      // remember it, so what is published before the next visit is recovered then.
      if (!room.position) {
        room.position = sub.position;
        this.persist(room);
      }
    });
    sub.on("gap", (g) => {
      room.position = { ...g.to };
      const why = g.reason === "epoch_changed" ? "the room's history was reset" : "they are no longer in the history";
      const missed = g.reason === "epoch_changed" ? "Some messages" : `${Math.max(0, g.to.offset - g.from.offset)} messages`;
      this.append(room, { kind: "notice", bad: true, text: `${missed} could not be recovered: ${why}.` });
      if (room === this.current) showBanner(`Gap in #${name}: ${missed.toLowerCase()} could not be recovered.`);
    });
    sub.on("error", (e) => {
      this.append(room, { kind: "notice", bad: true, text: `Cannot join #${name}: ${e.message} (${e.code}).` });
    });
    this.rooms.set(name, room);
    this.saveRooms();
    this.renderRooms();
    if (select) this.select(name);
  }

  removeRoom(name) {
    const room = this.rooms.get(name);
    if (!room || name === "lobby") return;
    room.sub.unsubscribe();
    this.rooms.delete(name);
    store.remove(this.roomKey(name));
    this.saveRooms();
    if (this.current === room) this.select("lobby");
    else this.renderRooms();
  }

  select(name) {
    const room = this.rooms.get(name) ?? this.rooms.get("lobby");
    this.current = room;
    room.unread = 0;
    store.save(store.key(this.user, "current"), room.name);
    $("#room-title").textContent = `#${room.name}`;
    $("#text").placeholder = `Message #${room.name}`;
    this.renderRooms();
    this.renderMessages();
  }

  append(room, item) {
    room.items.push(item);
    if (room.items.length > KEEP_MESSAGES) room.items.splice(0, room.items.length - KEEP_MESSAGES);
    this.persist(room);
    if (room === this.current) {
      const list = $("#messages");
      const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
      list.querySelector(".empty")?.remove();
      list.append(renderItem(item, this.user));
      while (list.children.length > KEEP_MESSAGES) list.firstElementChild.remove();
      if (atBottom || item.name === this.user) list.scrollTop = list.scrollHeight;
      this.renderInfo();
    } else if (item.kind === "msg") {
      room.unread++;
      this.renderRooms();
    }
  }

  renderRooms() {
    const list = $("#rooms");
    list.replaceChildren(
      ...[...this.rooms.values()].map((room) => {
        const li = el("li", room === this.current ? "current" : "");
        const open = el("button", "room-button", room.name);
        open.type = "button";
        open.dataset.room = room.name;
        open.addEventListener("click", () => this.select(room.name));
        if (room.unread > 0) open.append(el("span", "unread", String(room.unread)));
        li.append(open);
        if (room.name !== "lobby") {
          const remove = el("button", "room-remove", "×");
          remove.type = "button";
          remove.title = `Leave #${room.name}`;
          remove.addEventListener("click", () => this.removeRoom(room.name));
          li.append(remove);
        }
        return li;
      }),
    );
  }

  renderMessages() {
    const list = $("#messages");
    const room = this.current;
    if (room.items.length === 0) {
      list.replaceChildren(el("li", "empty", "No messages yet. Say hello!"));
    } else {
      list.replaceChildren(...room.items.map((item) => renderItem(item, this.user)));
    }
    list.scrollTop = list.scrollHeight;
    this.renderInfo();
  }

  renderInfo() {
    const p = this.current.position;
    $("#room-info").textContent = p ? `offset ${p.offset}` : "";
  }

  async send(text) {
    const room = this.current;
    try {
      await this.herald.publish(`chat:${room.name}`, { text, name: this.user });
    } catch (e) {
      const why = {
        forbidden: "you may not write in this room",
        queue_full: "too many messages waiting to be sent",
        timeout: "no confirmation in time; it may or may not have been sent",
        disconnected: "the connection dropped; it may or may not have been sent",
        closed: "the client is closed",
        rate_limited: "slow down a little",
      }[e.code] ?? e.message;
      this.append(room, { kind: "notice", bad: true, text: `Not sent: “${text.slice(0, 40)}” (${why}).` });
    }
  }
}

// === banner ===

function showBanner(text, { bad = false, action, onAction } = {}) {
  $("#banner-text").textContent = text;
  $("#banner").classList.toggle("bad", bad);
  const button = $("#banner-action");
  button.hidden = !action;
  button.textContent = action ?? "";
  button.onclick = onAction ? () => (hideBanner(), onAction()) : null;
  $("#banner").hidden = false;
}

function hideBanner() {
  $("#banner").hidden = true;
}

// === page ===

let chat = null;

function start(session) {
  saveSession(session);
  $("#login").hidden = true;
  $("#chat").hidden = false;
  $("#who").hidden = false;
  $("#who").textContent = session.user;
  $("#logout").hidden = false;
  chat = new Chat(session, signOut);
  $("#text").focus();
}

function signOut(message = "") {
  chat?.close();
  chat = null;
  saveSession(null);
  $("#chat").hidden = true;
  $("#who").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#state").textContent = "disconnected";
  $("#state").dataset.state = "disconnected";
  hideBanner();
}

async function login(event) {
  event?.preventDefault();
  const user = $("#username").value.trim();
  const password = $("#password").value;
  const authUrl = $("#auth-url").value.trim().replace(/\/+$/, "") || DEFAULT_AUTH;
  const gatewayUrl = $("#gateway-url").value.trim() || DEFAULT_GATEWAY;
  if (!user || !password) return;
  const button = $("#login-button");
  button.disabled = true;
  $("#login-error").textContent = "";
  try {
    const pair = await postJson(`${authUrl}/v1/token`, { username: user, password });
    $("#password").value = "";
    start(sessionFrom(user, authUrl, gatewayUrl, pair));
  } catch (e) {
    $("#login-error").textContent =
      e.code === "invalid_credentials"
        ? "Wrong user name or password."
        : e.code === "rate_limited"
          ? "Too many failed attempts; try again later."
          : e.message;
  } finally {
    button.disabled = false;
  }
}

function init() {
  $("#auth-url").value = params.get("auth") ?? DEFAULT_AUTH;
  $("#gateway-url").value = params.get("gateway") ?? DEFAULT_GATEWAY;
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", () => signOut());
  $("#banner-close").addEventListener("click", hideBanner);
  $("#composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#text");
    const text = input.value.trim();
    if (!text || !chat) return;
    input.value = "";
    chat.send(text);
  });
  $("#add-room").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#new-room");
    const name = input.value.trim().toLowerCase();
    if (!ROOM_NAME.test(name) || !chat) return;
    input.value = "";
    chat.addRoom(name);
  });
  const user = params.get("user");
  const password = params.get("password");
  if (user && password) {
    $("#username").value = user;
    $("#password").value = password;
    // Keep the password out of the address bar and the history.
    params.delete("password");
    const query = params.toString();
    history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
    login();
    return;
  }
  const session = loadSession();
  if (session?.refresh && session.user) {
    // Signed in earlier in this tab: resume with the refresh token.
    start({ ...session, unused: false });
    return;
  }
  if (user) $("#username").value = user;
  $("#username").focus();
}

init();
