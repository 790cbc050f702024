// Starling web chat client: plain ES module, no build step, no external fetches.
//
// It speaks the JSON chat protocol (docs/PROTOCOL.md, "JSON chat protocol") over ws://<host>/ws:
// requests {id, type, ...} are answered by {id, result} or {id, error}; pushes {push:"message"}
// carry channel records. The log is append-only, so the client keeps the raw records of each
// channel and *folds* them when rendering: edits, deletes, reactions and replies are records
// that point (relation) at an earlier seq.
//
// Recovery model: every channel of the user is subscribed with `since` = the highest seq the
// client holds (or the head seq from `channels {}` when it holds nothing yet). Opening a
// channel fetches `history {limit: 50}` first; scrolling to the top fetches `history {before}`.
// After a reconnect every channel is re-subscribed with `since` = highest seq held, so the server
// replays exactly what was missed; records are deduplicated by seq anyway. The client also
// follows its own channel list, `$chat/user/<me>`: the server appends a `joined` or `left`
// event there whenever the user is added to or leaves a channel (whoever did it), and each one
// makes the client reload `channels {}`. Nothing is polled.
//
// data-testid reference (stable ids for tests; <id> is a channel id, <seq> a channel seq,
// <user> a user name, <cid> a client_id):
//   login-form, login-name, login-submit, login-error
//   me-name, my-presence, sign-out, reconnecting (visible only while reconnecting), toast
//   channel-list, dm-list, new-channel, new-dm, browse-channels
//   channel-item-<id>, unread-<id> (badge, only when unread > 0; text "99+" at >= 100)
//   dm-presence-<user> (dot in the direct-message list; data-status="online|away|offline")
//   channel-header, channel-title, channel-topic, topic-input, header-presence (direct channels)
//   member-count, members-popover, member-<user>, presence-<user> (dot, data-status),
//   invite-input, invite-submit, leave-channel
//   message-list, message-<seq>, message-text-<seq>, edited-<seq>, event-<seq> (channel events),
//   reaction-<seq>-<emoji> (chip; class "mine" when you reacted, text "<emoji> <count>"),
//   reply-count-<seq>, read-by (under your newest message: "Read by N"),
//   action-react-<seq>, action-reply-<seq>, action-edit-<seq>, action-delete-<seq>,
//   emoji-picker, emoji-<emoji>, edit-input-<seq>, edit-save-<seq>, edit-cancel-<seq>,
//   pending-<cid>, retry-<cid>, discard-<cid>, load-older, channel-start, new-marker
//   typing ("alice is typing…"; empty when nobody types), composer, send
//   thread-pane, thread-close, thread-root, thread-messages, thread-composer, thread-send;
//     inside the thread pane the message ids above are prefixed with "thread-" for replies
//     (thread-message-<seq>, thread-message-text-<seq>, thread-reaction-<seq>-<emoji>, ...)
//     and with "thread-root-" for the root message shown at the top of the pane
//   modal, modal-error, modal-cancel, new-channel-name, new-channel-id, new-channel-topic,
//   new-channel-private, new-channel-members, new-channel-submit, new-dm-users, new-dm-submit, directory-filter,
//   directory-item-<id>, directory-join-<id>, confirm-ok, confirm-cancel

const EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢', '🙏', '👀'];
const PAGE = 50;                      // history page size
const GROUP_GAP_MS = 5 * 60 * 1000;   // messages of one sender closer than this are grouped
const TYPING_SEND_MS = 3000;          // send `typing` at most this often
const TYPING_SHOW_MS = 5000;          // show "x is typing…" this long after a push
const AWAY_AFTER_MS = 30000;          // hidden tab for this long => presence "away"
const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 5000;
const EFFECT_KINDS = new Set(['edit', 'delete', 'reaction_add', 'reaction_remove', 'reply']);
const USER_KEY = 'starling.user';

const $ = (id) => document.getElementById(id);

// Line icons (24x24, stroked): emoji glyphs depend on fonts a server machine may lack.
const ICONS = {
  smile: '<circle cx="12" cy="12" r="9"/><path d="M8.5 14a4.5 4.5 0 0 0 7 0M9 9.5h.01M15 9.5h.01"/>',
  reply: '<path d="M20 11.5a7.5 7.5 0 0 1-10.9 6.7L4 19.5l1.3-4.6A7.5 7.5 0 1 1 20 11.5z"/>',
  edit: '<path d="M4 20h4L19 9a2.1 2.1 0 0 0-4-4L4 16v4zM13.5 6.5l4 4"/>',
  trash: '<path d="M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3"/>',
  users: '<circle cx="9" cy="8" r="3.5"/><path d="M2.5 20a6.5 6.5 0 0 1 13 0M16 4.5a3.5 3.5 0 0 1 0 7M18 14a6.5 6.5 0 0 1 3.5 6"/>',
};
function icon(name) {
  const el = document.createElement('span');
  el.className = 'icon';
  el.innerHTML = `<svg viewBox="0 0 24 24" width="16" height="16" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">${ICONS[name]}</svg>`;
  return el;
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

const state = {
  me: null,              // signed-in user name
  connected: false,      // `connect` answered on the current socket
  channels: new Map(),   // channel id -> Chan (see newChan)
  current: null,         // open channel id
  thread: null,          // open thread root seq (in the current channel)
  presence: new Map(),   // user -> online | away | offline
  myStatus: 'online',
  pending: new Map(),    // client_id -> outgoing publish (see sendMessage)
  editing: null,         // {seq, where: 'main' | 'thread'}
  picker: null,          // {seq, where}: emoji picker open on this message
  membersOpen: false,
};

function newChan(id) {
  return {
    id, name: id, visibility: 'public', topic: '', owner: null, members: null,
    direct: id.startsWith('dm/'),
    readSeq: 0, unread: 0,
    unreadBase: 0,       // server's `unread` already counts records up to this seq
    records: new Map(),  // seq -> record (stored kinds only; ephemeral seq-0 ones never)
    effects: new Map(),  // target seq -> records pointing at it, sorted by seq
    sorted: null,        // cache: records sorted by seq (null = stale)
    highSeq: 0,          // highest seq we hold or have accounted for; `since` of subscribe
    infoSeq: 0,          // channel_info reflects events up to this seq
    subscribed: false, subscribing: false,
    loaded: false, loading: false, loadingOlder: false, atStart: false,
    typing: new Map(),   // user -> expiry (ms)
    newMarker: null,     // read seq when the channel was opened ("New" divider)
    adoptedAt: Date.now(),
    readBy: null,        // {seq, read, of, users} for our newest message
    readByFor: 0,        // seq of the read_by request in flight / done
  };
}

const cur = () => (state.current ? state.channels.get(state.current) : null);
const isReading = (ch) =>
  !!ch && ch.id === state.current && document.visibilityState === 'visible' && document.hasFocus();

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/** Creates an element: h('div', {class, testid, onclick, ...attrs}, ...children). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'testid') el.dataset.testid = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A client message id. crypto.randomUUID exists only in secure contexts (not plain http). */
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

function hashHue(s) {
  let x = 2166136261;
  for (const c of s) x = Math.imul(x ^ c.codePointAt(0), 16777619) >>> 0;
  return x % 360;
}

function initials(name) {
  const parts = name.split(/[\s._\-@]+/).filter(Boolean);
  const s = parts.length >= 2 ? parts[0][0] + parts[1][0] : [...name].slice(0, 2).join('');
  return s.toUpperCase();
}

function avatar(name, size = '') {
  return h('div', { class: `avatar ${size}`, style: `background:hsl(${hashHue(name)} 55% 45%)`, 'aria-hidden': 'true' },
    initials(name));
}

const fmtTime = (ms) => new Date(ms).toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
/** Short time for the narrow gutter of grouped messages: "4:10" (no AM/PM). */
const fmtShort = (ms) => fmtTime(ms).replace(/\s*[AaPp]\.?[Mm]\.?$/, '');
const fmtFull = (ms) => new Date(ms).toLocaleString();
const dayKey = (ms) => new Date(ms).toDateString();
function dayLabel(ms) {
  const d = new Date(ms), today = new Date();
  const yest = new Date(); yest.setDate(today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === yest.toDateString()) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });
}
const badgeText = (n) => (n >= 100 ? '99+' : String(n));

