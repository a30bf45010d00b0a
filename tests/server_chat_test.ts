/**
 * In-process tests of the chat hub (`lib/chat.ts`) as the server runs it:
 * presence lines when a member joins or leaves, and `/who` answered to the
 * asker alone (a framed or plain member, or the operator).
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  ChatHub,
  type ChatMember,
  type HubClock,
  PRESENCE_PER_SECOND,
  WHO_MAX,
} from "../lib/chat.ts";
import type { Token } from "../lib/auth.ts";
import { encodeFrame } from "../lib/framer.ts";
import {
  type ChatLine,
  decodeChatLine,
  decodeText,
  Kind,
} from "../lib/protocol.ts";
import { encodePlainChat } from "../lib/server/chat.ts";
import type { MemoryConn } from "./_memory_conn.ts";
import {
  answerTokenChallenge,
  bytes,
  type FramedClient,
  openFramed,
  readAll,
  readLine,
  readText,
  startMemoryServer,
  type TestServerOptions,
  within,
} from "./_server.ts";

// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

/** The operator's screen: every line `onChat` showed, with waiters. */
class OperatorScreen {
  readonly lines: ChatLine[] = [];
  #waiters = new Set<() => void>();

  readonly onChat = (line: ChatLine): void => {
    this.lines.push(line);
    for (const w of [...this.#waiters]) w();
  };

  /** Resolves with the first line (past or future) whose text matches. */
  waitFor(text: string | RegExp, what: string): Promise<ChatLine> {
    const find = () =>
      this.lines.find((l) =>
        typeof text === "string" ? l.text === text : text.test(l.text)
      );
    const found = find();
    if (found) return Promise.resolve(found);
    let waiter: (() => void) | undefined;
    const done = new Promise<ChatLine>((resolve) => {
      waiter = () => {
        const line = find();
        if (line) resolve(line);
      };
      this.#waiters.add(waiter);
    });
    return within(done, what).finally(() => this.#waiters.delete(waiter!));
  }
}

/** A server whose operator lines are kept. */
async function chatServer(options: TestServerOptions = {}) {
  const screen = new OperatorScreen();
  const t = await startMemoryServer({ ...options, onChat: screen.onChat });
  return Object.assign(t, { screen });
}

/** The next chat line a framed client reads. */
async function nextLine(client: FramedClient): Promise<ChatLine> {
  const frame = await within(client.reader.readFrame(), "a chat frame");
  assert.equal(frame?.type, Kind.Chat);
  return decodeChatLine(frame!.payload);
}

/** "127.0.0.1:PORT" of a client end, as the server names it. */
function addrOf(conn: MemoryConn): string {
  return `127.0.0.1:${conn.localAddr.port}`;
}

function server(text: string): ChatLine {
  return { from: "server", addr: "", text };
}

test("ChatHub tells the operator and every other member, not the member itself, when a member joins and leaves", async () => {
  await using t = await chatServer();
  const a = await openFramed(t, "chat");
  const aAddr = addrOf(a.conn);
  await t.screen.waitFor(`c1 (${aAddr}) joined`, "a joined");
  const b = await t.connect();
  await b.write(bytes("hi from b\n"));
  const bAddr = addrOf(b);
  assert.deepEqual(await nextLine(a), server(`c2 (${bAddr}) joined`));
  assert.deepEqual(await nextLine(a), {
    from: "c2",
    addr: bAddr,
    text: "hi from b",
  });
  const c = await openFramed(t, "chat");
  const cAddr = addrOf(c.conn);
  assert.deepEqual(await nextLine(a), server(`c3 (${cAddr}) joined`));
  assert.equal(await readLine(b), `[server] c3 (${cAddr}) joined\n`);
  c.conn.close();
  assert.deepEqual(await nextLine(a), server(`c3 (${cAddr}) left`));
  assert.equal(await readLine(b), `[server] c3 (${cAddr}) left\n`);
  await b.closeWrite();
  assert.deepEqual(await nextLine(a), server(`c2 (${bAddr}) left`));
  // b heard c3 only: its own join and leave went to the others.
  assert.equal(await readText(b), "");
  assert.deepEqual(t.screen.lines.map((l) => `${l.from}: ${l.text}`), [
    `server: c1 (${aAddr}) joined`,
    `server: c2 (${bAddr}) joined`,
    "c2: hi from b",
    `server: c3 (${cAddr}) joined`,
    `server: c3 (${cAddr}) left`,
    `server: c2 (${bAddr}) left`,
  ]);
  // Presence is not chat: the audit log has the one line b said.
  assert.deepEqual(t.audit.named("chat").map((e) => e.text), ["hi from b"]);
  a.conn.close();
});

test("ChatHub never announces a FILE: fetch, which never joins the chat", async () => {
  await using t = await chatServer();
  fs.writeFileSync(path.join(t.root, "notes.txt"), "notes\n");
  const a = await openFramed(t, "chat");
  await t.screen.waitFor(/^c1 /, "a joined");
  const fetch = await t.connect();
  await fetch.write(bytes("FILE:notes.txt\n"));
  assert.equal(await readText(fetch), "notes\n");
  fetch.close();
  await t.audit.waitFor(
    (e) => e.event === "closed" && e.name === "c2",
    "the fetch closed",
  );
  t.server.say("after the fetch");
  assert.deepEqual(await nextLine(a), {
    from: "operator",
    addr: "",
    text: "after the fetch",
  });
  assert.equal(t.screen.lines.length, 1);
  a.conn.close();
});

test("relay answers /who to the asking member alone: not relayed, not audited, no --reply", async () => {
  await using t = await chatServer({ reply: "PONG" });
  const a = await openFramed(t, "chat");
  const aAddr = addrOf(a.conn);
  await t.screen.waitFor(/^c1 /, "a joined");
  const b = await t.connect();
  const bAddr = addrOf(b);
  // A plain client's first line may be /who: it joins, then gets the list.
  await b.write(bytes("/who\r\n"));
  assert.equal(
    await readLine(b),
    `[server] 2 members: c1 (${aAddr}), c2 (${bAddr})\n`,
  );
  await a.send(Kind.Chat, bytes("/who"));
  assert.deepEqual(await nextLine(a), server(`c2 (${bAddr}) joined`));
  assert.deepEqual(
    await nextLine(a),
    server(`2 members: c1 (${aAddr}), c2 (${bAddr})`),
  );
  // The next line each hears is the next thing said: neither /who was
  // relayed, and neither got the --reply.
  await b.write(bytes("after\n"));
  assert.equal(await readLine(b), "[server] PONG\n");
  assert.deepEqual(await nextLine(a), {
    from: "c2",
    addr: bAddr,
    text: "after",
  });
  await a.send(Kind.Chat, bytes("and a"));
  assert.equal(await readLine(b), `[c1 ${aAddr}] and a\n`);
  assert.deepEqual(await nextLine(a), server("PONG"));
  assert.deepEqual(t.audit.named("chat").map((e) => e.text), [
    "after",
    "and a",
  ]);
  assert.ok(!t.screen.lines.some((l) => l.text.includes("members")));
  assert.ok(!t.screen.lines.some((l) => l.text === "/who"));
  a.conn.close();
  b.close();
});

test("relay answers /who only when the line is exactly /who", async () => {
  await using t = await chatServer();
  const a = await openFramed(t, "chat");
  await t.screen.waitFor(/^c1 /, "a joined");
  const b = await openFramed(t, "chat");
  assert.deepEqual(
    await nextLine(a),
    server(`c2 (${addrOf(b.conn)}) joined`),
  );
  for (const text of ["/who ", " /who", "/WHO", "/who is there"]) {
    await b.send(Kind.Chat, bytes(text));
    assert.deepEqual(await nextLine(a), {
      from: "c2",
      addr: addrOf(b.conn),
      text,
    });
  }
  a.conn.close();
  b.conn.close();
});

const ALICE: Token = { name: "alice", secret: "s3cret-token-for-alice" };

/** A framed chat client that proves `token` in the handshake. */
async function tokenChat(
  t: Awaited<ReturnType<typeof startMemoryServer>>,
  token: Token,
): Promise<FramedClient> {
  const { conn, reader } = await answerTokenChallenge(t, "chat", token);
  const welcome = await within(reader.readFrame(), "the welcome");
  assert.equal(welcome?.type, Kind.Welcome);
  return {
    conn,
    reader,
    welcome: JSON.parse(decodeText(welcome!.payload)),
    send: (type, payload) => conn.write(encodeFrame({ type, payload })),
  };
}

test("ChatHub names a token member's identity in presence lines and /who", async () => {
  await using t = await chatServer({ auth: { tokens: [ALICE] } });
  const a = await tokenChat(t, ALICE);
  const aTag = `c1 (${addrOf(a.conn)} token:alice)`;
  assert.deepEqual(
    await t.screen.waitFor(`${aTag} joined`, "alice joined"),
    server(`${aTag} joined`),
  );
  await a.send(Kind.Chat, bytes("/who"));
  assert.deepEqual(await nextLine(a), server(`1 member: ${aTag}`));
  a.conn.close();
  await t.screen.waitFor(`${aTag} left`, "alice left");
});

test("Server.say answers /who to the operator alone", async () => {
  await using t = await chatServer();
  t.server.say("/who");
  assert.deepEqual(t.screen.lines, [server("no members")]);
  const a = await openFramed(t, "chat");
  await t.screen.waitFor(/^c1 /, "a joined");
  t.server.say("/who");
  assert.deepEqual(
    t.screen.lines.at(-1),
    server(`1 member: c1 (${addrOf(a.conn)})`),
  );
  // a's next line is the operator's next line: it never heard the /who.
  t.server.say("hello");
  assert.deepEqual(await nextLine(a), {
    from: "operator",
    addr: "",
    text: "hello",
  });
  a.conn.close();
});

test("Server.close tells no member about the others leaving", async () => {
  const t = await chatServer();
  const a = await openFramed(t, "chat");
  await t.screen.waitFor(/^c1 /, "a joined");
  const b = await openFramed(t, "chat");
  assert.deepEqual(
    await nextLine(a),
    server(`c2 (${addrOf(b.conn)}) joined`),
  );
  await t.server.close();
  assert.equal((await readAll(a.conn)).length, 0);
  assert.equal((await readAll(b.conn)).length, 0);
  assert.ok(!t.screen.lines.some((l) => l.text.endsWith(" left")));
  await t[Symbol.asyncDispose]();
});

/** A hub member that records what it gets, as a plain client would read it. */
function fakeMember(name: string, addr: string, accepts = Infinity) {
  const heard: string[] = [];
  const member: ChatMember & { heard: string[]; dropped?: string } = {
    name,
    addr,
    heard,
    deliver(line) {
      if (heard.length >= accepts) return false;
      heard.push(decodeText(encodePlainChat(line)));
      return true;
    },
    drop(reason) {
      member.dropped = reason;
    },
  };
  return member;
}

test("ChatHub tells the others when it drops a slow consumer", () => {
  const op: ChatLine[] = [];
  const hub = new ChatHub((line) => op.push(line));
  const a = fakeMember("c1", "127.0.0.1:1");
  const slow = fakeMember("c2", "127.0.0.1:2", 0);
  const c = fakeMember("c3", "127.0.0.1:3");
  hub.join(a);
  hub.join(slow);
  // c3's join cannot be queued for c2: c2 is dropped, and the rest told.
  hub.join(c);
  assert.equal(slow.dropped, "slow consumer");
  assert.equal(hub.size, 2);
  assert.deepEqual(a.heard, [
    "[server] c2 (127.0.0.1:2) joined\n",
    "[server] c3 (127.0.0.1:3) joined\n",
    "[server] c2 (127.0.0.1:2) left (slow consumer)\n",
  ]);
  assert.deepEqual(c.heard, [
    "[server] c2 (127.0.0.1:2) left (slow consumer)\n",
  ]);
  assert.equal(op.at(-1)!.text, "c2 (127.0.0.1:2) left (slow consumer)");
  // Its session ends later and leaves again: nobody hears it twice.
  hub.leave(slow);
  assert.equal(a.heard.length, 3);
});

/** A hub clock the test moves by hand; `fire` runs what is due. */
function manualClock() {
  let now = 0;
  let due: { at: number; fn: () => void } | undefined;
  const clock: HubClock = {
    now: () => now,
    schedule(fn, ms) {
      assert.equal(due, undefined, "one summary pending at a time");
      const entry = { at: now + ms, fn };
      due = entry;
      return () => {
        if (due === entry) due = undefined;
      };
    },
  };
  return {
    clock,
    get pending() {
      return due !== undefined;
    },
    /** Moves the clock to `t` and runs the summary if it is due by then. */
    advance(t: number) {
      now = t;
      if (due !== undefined && due.at <= now) {
        const { fn } = due;
        due = undefined;
        fn();
      }
    },
  };
}

test("ChatHub names presence up to PRESENCE_PER_SECOND a second, then counts it", () => {
  const op: string[] = [];
  const t = manualClock();
  const hub = new ChatHub((line) => op.push(line.text), t.clock);
  const watcher = fakeMember("c0", "127.0.0.1:1");
  hub.join(watcher);
  // A burst of 200 joins and 50 leaves within the first second.
  const many: ChatMember[] = [];
  for (let i = 1; i <= 200; i++) {
    const m = fakeMember(`c${i}`, `127.0.0.1:${1000 + i}`);
    many.push(m);
    hub.join(m);
  }
  for (const m of many.slice(0, 50)) hub.leave(m);
  assert.equal(hub.size, 151);
  // c0's own join, then PRESENCE_PER_SECOND - 1 more named: the rest wait.
  assert.equal(op.length, PRESENCE_PER_SECOND);
  assert.equal(watcher.heard.length, PRESENCE_PER_SECOND - 1);
  assert.ok(t.pending);
  // The summary comes when the window ends, to the operator and everyone.
  t.advance(999);
  assert.equal(op.length, PRESENCE_PER_SECOND);
  t.advance(1000);
  const joinedLater = 200 - (PRESENCE_PER_SECOND - 1);
  const summary =
    `${joinedLater} more joined, 50 more left (/who lists the members)`;
  assert.equal(op.at(-1), summary);
  assert.equal(
    watcher.heard.at(-1),
    `[server] ${summary}
`,
  );
  const last = many.at(-1) as ChatMember & { heard: string[] };
  assert.deepEqual(last.heard, [`[server] ${summary}
`]);
  // Churn goes on: the next second is counted too, one line for it.
  hub.leave(many[60]!);
  hub.join(fakeMember("c999", "127.0.0.1:2"));
  assert.equal(op.at(-1), summary);
  t.advance(2000);
  assert.equal(
    op.at(-1),
    "1 more joined, 1 more left (/who lists the members)",
  );
  // A quiet second later, members are named again.
  t.advance(3500);
  hub.leave(many[61]!);
  assert.equal(op.at(-1), "c62 (127.0.0.1:1062) left");
  assert.ok(!t.pending);
  // Closing cancels a pending summary.
  for (const m of many.slice(62, 80)) hub.leave(m);
  assert.ok(t.pending);
  hub.close();
  assert.ok(!t.pending);
});

test("ChatHub.who names at most WHO_MAX members and counts the rest", () => {
  const hub = new ChatHub(() => {}, manualClock().clock);
  const total = WHO_MAX + 6;
  for (let i = 1; i <= total; i++) {
    hub.join(fakeMember(`c${i}`, `127.0.0.1:${i}`));
  }
  const who = hub.who();
  assert.match(
    who,
    new RegExp(`^${total} members: c1 \\(127\\.0\\.0\\.1:1\\), `),
  );
  assert.ok(who.endsWith(`c${WHO_MAX} (127.0.0.1:${WHO_MAX}), and 6 more`));
  assert.ok(!who.includes(`c${WHO_MAX + 1} `));
});

test("ChatHub presence lines and /who reach a plain client escaped", () => {
  const hub = new ChatHub(() => {});
  const a = fakeMember("c1", "127.0.0.1:1");
  hub.join(a);
  const evil = fakeMember("c2", "127.0.0.1:2 token:\x1b[2J\r\u202eevil");
  hub.join(evil);
  hub.command("/who", a);
  hub.leave(evil);
  const escaped = "127.0.0.1:2 token:\\e[2J\\r\\u{202e}evil";
  assert.deepEqual(a.heard, [
    `[server] c2 (${escaped}) joined\n`,
    `[server] 2 members: c1 (127.0.0.1:1), c2 (${escaped})\n`,
    `[server] c2 (${escaped}) left\n`,
  ]);
  for (const line of a.heard) {
    assert.ok(!CONTROL.test(line.slice(0, -1)), JSON.stringify(line));
  }
});
