// End-to-end test of the web chat client in headless Chromium: two users, two browser contexts.
//
//   STARLING_URL=http://127.0.0.1:8080 node tests/browser/chat.test.mjs
//
// Needs a running `starling serve` (HTTP listener serving / and /ws) and Chromium at
// /usr/bin/chromium (Debian: apt-get install chromium); override with CHROMIUM_PATH.
// STARLING_SCREENSHOTS=<dir> saves each user's final page there. Exits 0 when every step
// passed, 1 with the failing step otherwise; never runs longer than TEST_TIMEOUT_MS (120 s).
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = (process.env.STARLING_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const SHOTS = process.env.STARLING_SCREENSHOTS || '';
const OVERALL_MS = Number(process.env.TEST_TIMEOUT_MS || 120000);
const WAIT_MS = 10000;
const suffix = Date.now().toString(36).slice(-5);
const CHANNEL = `launch-${suffix}`;
const ALICE = process.env.ALICE || 'alice';
const BOB = process.env.BOB || 'bob';

let passed = 0;
let browser = null;
let alice = null, bob = null;
const profileDir = mkdtempSync(path.join(tmpdir(), 'starling-browser-'));
const pageErrors = [];

const overall = setTimeout(() => {
  console.error(`FAIL: the test did not finish within ${OVERALL_MS / 1000} s`);
  console.log(`${passed} passed, 1 failed`);
  cleanup();
  process.exit(1);
}, OVERALL_MS);

function cleanup() {
  try { rmSync(profileDir, { recursive: true, force: true }); } catch { /* best effort */ }
}

async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
  } catch (e) {
    e.message = `step "${name}": ${e.message}`;
    throw e;
  }
  passed++;
  console.log(`ok ${passed} - ${name} (${Date.now() - t0} ms)`);
}

/** Polls `fn` until it returns a truthy value; fails with `what` after `ms`. */
async function until(what, fn, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) { last = e.message; }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const byId = (page, id) => page.getByTestId(id, { exact: true });
const text = async (page, id) => ((await byId(page, id).count()) ? (await byId(page, id).first().textContent()) : null);
const visible = async (page, id) => (await byId(page, id).count()) > 0 && byId(page, id).first().isVisible();

/** The seq of the (single) message in the main list whose text contains `needle`. */
async function seqOf(page, needle) {
  return until(`a message containing "${needle}"`, async () => {
    const loc = page.locator('[data-testid="message-list"] [data-testid^="message-text-"]').filter({ hasText: needle });
    if ((await loc.count()) !== 1) return null;
    return Number((await loc.getAttribute('data-testid')).replace('message-text-', ''));
  });
}

/** How many message texts in the main list contain `needle`. */
const countText = (page, needle) =>
  page.locator('[data-testid="message-list"] [data-testid^="message-text-"]').filter({ hasText: needle }).count();

async function send(page, message, composer = 'composer') {
  await byId(page, composer).fill(message);
  await byId(page, composer).press('Enter');
}

/** Runs requests over a separate, raw protocol session opened from `page` (sequentially);
 * returns the replies, after checking that none is an error. */
async function rawSession(page, user, requests) {
  const replies = await page.evaluate(async ({ user, requests }) => {
    const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('WebSocket error')); });
    const waiting = new Map();
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.id && waiting.has(m.id)) { waiting.get(m.id)(m); waiting.delete(m.id); }
    };
    let id = 1;
    const call = (req) => new Promise((resolve) => { const i = id++; waiting.set(i, resolve); ws.send(JSON.stringify({ id: i, ...req })); });
    const out = [await call({ type: 'connect', token: user })];
    for (const r of requests) out.push(await call(r));
    ws.close();
    return out;
  }, { user, requests });
  const bad = replies.map((r, i) => [i === 0 ? { type: 'connect' } : requests[i - 1], r]).filter(([, r]) => r.error || !r.result);
  assert.equal(bad.length, 0, `raw session: ${JSON.stringify(bad[0])}`);
  return replies;
}

function parseFrame(payload) {
  try { return JSON.parse(payload); } catch { return null; }
}

async function signIn(page, user) {
  await page.goto(BASE);
  await byId(page, 'login-name').fill(user);
  await byId(page, 'login-submit').click();
  await until(`${user} signed in`, async () => (await text(page, 'me-name')) === user);
  await until(`${user} connected`, async () => !(await visible(page, 'reconnecting')), 15000);
}