/** Text with http(s) links made clickable; everything else stays a text node (no HTML). */
function richText(text) {
  return text.split(/(https?:\/\/[^\s<>"]+)/g).map((part, i) =>
    i % 2 ? h('a', { href: part, target: '_blank', rel: 'noopener noreferrer' }, part) : part);
}

/** Channel id derived from a display name: 1-64 of a-z 0-9 - _ . */
const slug = (s) => s.toLowerCase().trim().replace(/\s+/g, '-').replace(/[^a-z0-9\-_.]/g, '').slice(0, 64);

/** The other members of a direct channel, from its id: "dm/" + sorted names joined by "+". */
const dmPeers = (ch) => ch.id.slice(3).split('+').filter((u) => u && u !== state.me);
function displayName(ch) {
  if (ch.direct) return dmPeers(ch).join(', ') || `${state.me} (you)`;
  return ch.name || ch.id;
}

function toast(text, kind = 'error') {
  const el = h('div', { class: `toast ${kind}`, testid: 'toast', role: 'alert' }, text);
  $('toasts').append(el);
  setTimeout(() => el.remove(), 6000);
}
const errText = (e) => (e && e.message) || String(e);

// ---------------------------------------------------------------------------------------------
// Connection: requests matched by id, pushes, heartbeat, reconnect with backoff
// ---------------------------------------------------------------------------------------------

let ws = null;
let nextId = 1;
const inflight = new Map();  // request id -> {resolve, reject, timer}
let backoff = BACKOFF_MIN_MS;
let reconnectTimer = null, heartbeatTimer = null;

const mkErr = (code, message, temporary) => Object.assign(new Error(message), { code, temporary });

function request(type, fields = {}, timeoutMs = 15000) {
  return new Promise((resolve, reject) => {
    if (!ws || ws.readyState !== WebSocket.OPEN || (!state.connected && type !== 'connect')) {
      reject(mkErr('disconnected', 'not connected', true));
      return;
    }
    const id = nextId;
    nextId = nextId >= 0xfffffffe ? 1 : nextId + 1;  // ids are positive and below 2^32
    const timer = setTimeout(() => {
      inflight.delete(id);
      reject(mkErr('timeout', `no reply to ${type}`, true));
    }, timeoutMs);
    inflight.set(id, { resolve, reject, timer });
    ws.send(JSON.stringify({ id, type, ...fields }));
  });
}

function openSocket() {
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  if (!state.me) return;
  if (ws) {  // an attempt still in progress is abandoned (its handlers check sock === ws)
    const old = ws;
    ws = null;
    failInflight();
    try { old.close(); } catch { /* ignore */ }
  }
  const sock = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
  ws = sock;
  sock.onopen = () => sock === ws && onOpen(sock);
  sock.onmessage = (ev) => sock === ws && onFrame(ev.data);
  sock.onclose = () => sock === ws && onClosed();
  sock.onerror = () => {};  // a close event follows
}

/** Abandons the current socket at once (a dead connection can take long to report close). */
function dropSocket() {
  const old = ws;
  if (!old) return;
  try { old.close(); } catch { /* already closed */ }
  onClosed();
}

async function onOpen(sock) {
  let session;
  try {
    session = await request('connect', { token: state.me, client: 'starling-web' });
  } catch (e) {
    if (sock !== ws) return;  // superseded by a newer attempt
    if (['unauthenticated', 'denied', 'invalid_argument'].includes(e.code)) signOut(`Sign-in failed: ${errText(e)}`);
    else dropSocket();
    return;
  }
  if (sock !== ws) return;
  state.connected = true;
  backoff = BACKOFF_MIN_MS;
  $('reconnecting').hidden = true;
  if (session.user) state.me = session.user;
  state.presence.set(state.me, 'online');
  state.myStatus = 'online';
  startHeartbeat(session.heartbeat_s || 30);
  await resync();
}

function onFrame(data) {
  let msg;
  try { msg = JSON.parse(data); } catch { return; }
  if (msg.push) { onPush(msg); return; }
  const call = inflight.get(msg.id);
  if (!call) return;
  inflight.delete(msg.id);
  clearTimeout(call.timer);
  if (msg.error) call.reject(mkErr(msg.error.code, msg.error.message || msg.error.code, !!msg.error.temporary));
  else call.resolve(msg.result || {});
}

/** Fails every unanswered request: its reply can no longer come. */
function failInflight() {
  const calls = [...inflight.values()];
  inflight.clear();
  for (const call of calls) {
    clearTimeout(call.timer);
    call.reject(mkErr('disconnected', 'connection lost', true));
  }
}

function onClosed() {
  ws = null;
  state.connected = false;
  clearInterval(heartbeatTimer);
  failInflight();
  for (const ch of state.channels.values()) { ch.subscribed = false; ch.subscribing = false; }
  if (!state.me) return;  // signed out
  $('reconnecting').hidden = false;
  if (!reconnectTimer) {
    reconnectTimer = setTimeout(openSocket, backoff);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
  }
  invalidate('messages', 'thread', 'sidebar');
}

/** The server closes connections silent for three heartbeats; a ping that gets no answer
 * means the connection is dead even if the browser has not noticed yet. */
function startHeartbeat(seconds) {
  clearInterval(heartbeatTimer);
  heartbeatTimer = setInterval(() => {
    request('ping', {}, Math.max(5000, seconds * 1000)).catch((e) => {
      if (e.code === 'timeout') dropSocket();
    });
  }, seconds * 1000);
}

/** After every (re)connect: follow the channel list and reload it, re-subscribe, resend
 * pending messages. */
async function resync() {
  await followChannelList();  // first, so that no change after the reload goes unnoticed
  await refreshChannels();
  // A channel opened before but not loaded yet subscribes after its first history page instead.
  for (const ch of state.channels.values()) if (ch.loaded || ch !== cur()) subscribe(ch);
  const ch = cur() || pickInitialChannel();
  if (ch) {
    if (ch.id !== state.current) openChannel(ch.id);
    else { ensureLoaded(ch).then(() => { refreshInfo(ch); scheduleRead(); scheduleReadBy(true); }); }
  }
  for (const ch of state.channels.values()) if (ch.direct) refreshMembers(ch);
  for (const p of state.pending.values()) if (p.status !== 'failed' && p.seq == null) deliver(p);
  if (document.hidden) setMyPresence('away');
  invalidate('all');
}

function pickInitialChannel() {
  const last = localStorage.getItem(`starling.channel.${state.me}`);
  if (last && state.channels.has(last)) return state.channels.get(last);
  return sortedChannels(false)[0] || sortedChannels(true)[0] || null;
}

// ---------------------------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------------------------

/** Applies a channel info / channels-list entry to our state. */
function applyInfo(info) {
  let ch = state.channels.get(info.channel);
  if (!ch) { ch = newChan(info.channel); state.channels.set(ch.id, ch); }
  if (info.name != null) ch.name = info.name;
  if (info.visibility) ch.visibility = info.visibility;
  if (info.topic != null) ch.topic = info.topic;
  if (info.owner !== undefined) ch.owner = info.owner;
  if (Array.isArray(info.members)) {
    ch.members = info.members.map((m) => (typeof m === 'string' ? m : m.user));
    ch.infoSeq = Math.max(ch.infoSeq, info.head_seq || 0);
  }
  return ch;
}

/** Our own channel list's stream: `joined` / `left` events (docs/PROTOCOL.md, "Channel records"). */
const myListChannel = () => `$chat/user/${state.me}`;

/** Subscribes (live) to our channel list's stream; its events arrive in onPush. */
async function followChannelList() {
  try {
    await request('subscribe', { channel: myListChannel() });
  } catch (e) {
    if (e.code !== 'already_subscribed' && e.code !== 'disconnected') {
      toast(`Channels you are added to will show after a reload: ${errText(e)}`);
    }
  }
}

let listReload = null, listStale = false;

/** A `joined` or `left` event arrived: reload `channels {}`, once for a burst of events (an
 * event during a reload asks for one more, so the last answer has seen every event). */
function channelListChanged() {
  listStale = true;
  if (listReload) return;
  listReload = (async () => {
    while (listStale && state.connected) {
      listStale = false;
      await refreshChannels();
    }
  })().finally(() => { listReload = null; });
}

async function refreshChannels() {
  const asked = Date.now();
  let r;
  try { r = await request('channels'); } catch { return; }
  const seen = new Set();
  for (const info of r.channels || []) {
    const fresh = !state.channels.has(info.channel);
    const ch = applyInfo(info);
    seen.add(ch.id);
    const head = info.head_seq || 0;
    if (!ch.loaded && head > ch.highSeq) ch.highSeq = head;  // nothing held: resume at the head
    ch.readSeq = Math.max(ch.readSeq, info.read_seq || 0);
    if (isReading(ch)) ch.unread = 0;
    else {
      // Server counts up to `head`; add what we already received beyond it.
      let extra = 0;
      for (const m of ch.records.values()) if (m.seq > head && countsUnread(ch, m)) extra++;
      ch.unread = (info.unread || 0) + extra;
    }
    ch.unreadBase = Math.max(ch.unreadBase, head);
    if (fresh && state.connected) subscribe(ch);
    if (fresh && ch.direct) refreshMembers(ch);
  }
  // Gone from the list: we left or were removed. (A channel adopted after the request was
  // sent may simply be missing from this answer.)
  for (const [id, ch] of [...state.channels]) if (!seen.has(id) && ch.adoptedAt < asked) forgetChannel(id);
  invalidate('sidebar', 'header');
}

function countsUnread(ch, m) {
  return (m.kind === 'message' || m.kind === 'reply') && m.sender !== state.me && m.seq > ch.readSeq;
}

function forgetChannel(id) {
  state.channels.delete(id);
  if (state.current === id) {
    state.current = null;
    state.thread = null;
    const next = pickInitialChannel();
    if (next) openChannel(next.id);
  }
  invalidate('all');
}

async function subscribe(ch) {
  if (ch.subscribed || ch.subscribing || !state.connected) return;
  ch.subscribing = true;
  try {
    const r = await request('subscribe', { channel: ch.id, since: ch.highSeq });
    ch.subscribed = true;
    if (r.recovered === false) forgetHeld(ch, r.head_seq || 0);
  } catch (e) {
    if (e.code === 'already_subscribed') ch.subscribed = true;
    else if (e.code !== 'disconnected') toast(`Could not subscribe to ${displayName(ch)}: ${errText(e)}`);
  } finally {
    ch.subscribing = false;
  }
}

/** The server cannot send exactly what we missed (`recovered: false`: retention removed some
 * of it, or its data was replaced): drop our copy of the channel and load it again from the
 * server's head. */
function forgetHeld(ch, head) {
  Object.assign(ch, { records: new Map(), effects: new Map(), sorted: null, highSeq: head, loaded: false, atStart: false, readBy: null, readByFor: 0 });
  if (ch.id === state.current) {
    rowCache.clear();
    stickToBottom = true;
    toast(`${displayName(ch)} was reloaded: the server no longer has some of the messages in between.`, 'info');
    ensureLoaded(ch);
  }
  invalidate('messages', 'thread');
}

/** First open of a channel: the last page of history, then subscribe from its end. */
async function ensureLoaded(ch) {
  if (ch.loaded || ch.loading || !state.connected) return;
  ch.loading = true;
  try {
    const r = await request('history', { channel: ch.id, limit: PAGE });
    const msgs = r.messages || [];
    addRecords(ch, msgs, false);
    if (msgs.length) ch.highSeq = Math.max(ch.highSeq, msgs[msgs.length - 1].seq);
    if (msgs.length < PAGE || (msgs[0] && msgs[0].seq <= 1)) ch.atStart = true;
    ch.loaded = true;
  } catch (e) {
    if (e.code !== 'disconnected') toast(`Could not load ${displayName(ch)}: ${errText(e)}`);
    return;
  } finally {
    ch.loading = false;
  }
  await subscribe(ch);
  invalidate('messages', 'thread');
}

/** The lowest seq of the contiguous range ending at highSeq that we hold. */
function lowSeq(ch) {
  let s = ch.highSeq;
  if (!ch.records.has(s)) return s + 1;
  while (s > 1 && ch.records.has(s - 1)) s--;
  return s;
}

async function loadOlder(ch) {
  if (!ch.loaded || ch.atStart || ch.loadingOlder || !state.connected) return;
  const low = lowSeq(ch);
  if (low <= 1) { ch.atStart = true; invalidate('messages'); return; }
  ch.loadingOlder = true;
  invalidate('messages');
  try {
    const r = await request('history', { channel: ch.id, before: low, limit: PAGE });
    const msgs = r.messages || [];
    addRecords(ch, msgs, false);
    if (msgs.length < PAGE || msgs[0].seq <= 1) ch.atStart = true;
  } catch (e) {
    if (e.code !== 'disconnected') toast(`Could not load older messages: ${errText(e)}`);
  } finally {
    ch.loadingOlder = false;
    invalidate('messages');
  }
}

async function refreshInfo(ch) {
  try { applyInfo(await request('channel_info', { channel: ch.id })); } catch { return; }
  invalidate('header', 'sidebar');
}

async function refreshMembers(ch) {
  let r;
  try { r = await request('members', { channel: ch.id }); } catch { return; }
  const list = r.members || [];
  for (const m of list) if (m.presence) state.presence.set(m.user, m.presence);
  if (!ch.members || !ch.direct) ch.members = list.map((m) => m.user);
  invalidate('sidebar', 'header');
}

function sortedChannels(direct) {
  return [...state.channels.values()].filter((c) => c.direct === direct)
    .sort((a, b) => displayName(a).localeCompare(displayName(b)));
}

function openChannel(id) {
  const ch = state.channels.get(id);
  if (!ch) return;
  if (state.current !== id) {
    state.thread = null;
    state.editing = null;
    state.picker = null;
    state.membersOpen = false;
    rowCache.clear();
    lastTypingSent = 0;
    stickToBottom = true;
  }
  state.current = id;
  ch.newMarker = ch.unread > 0 ? ch.readSeq : null;
  localStorage.setItem(`starling.channel.${state.me}`, id);
  const composer = $('composer');
  composer.disabled = false;
  composer.placeholder = `Message ${ch.direct ? displayName(ch) : '#' + displayName(ch)}`;
  invalidate('all');
  composer.focus();
  ensureLoaded(ch).then(() => {
    refreshInfo(ch);
    if (!ch.direct) refreshMembers(ch);
    scheduleRead();
    scheduleReadBy();
  });
}

// ---------------------------------------------------------------------------------------------
// Records: storing, pushes, folding
// ---------------------------------------------------------------------------------------------

/** Stores records (deduplicated by seq). `live` = they came as pushes of our subscription. */
function addRecords(ch, list, live) {
  let changed = false;
  for (const m of list) {
    if (!m.seq || ch.records.has(m.seq)) continue;
    changed = true;
    ch.records.set(m.seq, m);
    ch.sorted = null;
    if (EFFECT_KINDS.has(m.kind) && m.relation) {
      const arr = ch.effects.get(m.relation) || [];
      arr.push(m);
      if (arr.length > 1 && arr[arr.length - 2].seq > m.seq) arr.sort((a, b) => a.seq - b.seq);
      ch.effects.set(m.relation, arr);
    }
    if (m.kind === 'channel_event' && m.seq > ch.infoSeq) applyChannelEvent(ch, m);
    if (m.sender === state.me && m.client_id && state.pending.has(m.client_id)) state.pending.delete(m.client_id);
    if (live) {
      ch.highSeq = Math.max(ch.highSeq, m.seq);
      if (m.kind === 'message' || m.kind === 'reply') ch.typing.delete(m.sender);
      if (m.seq > ch.unreadBase && countsUnread(ch, m) && !isReading(ch)) ch.unread++;
    }
  }
  if (changed) invalidate('messages', 'thread', 'sidebar', 'typing');
}

function applyChannelEvent(ch, m) {
  let ev;
  try { ev = JSON.parse(m.text || '{}'); } catch { return; }
  ch.infoSeq = m.seq;
  const members = ch.members || [];
  switch (ev.type) {
    case 'renamed': ch.name = ev.name; break;
    case 'topic': ch.topic = ev.topic || ''; break;
    case 'member_added': if (!members.includes(ev.user)) ch.members = [...members, ev.user]; break;
    case 'member_removed':
      ch.members = members.filter((u) => u !== ev.user);
      if (ev.user === state.me) { forgetChannel(ch.id); return; }
      break;
    default: break;
  }
  invalidate('header', 'sidebar');
}

function onPush(p) {
  if (p.push === 'unsubscribed') {
    // The channel stopped admitting us (removed, or made private): the server ended the
    // subscription; our channel list follows from its own push.
    const ch = state.channels.get(p.channel);
    if (ch) { ch.subscribed = false; ch.subscribing = false; }
    toast(p.reason || `no longer subscribed to ${p.channel}`);
    return;
  }
  if (p.push !== 'message' || !p.message) return;
  const m = p.message;
  if (p.channel === myListChannel()) {
    if (m.kind === 'channel_event') channelListChanged();
    return;
  }
  const ch = state.channels.get(p.channel);
  switch (m.kind) {
    case 'presence': {
      // Sent by "$server" with text {"user": "bob", "status": "away"}.
      let ev = null;
      try { ev = JSON.parse(m.text || ''); } catch { /* not JSON */ }
      if (ev && typeof ev === 'object') setPresence(ev.user, ev.status);
      else setPresence(m.sender, m.text);  // plain form: sender = user, text = status
      return;
    }
    case 'typing':
      if (ch && m.sender !== state.me) {
        ch.typing.set(m.sender, Date.now() + TYPING_SHOW_MS);
        invalidate('typing');
      }
      return;
    case 'read':
      if (!ch) return;
      if (m.sender === state.me) {  // our own marker moved (possibly from another tab)
        ch.readSeq = Math.max(ch.readSeq, m.relation || 0);
        if (ch.readSeq >= ch.highSeq) ch.unread = 0;
        invalidate('sidebar');
      } else if (ch.id === state.current) {
        scheduleReadBy(true);
      }
      return;
    default:
      break;
  }
  if (!ch) return;
  addRecords(ch, [m], true);
  if (ch.id === state.current && (m.kind === 'message' || m.kind === 'reply')) {
    scheduleRead();
    if (m.sender === state.me) scheduleReadBy();
  }
}

function setPresence(user, status) {
  if (!user || !status) return;
  state.presence.set(user, status);
  invalidate('sidebar', 'header');
}

function sortedRecords(ch) {
  if (!ch.sorted) ch.sorted = [...ch.records.values()].sort((a, b) => a.seq - b.seq);
  return ch.sorted;
}

/** A message with every record that points at it applied, in seq order. */
function fold(ch, m) {
  const f = { text: m.text, binary: m.text == null, edited: false, deleted: false, reactions: new Map(), replies: [] };
  for (const e of ch.effects.get(m.seq) || []) {
    switch (e.kind) {
      case 'edit':
        if (e.sender === m.sender && e.text != null) { f.text = e.text; f.binary = false; f.edited = true; }
        break;
      case 'delete': f.deleted = true; break;
      case 'reaction_add':
      case 'reaction_remove': {
        if (!e.text) break;
        const users = f.reactions.get(e.text) || new Set();
        if (e.kind === 'reaction_add') users.add(e.sender); else users.delete(e.sender);
        f.reactions.set(e.text, users);
        break;
      }
      case 'reply': if (!isDeleted(ch, e.seq)) f.replies.push(e); break;
      default: break;
    }
  }
  for (const [emoji, users] of f.reactions) if (!users.size) f.reactions.delete(emoji);
  return f;
}

const isDeleted = (ch, seq) => (ch.effects.get(seq) || []).some((e) => e.kind === 'delete');

/** Our newest, not deleted, top-level message in the channel. */
function myLatest(ch) {
  const recs = sortedRecords(ch);
  for (let i = recs.length - 1; i >= 0; i--) {
    const m = recs[i];
    if (m.kind === 'message' && m.sender === state.me && !isDeleted(ch, m.seq)) return m;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Writing: publish with pending state and retries, edits, deletes, reactions, typing
// ---------------------------------------------------------------------------------------------

function sendMessage(text, replyTo) {
  const ch = cur();
  if (!ch || !text.trim()) return;
  const p = { cid: uuid(), channel: ch.id, text, replyTo: replyTo || 0, status: 'sending', error: '', seq: null };
  state.pending.set(p.cid, p);
  stickToBottom = true;
  lastTypingSent = 0;  // receivers drop our typing state on the message; the next key re-announces
  deliver(p);
}

/** Sends (or re-sends, with the SAME client_id so the server deduplicates) a pending message. */
async function deliver(p) {
  p.status = 'sending';
  p.error = '';
  invalidate('messages', 'thread');
  if (!state.connected) return;  // resync() delivers it after the reconnect
  const req = { channel: p.channel, text: p.text, client_id: p.cid };
  if (p.replyTo) req.reply_to = p.replyTo;
  try {
    const r = await request('publish', req);
    p.seq = r.seq;
    const ch = state.channels.get(p.channel);
    if (!ch || ch.records.has(r.seq)) state.pending.delete(p.cid);  // else: its push removes it
  } catch (e) {
    if (e.code === 'disconnected') return;  // stays "sending"; resync() retries it
    p.status = 'failed';
    p.error = errText(e);
  }
  invalidate('messages', 'thread');
}

async function act(type, fields) {
  try { await request(type, { channel: state.current, ...fields }); } catch (e) { toast(`${type} failed: ${errText(e)}`); }
}

function toggleReaction(seq, emoji, mine) {
  state.picker = null;
  invalidate('messages', 'thread');
  act('react', mine ? { seq, emoji, remove: true } : { seq, emoji });
}

let lastTypingSent = 0;
function noteTyping() {
  const now = Date.now();
  if (!state.connected || !state.current || now - lastTypingSent < TYPING_SEND_MS) return;
  lastTypingSent = now;
  request('typing', { channel: state.current }).catch(() => {});
}

let readTimer = null;
function scheduleRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(markRead, 400);
}

/** Moves our read marker to the newest seq of the open channel (window focused only). */
async function markRead() {
  const ch = cur();
  if (!ch || !ch.loaded || !isReading(ch) || !state.connected) return;
  const seq = ch.highSeq;
  if (ch.unread) { ch.unread = 0; invalidate('sidebar'); }
  if (seq <= ch.readSeq) return;
  const before = ch.readSeq;
  ch.readSeq = seq;
  try { await request('read', { channel: ch.id, seq }); } catch { ch.readSeq = before; }
}

let readByTimer = null;
function scheduleReadBy(force) {
  const ch = cur();
  if (ch && force) ch.readByFor = 0;
  clearTimeout(readByTimer);
  readByTimer = setTimeout(refreshReadBy, 250);
}

async function refreshReadBy() {
  const ch = cur();
  if (!ch || !state.connected) return;
  const mine = myLatest(ch);
  if (!mine) { ch.readBy = null; return; }
  if (ch.readByFor === mine.seq) return;
  ch.readByFor = mine.seq;
  try {
    const r = await request('read_by', { channel: ch.id, seq: mine.seq });
    ch.readBy = { seq: mine.seq, read: r.read || 0, of: r.of || 0, users: r.users || [] };
  } catch { ch.readByFor = 0; return; }
  invalidate('messages');
}

function setMyPresence(status) {
  state.myStatus = status;
  state.presence.set(state.me, status);
  invalidate('sidebar', 'header');
  if (state.connected) request('presence', { status }).catch(() => {});
}

// ---------------------------------------------------------------------------------------------
// Rendering (batched; message rows are cached by key and re-used while their content is the same)
// ---------------------------------------------------------------------------------------------

const dirty = new Set();
let flushTimer = null;
function invalidate(...parts) {
  for (const p of parts) dirty.add(p);
  if (!flushTimer) flushTimer = setTimeout(flush, 16);
}

function flush() {
  flushTimer = null;
  const all = dirty.has('all');
  const d = new Set(dirty);
  dirty.clear();
  if (!state.me) return;
  if (all || d.has('sidebar')) renderSidebar();
  if (all || d.has('header')) renderHeader();
  if (all || d.has('messages')) renderMessages();
  if (all || d.has('thread') || d.has('messages')) renderThread();
  if (all || d.has('typing') || d.has('messages')) renderTyping();
  let total = 0;
  for (const ch of state.channels.values()) total += ch.unread;
  const ch = cur();
  document.title = `${total ? `(${badgeText(total)}) ` : ''}${ch ? displayName(ch) + ' · ' : ''}Starling`;
}

function presenceDot(user, testid) {
  const status = state.presence.get(user) || 'offline';
  return h('span', { class: `dot ${status}`, testid, dataset: { status }, title: `${user}: ${status}` });
}

function renderSidebar() {
  $('me-name').textContent = state.me;
  const myDot = $('me-dot');
  const mine = state.connected ? state.myStatus : 'offline';
  myDot.className = `dot ${mine}`;
  myDot.dataset.status = mine;
  const item = (ch) => {
    const unread = isReading(ch) ? 0 : ch.unread;
    const peers = ch.direct ? dmPeers(ch) : [];
    const icon = !ch.direct ? h('span', { class: 'side-icon' }, ch.visibility === 'private' ? '🔒' : '#')
      : peers.length === 1 ? presenceDot(peers[0], `dm-presence-${peers[0]}`)
        : h('span', { class: 'side-icon group' }, String(peers.length || 1));
    return h('li', {},
      h('button', {
        class: `side-item${ch.id === state.current ? ' active' : ''}${unread ? ' unread' : ''}`,
        testid: `channel-item-${ch.id}`, title: ch.topic || displayName(ch),
        onclick: () => openChannel(ch.id),
      }, icon, h('span', { class: 'side-name' }, displayName(ch)),
      unread ? h('span', { class: 'badge', testid: `unread-${ch.id}` }, badgeText(unread)) : null));
  };
  const chans = sortedChannels(false), dms = sortedChannels(true);
  $('channel-list').replaceChildren(...chans.map(item),
    ...(chans.length ? [] : [h('li', { class: 'side-empty' }, 'No channels yet')]));
  $('dm-list').replaceChildren(...dms.map(item),
    ...(dms.length ? [] : [h('li', { class: 'side-empty' }, 'No conversations yet')]));
}

function renderHeader() {
  const ch = cur();
  const title = $('channel-title'), topic = $('channel-topic'), count = $('member-count');
  if (!ch) {
    title.textContent = '';
    topic.hidden = true;
    count.hidden = true;
    $('members-popover').hidden = true;
    return;
  }
  title.replaceChildren(
    ch.direct ? (dmPeers(ch).length === 1 ? presenceDot(dmPeers(ch)[0], 'header-presence') : '')
      : h('span', { class: 'muted' }, ch.visibility === 'private' ? '🔒 ' : '# '),
    displayName(ch));
  if ($('topic-input').hidden) {
    topic.hidden = false;
    topic.textContent = ch.topic || 'Add a topic';
    topic.classList.toggle('placeholder', !ch.topic);
  }
  const n = ch.members ? ch.members.length : 0;
  count.hidden = !n;
  count.replaceChildren(icon('users'), String(n));
  count.title = `${n} member${n === 1 ? '' : 's'}`;
  renderMembersPopover(ch);
}

function renderMembersPopover(ch) {
  const pop = $('members-popover');
  pop.hidden = !state.membersOpen;
  if (!state.membersOpen) return;
  const members = [...(ch.members || [])].sort();
  const inviteInput = h('input', { class: 'input', testid: 'invite-input', placeholder: 'User name' });
  const invite = async (e) => {
    e.preventDefault();
    const user = inviteInput.value.trim();
    if (!user) return;
    try {
      applyInfo(await request('channel_invite', { channel: ch.id, user }));
      inviteInput.value = '';
      refreshMembers(ch);
    } catch (err) { toast(`Could not add ${user}: ${errText(err)}`); }
  };
  pop.replaceChildren(
    h('div', { class: 'popover-title' }, `Members (${members.length})`),
    h('ul', { class: 'member-list' }, members.map((u) => h('li', { class: 'member', testid: `member-${u}` },
      presenceDot(u, `presence-${u}`), avatar(u, 'sm'),
      h('span', { class: 'member-name' }, u, u === state.me ? h('span', { class: 'muted' }, ' (you)') : null),
      u === ch.owner ? h('span', { class: 'tag' }, 'owner') : null))),
    ch.direct ? null : h('form', { class: 'invite-form', onsubmit: invite }, inviteInput,
      h('button', { class: 'btn primary', testid: 'invite-submit' }, 'Add')),
    ch.direct ? null : h('button', {
      class: 'btn danger-link', testid: 'leave-channel',
      onclick: () => confirmDialog(`Leave #${displayName(ch)}?`, 'Leave', async () => {
        await request('channel_leave', { channel: ch.id });
        forgetChannel(ch.id);
      }),
    }, 'Leave channel'));
}

/** Row cache for the open channel: key -> {sig, el}. */
const rowCache = new Map();
let stickToBottom = true;

function cachedRow(key, sig, build) {
  const hit = rowCache.get(key);
  if (hit && hit.sig === sig) return hit.el;
  const el = build();
  rowCache.set(key, { sig, el });
  return el;
}

/** Puts `nodes` into `parent` in order, moving only what is out of place (keeps focus/selection). */
function reconcile(parent, nodes) {
  nodes.forEach((n, i) => { if (parent.childNodes[i] !== n) parent.insertBefore(n, parent.childNodes[i] || null); });
  while (parent.childNodes.length > nodes.length) parent.lastChild.remove();
}

/** Re-renders a scrolling list keeping the view: at the bottom stays at the bottom, else the
 * first visible row keeps its position (so prepending older pages does not jump). */
function renderScrolling(list, nodes, forceBottom) {
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  let anchor = null;
  if (!atBottom && !forceBottom) {
    for (const el of list.children) {
      if (el.offsetTop + el.offsetHeight > list.scrollTop) { anchor = { el, off: el.offsetTop - list.scrollTop }; break; }
    }
  }
  reconcile(list, nodes);
  if (forceBottom || atBottom) list.scrollTop = list.scrollHeight;
  else if (anchor && anchor.el.isConnected) list.scrollTop = anchor.el.offsetTop - anchor.off;
}

function renderMessages() {
  const list = $('messages');
  const ch = cur();
  if (!ch) {
    reconcile(list, [h('div', { class: 'empty-state' }, 'Pick a channel on the left, or create one with +.')]);
    $('composer').disabled = true;
    $('send').disabled = true;
    return;
  }
  $('composer').disabled = false;
  $('send').disabled = false;
  const nodes = [];
  if (!ch.loaded) nodes.push(h('div', { class: 'loading' }, 'Loading…'));
  else if (ch.atStart) {
    nodes.push(cachedRow('start', displayName(ch), () => h('div', { class: 'channel-start', testid: 'channel-start' },
      h('div', { class: 'start-title' }, ch.direct ? displayName(ch) : `# ${displayName(ch)}`),
      h('div', { class: 'muted' }, ch.direct ? 'This is the beginning of your conversation.'
        : `This is the very beginning of #${displayName(ch)}.`))));
  } else {
    nodes.push(cachedRow('older', String(ch.loadingOlder), () => h('button',
      { class: 'load-older', testid: 'load-older', onclick: () => loadOlder(ch) },
      ch.loadingOlder ? 'Loading older messages…' : 'Load older messages')));
  }
  const mine = myLatest(ch);
  if (mine && ch.readByFor !== mine.seq) scheduleReadBy();
  let prev = null, lastDay = null, markerShown = false;
  for (const m of sortedRecords(ch)) {
    if (m.kind !== 'message' && m.kind !== 'channel_event') continue;
    const day = dayKey(m.timestamp_ms);
    let separated = false;
    if (day !== lastDay) {
      lastDay = day;
      separated = true;
      nodes.push(cachedRow(`day-${day}`, day, () => h('div', { class: 'day-sep' }, h('span', {}, dayLabel(m.timestamp_ms)))));
    }
    if (!markerShown && ch.newMarker != null && m.seq > ch.newMarker && m.sender !== state.me && m.kind === 'message') {
      markerShown = true;
      separated = true;
      nodes.push(cachedRow('new-marker', '', () => h('div', { class: 'new-marker', testid: 'new-marker' }, h('span', {}, 'New'))));
    }
    if (m.kind === 'channel_event') {
      nodes.push(cachedRow(`e${m.seq}`, '', () => eventRow(m)));
      prev = null;
      continue;
    }
    const cont = !separated && prev && prev.sender === m.sender && m.timestamp_ms - prev.timestamp_ms < GROUP_GAP_MS;
    const readBy = mine && mine.seq === m.seq && ch.readBy && ch.readBy.seq === m.seq ? ch.readBy : null;
    nodes.push(messageRow(ch, m, { cont, where: 'main', readBy }));
    prev = m;
  }
  for (const p of state.pending.values()) {
    if (p.channel === ch.id && !p.replyTo && !(p.seq && ch.records.has(p.seq))) nodes.push(pendingRow(p, 'main'));
  }
  renderScrolling(list, nodes, stickToBottom);
  stickToBottom = false;
  // Not enough to scroll yet? Fetch older pages until there is (or the start is reached).
  if (ch.loaded && !ch.atStart && !ch.loadingOlder && list.scrollHeight <= list.clientHeight + 40) loadOlder(ch);
}

function eventRow(m) {
  let ev = {};
  try { ev = JSON.parse(m.text || '{}'); } catch { /* shown as unknown */ }
  const by = ev.by || m.sender;
  const text = {
    created: `${by} created this channel`,
    renamed: `${by} renamed the channel to “${ev.name}”`,
    topic: ev.topic ? `${by} set the topic: ${ev.topic}` : `${by} cleared the topic`,
    member_added: ev.user === by ? `${ev.user} joined` : `${by} added ${ev.user}`,
    member_removed: ev.user === by ? `${ev.user} left` : `${by} removed ${ev.user}`,
  }[ev.type] || `${by} changed the channel`;
  return h('div', { class: 'msg event', testid: `event-${m.seq}` },
    h('div', { class: 'msg-gutter' }, h('time', { class: 'gutter-time', title: fmtFull(m.timestamp_ms) }, fmtShort(m.timestamp_ms))),
    h('div', { class: 'msg-body' }, text));
}

/** testid helper: rows in the thread pane get a "thread-" prefix (the root: "thread-root-"). */
const tidFor = (where) => (where === 'main' ? (s) => s : where === 'thread' ? (s) => `thread-${s}` : (s) => `thread-root-${s}`);

function messageRow(ch, m, opts) {
  const f = fold(ch, m);
  const editing = state.editing && state.editing.seq === m.seq && state.editing.where === opts.where;
  const picker = state.picker && state.picker.seq === m.seq && state.picker.where === opts.where;
  const reactions = [...f.reactions].map(([e, users]) => [e, [...users].sort()]);
  const sig = JSON.stringify([f.text, f.edited, f.deleted, reactions, f.replies.length, opts.cont, editing, picker,
    opts.readBy && [opts.readBy.read, opts.readBy.users], ch.owner === state.me]);
  return cachedRow(`${opts.where}-${m.seq}`, sig, () => buildMessageRow(ch, m, f, reactions, { ...opts, editing, picker }));
}

function buildMessageRow(ch, m, f, reactions, opts) {
  const tid = tidFor(opts.where);
  const seq = m.seq, own = m.sender === state.me;
  const canDelete = own || ch.owner === state.me;
  const body = [];
  if (!opts.cont) {
    body.push(h('div', { class: 'msg-meta' }, h('span', { class: 'msg-sender' }, m.sender),
      h('time', { title: fmtFull(m.timestamp_ms) }, fmtTime(m.timestamp_ms))));
  }
  if (f.deleted) {
    body.push(h('div', { class: 'msg-text deleted', testid: tid(`message-text-${seq}`) }, 'This message was deleted'));
  } else if (opts.editing) {
    const input = h('textarea', { class: 'edit-input', testid: tid(`edit-input-${seq}`), dataset: { role: 'edit', seq }, rows: 2 });
    input.value = f.text || '';
    setTimeout(() => { input.focus(); input.setSelectionRange(input.value.length, input.value.length); }, 0);
    body.push(input, h('div', { class: 'edit-actions' },
      h('span', { class: 'muted' }, 'Esc to cancel · Enter to save'),
      h('button', { class: 'btn', testid: tid(`edit-cancel-${seq}`), dataset: { action: 'edit-cancel' } }, 'Cancel'),
      h('button', { class: 'btn primary', testid: tid(`edit-save-${seq}`), dataset: { action: 'edit-save', seq } }, 'Save')));
  } else {
    body.push(h('div', { class: 'msg-text', testid: tid(`message-text-${seq}`) },
      f.binary ? h('span', { class: 'muted' }, '[binary message]') : richText(f.text),
      f.edited ? h('span', { class: 'edited', testid: tid(`edited-${seq}`), title: 'edited' }, ' (edited)') : null));
  }
  if (!f.deleted && reactions.length) {
    body.push(h('div', { class: 'reactions' }, reactions.map(([emoji, users]) => {
      const mine = users.includes(state.me);
      return h('button', {
        class: `chip${mine ? ' mine' : ''}`, testid: tid(`reaction-${seq}-${emoji}`), title: users.join(', '),
        dataset: { action: 'toggle-reaction', seq, emoji, mine: mine ? '1' : '' },
      }, h('span', { class: 'chip-emoji' }, emoji), h('span', { class: 'chip-count' }, String(users.length)));
    }), h('button', { class: 'chip add', title: 'Add reaction', dataset: { action: 'picker', seq } }, icon('smile'), '+')));
  }
  if (opts.where === 'main' && f.replies.length) {
    const last = f.replies[f.replies.length - 1];
    const people = [...new Set(f.replies.map((r) => r.sender))].slice(0, 3);
    body.push(h('button', { class: 'thread-link', testid: `reply-count-${seq}`, dataset: { action: 'thread', seq } },
      h('span', { class: 'thread-avatars' }, people.map((u) => avatar(u, 'xs'))),
      h('span', { class: 'thread-count' }, `${f.replies.length} ${f.replies.length === 1 ? 'reply' : 'replies'}`),
      h('span', { class: 'muted' }, `Last reply ${fmtTime(last.timestamp_ms)}`)));
  }
  if (opts.readBy && opts.readBy.read > 0) {
    body.push(h('div', { class: 'read-by', testid: 'read-by', title: `Read by ${opts.readBy.users.join(', ')}` },
      `✓ Read by ${opts.readBy.read}`));
  }
  const actions = f.deleted || opts.editing ? null : h('div', { class: 'msg-actions' },
    h('button', { testid: tid(`action-react-${seq}`), title: 'Add reaction', dataset: { action: 'picker', seq } }, icon('smile')),
    opts.where === 'main' ? h('button', { testid: tid(`action-reply-${seq}`), title: 'Reply in thread', dataset: { action: 'thread', seq } }, icon('reply')) : null,
    own ? h('button', { testid: tid(`action-edit-${seq}`), title: 'Edit', dataset: { action: 'edit', seq } }, icon('edit')) : null,
    canDelete ? h('button', { testid: tid(`action-delete-${seq}`), class: 'danger', title: 'Delete', dataset: { action: 'delete', seq } }, icon('trash')) : null);
  const picker = opts.picker ? h('div', { class: 'emoji-picker', testid: tid('emoji-picker') },
    EMOJI.map((e) => h('button', { testid: tid(`emoji-${e}`), title: e, dataset: { action: 'react', seq, emoji: e } }, e))) : null;
  return h('div', {
    class: `msg${opts.cont ? ' cont' : ''}${own ? ' own' : ''}${opts.picker ? ' picking' : ''}`,
    testid: tid(`message-${seq}`), dataset: { seq },
  },
  h('div', { class: 'msg-gutter' }, opts.cont ? h('time', { class: 'gutter-time', title: fmtFull(m.timestamp_ms) }, fmtShort(m.timestamp_ms)) : avatar(m.sender)),
  h('div', { class: 'msg-body' }, body), actions, picker);
}

function pendingRow(p, where) {
  const sig = `${p.status}|${p.error}`;
  return cachedRow(`${where}-p-${p.cid}`, sig, () => h('div', { class: `msg pending ${p.status}`, testid: `pending-${p.cid}` },
    h('div', { class: 'msg-gutter' }, avatar(state.me)),
    h('div', { class: 'msg-body' },
      h('div', { class: 'msg-meta' }, h('span', { class: 'msg-sender' }, state.me),
        h('time', {}, p.status === 'failed' ? 'not sent' : 'sending…')),
      h('div', { class: 'msg-text' }, richText(p.text)),
      p.status === 'failed' ? h('div', { class: 'send-error' }, `⚠ ${p.error || 'Not sent'} `,
        h('button', { class: 'link', testid: `retry-${p.cid}`, onclick: () => deliver(p) }, 'Retry'), ' · ',
        h('button', { class: 'link', testid: `discard-${p.cid}`, onclick: () => { state.pending.delete(p.cid); invalidate('messages', 'thread'); } }, 'Discard'))
        : null)));
}

function renderThread() {
  const pane = $('thread-pane');
  const ch = cur();
  const root = ch && state.thread ? ch.records.get(state.thread) : null;
  pane.hidden = !root;
  document.body.classList.toggle('with-thread', !!root);
  if (!root) return;
  $('thread-channel').textContent = ch.direct ? displayName(ch) : `#${displayName(ch)}`;
  const f = fold(ch, root);
  // Cached wrapper: re-creating it would move the root row and lose focus while editing it.
  const wrap = cachedRow(`thread-root-${root.seq}`, '', () => h('div', { class: 'thread-root', testid: 'thread-root' }));
  const rootRow = messageRow(ch, root, { where: 'root', cont: false });
  if (wrap.firstChild !== rootRow) wrap.replaceChildren(rootRow);
  const nodes = [wrap];
  const replies = (ch.effects.get(root.seq) || []).filter((e) => e.kind === 'reply');
  const n = f.replies.length;
  nodes.push(cachedRow(`thread-sep-${root.seq}`, String(n), () =>
    h('div', { class: 'thread-sep' }, h('span', {}, `${n} ${n === 1 ? 'reply' : 'replies'}`))));
  let prev = null;
  for (const r of replies) {
    const cont = prev && prev.sender === r.sender && r.timestamp_ms - prev.timestamp_ms < GROUP_GAP_MS;
    nodes.push(messageRow(ch, r, { where: 'thread', cont }));
    prev = r;
  }
  for (const p of state.pending.values()) {
    if (p.channel === ch.id && p.replyTo === root.seq && !(p.seq && ch.records.has(p.seq))) nodes.push(pendingRow(p, 'thread'));
  }
  renderScrolling($('thread-messages'), nodes, false);
}

async function openThread(seq) {
  const ch = cur();
  if (!ch) return;
  state.thread = seq;
  state.picker = null;
  invalidate('thread');
  setTimeout(() => $('thread-composer').focus(), 0);
  try {
    const r = await request('thread', { channel: ch.id, root: seq, limit: 500 });
    addRecords(ch, r.messages || [], false);  // replies are channel records: stored like any other
  } catch (e) { toast(`Could not load the thread: ${errText(e)}`); }
  $('thread-messages').scrollTop = $('thread-messages').scrollHeight;
}

function renderTyping() {
  const ch = cur();
  const el = $('typing');
  if (!ch) { el.textContent = ''; return; }
  const now = Date.now();
  const who = [];
  for (const [user, until] of ch.typing) {
    if (until <= now) ch.typing.delete(user);
    else if (user !== state.me) who.push(user);
  }
  el.textContent = !who.length ? '' : who.length === 1 ? `${who[0]} is typing…`
    : who.length === 2 ? `${who[0]} and ${who[1]} are typing…` : 'Several people are typing…';
  if (who.length) {
    const next = Math.min(...[...ch.typing.values()]) - now;
    setTimeout(() => invalidate('typing'), Math.max(50, next + 20));
  }
}

// ---------------------------------------------------------------------------------------------
// Dialogs
// ---------------------------------------------------------------------------------------------

function openModal(title, content, onSubmit, submitLabel, submitTestid) {
  const err = h('p', { class: 'error', testid: 'modal-error', hidden: true });
  const submit = h('button', { class: 'btn primary', type: 'submit', testid: submitTestid }, submitLabel);
  const form = h('form', {
    class: 'modal-form',
    onsubmit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      err.hidden = true;
      try { await onSubmit(); closeModal(); } catch (x) { err.textContent = errText(x); err.hidden = false; } finally { submit.disabled = false; }
    },
  }, h('h3', {}, title), content, err,
  h('div', { class: 'modal-actions' }, h('button', { class: 'btn', type: 'button', onclick: closeModal, testid: 'modal-cancel' }, 'Cancel'),
    onSubmit ? submit : null));
  $('modal').replaceChildren(form);
  $('modal-backdrop').hidden = false;
  const first = form.querySelector('input');
  if (first) first.focus();
}

function closeModal() { $('modal-backdrop').hidden = true; $('modal').replaceChildren(); }

const field = (label, input, hint) => h('label', { class: 'field' }, h('span', {}, label), input, hint ? h('small', { class: 'muted' }, hint) : null);
const userList = (s) => s.split(/[\s,]+/).map((u) => u.trim().replace(/^@/, '')).filter(Boolean);

async function adoptChannel(info) {
  const ch = applyInfo(info);
  ch.adoptedAt = Date.now();
  if (!ch.loaded) ch.highSeq = 0;
  openChannel(ch.id);
  if (ch.direct) refreshMembers(ch);
}

function newChannelDialog() {
  const name = h('input', { class: 'input', testid: 'new-channel-name', placeholder: 'e.g. project-apollo', required: true, maxlength: 64 });
  const id = h('input', { class: 'input', testid: 'new-channel-id', placeholder: 'project-apollo', pattern: '[a-z0-9_.\\-]{1,64}', required: true });
  const topic = h('input', { class: 'input', testid: 'new-channel-topic', placeholder: 'What is it about? (optional)' });
  const priv = h('input', { type: 'checkbox', testid: 'new-channel-private' });
  const members = h('input', { class: 'input', testid: 'new-channel-members', placeholder: 'bob, carol (optional)' });
  let idEdited = false;
  name.addEventListener('input', () => { if (!idEdited) id.value = slug(name.value); });
  id.addEventListener('input', () => { idEdited = true; });
  openModal('Create a channel', [
    field('Name', name), field('Channel id', id, 'Lower-case letters, digits, - _ . (cannot be changed later)'),
    field('Topic', topic), field('Invite', members, 'User names, separated by commas'),
    h('label', { class: 'check' }, priv, ' Private — only invited members can see it'),
  ], async () => {
    const req = { channel: id.value.trim() || slug(name.value), name: name.value.trim(), visibility: priv.checked ? 'private' : 'public' };
    if (topic.value.trim()) req.topic = topic.value.trim();
    const users = userList(members.value);
    if (users.length) req.members = users;
    await adoptChannel(await request('channel_create', req));
  }, 'Create', 'new-channel-submit');
}

function newDirectDialog() {
  const users = h('input', { class: 'input', testid: 'new-dm-users', placeholder: 'alice, bob', required: true });
  openModal('New direct message', [field('To', users, 'One or more user names (up to 8), separated by commas')], async () => {
    const list = userList(users.value).filter((u) => u !== state.me);
    if (!list.length) throw new Error('Name at least one other user.');
    await adoptChannel(await request('direct', { users: list }));
  }, 'Start conversation', 'new-dm-submit');
}

async function directoryDialog() {
  const filter = h('input', { class: 'input', testid: 'directory-filter', placeholder: 'Search channels' });
  const list = h('ul', { class: 'directory-list', testid: 'directory-list' }, h('li', { class: 'muted' }, 'Loading…'));
  openModal('Browse channels', [filter, list], null);
  let channels = [];
  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = channels.filter((c) => !q || `${c.channel} ${c.name} ${c.topic}`.toLowerCase().includes(q));
    list.replaceChildren(...(shown.length ? shown.map((c) => {
      const member = state.channels.has(c.channel);
      return h('li', { class: 'directory-item', testid: `directory-item-${c.channel}` },
        h('div', {}, h('div', { class: 'dir-name' }, `# ${c.name || c.channel}`),
          h('div', { class: 'muted small' }, [typeof c.members === 'number' ? `${c.members} member${c.members === 1 ? '' : 's'}` : null, c.topic]
            .filter(Boolean).join(' · '))),
        h('button', {
          class: `btn ${member ? '' : 'primary'}`, testid: `directory-join-${c.channel}`,
          onclick: async () => {
            try {
              if (!member) await adoptChannel(await request('channel_join', { channel: c.channel }));
              else openChannel(c.channel);
              closeModal();
            } catch (e) { toast(`Could not join: ${errText(e)}`); }
          },
        }, member ? 'Open' : 'Join'));
    }) : [h('li', { class: 'muted' }, 'No public channels found.')]));
  };
  filter.addEventListener('input', draw);
  try { channels = (await request('directory')).channels || []; } catch (e) { toast(`Could not list channels: ${errText(e)}`); }
  draw();
}

function confirmDialog(text, okLabel, action) {
  const ok = h('button', { class: 'btn danger', testid: 'confirm-ok' }, okLabel);
  const cancel = h('button', { class: 'btn', testid: 'confirm-cancel', onclick: closeModal }, 'Cancel');
  ok.addEventListener('click', async () => {
    closeModal();
    try { await action(); } catch (e) { toast(errText(e)); }
  });
  $('modal').replaceChildren(h('div', { class: 'modal-form' }, h('h3', {}, text), h('div', { class: 'modal-actions' }, cancel, ok)));
  $('modal-backdrop').hidden = false;
  ok.focus();
}

// ---------------------------------------------------------------------------------------------
// Event wiring
// ---------------------------------------------------------------------------------------------

function autosize(ta) {
  ta.style.height = 'auto';
  ta.style.height = `${Math.min(ta.scrollHeight, 200)}px`;
}

function wireComposer(ta, button, replyTo) {
  const submit = () => {
    const text = ta.value;
    if (!text.trim()) return;
    sendMessage(text, replyTo());
    ta.value = '';
    autosize(ta);
  };
  ta.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); return; }
    if (e.key === 'ArrowUp' && !ta.value && !replyTo()) {  // edit our last message, as in Slack
      const mine = cur() && myLatest(cur());
      if (mine) { e.preventDefault(); state.editing = { seq: mine.seq, where: 'main' }; invalidate('messages'); }
    }
  });
  ta.addEventListener('input', () => { autosize(ta); if (ta.value.trim()) noteTyping(); });
  button.addEventListener('click', () => { submit(); ta.focus(); });
}