async function main() {
  process.env.TMPDIR = profileDir;  // Playwright puts the fresh Chromium profile under TMPDIR
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const ctxA = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const ctxB = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  alice = await ctxA.newPage();
  bob = await ctxB.newPage();
  for (const [who, page] of [[ALICE, alice], [BOB, bob]]) {
    page.on('pageerror', (e) => pageErrors.push(`${who}: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') console.log(`  [${who} console] ${m.text()}`); });
  }
  // Bob's WebSocket traffic, in order: what his client asks and what the server pushes.
  const bobFrames = [];
  bob.on('websocket', (ws) => {
    ws.on('framesent', (f) => bobFrames.push({ sent: true, json: parseFrame(f.payload) }));
    ws.on('framereceived', (f) => bobFrames.push({ sent: false, json: parseFrame(f.payload) }));
  });

  await step('both users sign in; the name is remembered across a reload', async () => {
    await signIn(alice, ALICE);
    await signIn(bob, BOB);
    await alice.reload();
    await until('alice signed in again after reload', async () => (await text(alice, 'me-name')) === ALICE);
    assert.equal(await visible(alice, 'login-name'), false, 'the login form is shown after reload');
  });

  await step('alice creates a public channel', async () => {
    await byId(alice, 'new-channel').click();
    await byId(alice, 'new-channel-name').fill(CHANNEL);
    await byId(alice, 'new-channel-topic').fill('Launch planning');
    await byId(alice, 'new-channel-submit').click();
    await until('the channel in alice\'s sidebar', () => visible(alice, `channel-item-${CHANNEL}`));
    await until('the channel title', async () => (await text(alice, 'channel-title'))?.includes(CHANNEL));
    await until('the topic in the header', async () => (await text(alice, 'channel-topic')) === 'Launch planning');
  });

  await step('bob finds the channel in the directory and joins it', async () => {
    await byId(bob, 'browse-channels').click();
    await byId(bob, `directory-join-${CHANNEL}`).click();
    await until('the channel in bob\'s sidebar', () => visible(bob, `channel-item-${CHANNEL}`));
    await until('bob has the channel open', async () => (await text(bob, 'channel-title'))?.includes(CHANNEL));
  });

  const dm = `dm/${[ALICE, BOB].sort().join('+')}`;
  await step('bob starts a direct message with alice and sees her online', async () => {
    await byId(bob, 'new-dm').click();
    await byId(bob, 'new-dm-users').fill(ALICE);
    await byId(bob, 'new-dm-submit').click();
    await until('the direct channel in bob\'s sidebar', () => visible(bob, `channel-item-${dm}`));
    await until('alice\'s presence dot = online', async () =>
      (await byId(bob, `dm-presence-${ALICE}`).getAttribute('data-status')) === 'online');
  });

  await step('channels alice adds bob to appear in his sidebar at once, driven by his channel-list stream', async () => {
    const created = `secret-${suffix}`, invited = `invited-${suffix}`;
    const from = bobFrames.length;
    await rawSession(alice, ALICE, [
      { type: 'channel_create', channel: created, visibility: 'private', members: [BOB] },
      { type: 'channel_create', channel: invited, visibility: 'private' },
      { type: 'channel_invite', channel: invited, user: BOB },
    ]);
    await until('the created channel in bob\'s sidebar', () => visible(bob, `channel-item-${created}`));
    await until('the channel he was invited to in bob\'s sidebar', () => visible(bob, `channel-item-${invited}`));
    // No polling: bob's client asked for its channel list only after the server pushed a
    // `joined` event on $chat/user/bob.
    const frames = bobFrames.slice(from);
    const joined = frames.findIndex((f) => !f.sent && f.json?.channel === `$chat/user/${BOB}` && f.json?.message?.kind === 'channel_event');
    const asked = frames.findIndex((f) => f.sent && f.json?.type === 'channels');
    assert.ok(joined >= 0, 'a joined event was pushed to bob');
    assert.ok(asked > joined, `bob asked for his channels (frame ${asked}) after the push (frame ${joined})`);
    // Removal shows too.
    await rawSession(alice, ALICE, [{ type: 'channel_remove', channel: invited, user: BOB }]);
    await until('the channel bob was removed from leaves his sidebar', async () => (await byId(bob, `channel-item-${invited}`).count()) === 0);
  });

  let first;
  await step('bob sees an unread badge for alice\'s message, and it clears when he opens the channel', async () => {
    await send(alice, 'Hello bob, welcome to the launch channel');
    first = await seqOf(alice, 'Hello bob');
    await until('unread badge "1" for bob', async () => (await text(bob, `unread-${CHANNEL}`)) === '1');
    await byId(bob, `channel-item-${CHANNEL}`).click();
    await until('bob sees the message', async () => (await countText(bob, 'Hello bob')) === 1);
    await until('the unread badge is gone', async () => (await byId(bob, `unread-${CHANNEL}`).count()) === 0);
  });

  await step('bob sees a new message live', async () => {
    await send(alice, 'Second message, to be deleted');
    await until('bob sees the live message', async () => (await countText(bob, 'Second message')) === 1);
  });

  await step('bob sees "alice is typing…" while she types', async () => {
    await byId(alice, 'composer').click();
    await alice.keyboard.type('I am typing some', { delay: 30 });
    await until('the typing indicator', async () => (await text(bob, 'typing'))?.includes(`${ALICE} is typing`));
    await byId(alice, 'composer').fill('');
  });

  await step('bob reacts and alice sees the reaction', async () => {
    await byId(bob, `message-${first}`).hover();
    await byId(bob, `action-react-${first}`).click();
    await byId(bob, 'emoji-👍').click();
    await until('alice sees 👍 1', async () => (await text(alice, `reaction-${first}-👍`))?.replace(/\s+/g, '') === '👍1');
    await until('bob\'s own reaction is marked', async () =>
      (await byId(bob, `reaction-${first}-👍`).getAttribute('class'))?.includes('mine'));
  });

  await step('alice edits her message and bob sees the edit', async () => {
    await byId(alice, `message-${first}`).hover();
    await byId(alice, `action-edit-${first}`).click();
    await byId(alice, `edit-input-${first}`).fill('Hello bob, welcome (updated)');
    await byId(alice, `edit-input-${first}`).press('Enter');
    await until('bob sees the edited text', async () => (await text(bob, `message-text-${first}`))?.includes('welcome (updated)'));
    await until('bob sees "(edited)"', () => visible(bob, `edited-${first}`));
    assert.equal(await countText(bob, 'Hello bob'), 1, 'the edit must not add a second message');
  });

  await step('alice deletes a message and bob sees it deleted', async () => {
    const second = await seqOf(alice, 'Second message');
    await byId(alice, `message-${second}`).hover();
    await byId(alice, `action-delete-${second}`).click();
    await byId(alice, 'confirm-ok').click();
    await until('bob sees "This message was deleted"', async () =>
      (await text(bob, `message-text-${second}`)) === 'This message was deleted');
  });

  await step('bob replies in a thread and alice sees the reply', async () => {
    await byId(bob, `message-${first}`).hover();
    await byId(bob, `action-reply-${first}`).click();
    await until('bob\'s thread pane', () => visible(bob, 'thread-pane'));
    await send(bob, 'A reply in the thread', 'thread-composer');
    await until('alice sees "1 reply"', async () => (await text(alice, `reply-count-${first}`))?.includes('1 reply'));
    await byId(alice, `reply-count-${first}`).click();
    await until('alice\'s thread pane shows the reply', async () =>
      (await alice.locator('[data-testid="thread-pane"] [data-testid^="thread-message-text-"]').filter({ hasText: 'A reply in the thread' }).count()) === 1);
    await send(bob, 'And a second, live one', 'thread-composer');
    await until('alice sees the second reply live', async () =>
      (await alice.locator('[data-testid="thread-pane"]').getByText('And a second, live one').count()) === 1);
    await until('"2 replies" on the root', async () => (await text(alice, `reply-count-${first}`))?.includes('2 replies'));
    assert.equal(await countText(alice, 'A reply in the thread'), 0, 'replies must not show in the main list');
  });

  await step('alice sees "Read by 1" after bob reads her newest message', async () => {
    await send(alice, 'Did you read this?');
    await until('bob sees it', async () => (await countText(bob, 'Did you read this?')) === 1);
    await until('"Read by 1" for alice', async () => (await text(alice, 'read-by'))?.includes('Read by 1'));
  });

  await step('the members list shows alice online for bob', async () => {
    await byId(bob, 'member-count').click();
    await until('alice in the members popover', () => visible(bob, `member-${ALICE}`));
    assert.equal(await byId(bob, `presence-${ALICE}`).getAttribute('data-status'), 'online');
    await byId(bob, 'member-count').click();
  });

  await step('network drop: bob misses nothing and duplicates nothing after reconnecting', async () => {
    const before = await countText(bob, '');
    // Alice keeps her members list open: only presence pushes can change bob's dot in it.
    await byId(alice, 'member-count').click();
    const bobDot = () => byId(alice, `presence-${BOB}`).getAttribute('data-status');
    await until('bob online in alice\'s members list', async () => (await bobDot()) === 'online');
    await ctxB.setOffline(true);
    await until('bob\'s "Reconnecting…" banner', () => visible(bob, 'reconnecting'));
    await until('bob offline for alice (presence push)', async () => (await bobDot()) === 'offline');
    for (let i = 1; i <= 3; i++) await send(alice, `While bob was away ${i}`);
    await until('alice has the 3 messages', async () => (await countText(alice, 'While bob was away')) === 3);
    await send(bob, 'Written while offline');  // pending; must be delivered once, after the reconnect
    await new Promise((r) => setTimeout(r, 1000));
    await ctxB.setOffline(false);
    await until('the banner is gone', async () => !(await visible(bob, 'reconnecting')), 20000);
    await until('bob online again for alice (presence push)', async () => (await bobDot()) === 'online');
    await byId(alice, 'member-count').click();
    for (let i = 1; i <= 3; i++) {
      await until(`bob has "While bob was away ${i}" exactly once`, async () => (await countText(bob, `While bob was away ${i}`)) === 1);
    }
    await until('alice gets bob\'s offline message', async () => (await countText(alice, 'Written while offline')) === 1);
    await until('bob\'s offline message is confirmed', async () =>
      (await bob.locator('[data-testid^="pending-"]').count()) === 0 && (await countText(bob, 'Written while offline')) === 1);
    await new Promise((r) => setTimeout(r, 500));  // let any stray duplicate arrive before counting
    assert.equal(await countText(bob, ''), before + 4, 'bob has every message exactly once');
    assert.equal(await countText(bob, ''), await countText(alice, ''), 'bob and alice show the same messages');
    assert.equal(await countText(alice, 'Written while offline'), 1, 'the retried send was not duplicated');
  });

  await step('scroll-back: bob loads older pages of a 70-message channel, each message once', async () => {
    const ch = `history-${suffix}`;
    const pad = (i) => String(i).padStart(3, '0');
    const reqs = [{ type: 'channel_create', channel: ch, members: [BOB] }];
    for (let i = 1; i <= 70; i++) reqs.push({ type: 'publish', channel: ch, text: `Bulk #${pad(i)}`, client_id: `bulk-${suffix}-${i}` });
    await rawSession(alice, ALICE, reqs);
    await bob.reload();  // also: signed in again automatically, channel list from `channels {}`
    await until('bob signed in after reload', async () => (await text(bob, 'me-name')) === BOB);
    await until('the channel in bob\'s sidebar', () => visible(bob, `channel-item-${ch}`));
    assert.equal(await text(bob, `unread-${ch}`), '70', 'unread badge for 70 messages');
    await byId(bob, `channel-item-${ch}`).click();
    await until('the newest message', async () => (await countText(bob, 'Bulk #070')) === 1);
    assert.equal(await countText(bob, 'Bulk #001'), 0, 'the first page must not hold the oldest message');
    await until('the oldest message after scrolling up', async () => {
      await bob.evaluate(() => { document.querySelector('[data-testid="message-list"]').scrollTop = 0; });
      return (await countText(bob, 'Bulk #001')) === 1;
    });
    await until('all 70 exactly once', async () => (await countText(bob, 'Bulk #')) === 70);
    await until('the start of the channel', () => visible(bob, 'channel-start'));
    await byId(bob, `channel-item-${CHANNEL}`).click();
    await until('"Read by 1" under bob\'s message written offline', async () => (await text(bob, 'read-by'))?.includes('Read by 1'));
  });

  await step('no uncaught page errors', async () => {
    assert.deepEqual(pageErrors, []);
  });

}

let failed = 0;
try {
  await main();
} catch (e) {
  failed = 1;
  console.error(`FAIL: ${e.message}`);
  if (pageErrors.length) console.error(`page errors:\n  ${pageErrors.join('\n  ')}`);
} finally {
  if (SHOTS && alice && bob) {  // the final pages, also when a step failed
    mkdirSync(SHOTS, { recursive: true });
    await alice.screenshot({ path: path.join(SHOTS, 'alice.png') }).catch(() => {});
    await bob.screenshot({ path: path.join(SHOTS, 'bob.png') }).catch(() => {});
    console.log(`screenshots in ${SHOTS}`);
  }
  if (browser) await browser.close().catch(() => {});
  cleanup();
  clearTimeout(overall);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed);