/** Clicks on message rows (main list and thread) are handled here by data-action. */
function onListClick(e) {
  const t = e.target.closest('[data-action]');
  if (!t) return;
  const where = e.currentTarget.id === 'thread-messages' ? (t.closest('.thread-root') ? 'root' : 'thread') : 'main';
  const seq = Number(t.dataset.seq);
  const ch = cur();
  switch (t.dataset.action) {
    case 'picker':
      state.picker = state.picker && state.picker.seq === seq && state.picker.where === where ? null : { seq, where };
      invalidate('messages', 'thread');
      break;
    case 'react': {
      const f = ch && ch.records.has(seq) ? fold(ch, ch.records.get(seq)) : null;
      const mine = !!(f && f.reactions.get(t.dataset.emoji) && f.reactions.get(t.dataset.emoji).has(state.me));
      toggleReaction(seq, t.dataset.emoji, mine);
      break;
    }
    case 'toggle-reaction': toggleReaction(seq, t.dataset.emoji, t.dataset.mine === '1'); break;
    case 'thread': openThread(seq); break;
    case 'edit': state.editing = { seq, where }; state.picker = null; invalidate('messages', 'thread'); break;
    case 'edit-cancel': state.editing = null; invalidate('messages', 'thread'); break;
    case 'edit-save': saveEdit(t.closest('.msg').querySelector('[data-role="edit"]')); break;
    case 'delete': confirmDialog('Delete this message?', 'Delete', () => request('delete', { channel: state.current, seq, client_id: uuid() })); break;
    default: break;
  }
}

async function saveEdit(input) {
  if (!input) return;
  const seq = Number(input.dataset.seq);
  const ch = cur();
  const m = ch && ch.records.get(seq);
  state.editing = null;
  invalidate('messages', 'thread');
  if (!m || !input.value.trim() || input.value === fold(ch, m).text) return;
  await act('edit', { seq, text: input.value, client_id: uuid() });
}

function onListKey(e) {
  if (e.target.dataset.role !== 'edit') return;
  if (e.key === 'Escape') { state.editing = null; invalidate('messages', 'thread'); }
  else if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); saveEdit(e.target); }
}

function editTopic() {
  const ch = cur();
  if (!ch) return;
  const input = $('topic-input');
  input.value = ch.topic || '';
  input.hidden = false;
  $('channel-topic').hidden = true;
  input.focus();
}

async function finishTopic(save) {
  const input = $('topic-input');
  if (input.hidden) return;
  input.hidden = true;
  const ch = cur();
  if (save && ch && input.value.trim() !== (ch.topic || '')) {
    try { applyInfo(await request('channel_topic', { channel: ch.id, topic: input.value.trim() })); } catch (e) { toast(`Could not set the topic: ${errText(e)}`); }
  }
  invalidate('header');
}

function signIn(name) {
  state.me = name;
  localStorage.setItem(USER_KEY, name);
  $('login').hidden = true;
  $('app').hidden = false;
  invalidate('all');
  openSocket();
}

function signOut(error) {
  state.me = null;
  localStorage.removeItem(USER_KEY);
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  const old = ws;
  ws = null;
  state.connected = false;
  if (old) old.close();
  Object.assign(state, { channels: new Map(), current: null, thread: null, presence: new Map(), pending: new Map(), editing: null, picker: null });
  rowCache.clear();
  $('app').hidden = true;
  $('reconnecting').hidden = true;
  $('login').hidden = false;
  const err = $('login-error');
  err.textContent = error || '';
  err.hidden = !error;
  $('login-name').focus();
}

function init() {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('login-name').value.trim();
    if (name) signIn(name);
  });
  $('sign-out').addEventListener('click', () => signOut());
  $('new-channel').addEventListener('click', newChannelDialog);
  $('new-dm').addEventListener('click', newDirectDialog);
  $('browse-channels').addEventListener('click', directoryDialog);
  $('modal-backdrop').addEventListener('mousedown', (e) => { if (e.target === e.currentTarget) closeModal(); });
  $('thread-close').addEventListener('click', () => { state.thread = null; invalidate('thread'); });
  $('channel-topic').addEventListener('click', editTopic);
  $('topic-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') finishTopic(true);
    else if (e.key === 'Escape') finishTopic(false);
  });
  $('topic-input').addEventListener('blur', () => finishTopic(false));
  $('member-count').addEventListener('click', () => {
    state.membersOpen = !state.membersOpen;
    const ch = cur();
    if (state.membersOpen && ch) refreshMembers(ch);
    invalidate('header');
  });
  document.addEventListener('mousedown', (e) => {
    if (state.membersOpen && !e.target.closest('#members-popover, #member-count')) { state.membersOpen = false; invalidate('header'); }
    if (state.picker && !e.target.closest('.emoji-picker, [data-action="picker"]')) { state.picker = null; invalidate('messages', 'thread'); }
  });
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (!$('modal-backdrop').hidden) closeModal();
    else if (state.picker) { state.picker = null; invalidate('messages', 'thread'); }
  });
  for (const id of ['messages', 'thread-messages']) {
    $(id).addEventListener('click', onListClick);
    $(id).addEventListener('keydown', onListKey);
  }
  $('messages').addEventListener('scroll', () => {
    const ch = cur();
    if (ch && $('messages').scrollTop < 80) loadOlder(ch);
  });
  wireComposer($('composer'), $('send'), () => 0);
  wireComposer($('thread-composer'), $('thread-send'), () => state.thread || 0);

  // Read markers follow focus; presence follows visibility.
  let awayTimer = null;
  document.addEventListener('visibilitychange', () => {
    clearTimeout(awayTimer);
    if (!state.me) return;
    if (document.hidden) awayTimer = setTimeout(() => setMyPresence('away'), AWAY_AFTER_MS);
    else {
      if (state.myStatus !== 'online') setMyPresence('online');
      scheduleRead();
    }
  });
  window.addEventListener('focus', () => { scheduleRead(); invalidate('sidebar'); });
  // The browser knows about network loss before the socket does: reconnect promptly.
  window.addEventListener('offline', () => { if (ws) dropSocket(); });
  window.addEventListener('online', () => {
    if (state.me && !state.connected) { backoff = BACKOFF_MIN_MS; openSocket(); }
  });

  const saved = localStorage.getItem(USER_KEY);
  if (saved) signIn(saved);
  else { $('login').hidden = false; $('login-name').focus(); }
}

init();
