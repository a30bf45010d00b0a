/**
 * Tests for `Server.prototype.reload` (lib/server/reload.ts) and the audit
 * fields every event about a connection carries: in-process, over memory
 * connections.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { compileAllowlist } from "../lib/allowlist.ts";
import { answerChallenge, type Token } from "../lib/auth.ts";
import { encodeFrame, FrameReader } from "../lib/framer.ts";
import {
  encodeJson,
  encodePreamble,
  Kind,
  type Mode,
  PREAMBLE_SIZE,
} from "../lib/protocol.ts";
import { diffReload } from "../lib/server/reload.ts";
import {
  bytes,
  readText,
  startMemoryServer,
  type TestServer,
  within,
} from "./_server.ts";
import { concat } from "./_fake_server.ts";

const ALICE: Token = { name: "alice", secret: "alice-secret-0123456789" };
const BOB: Token = { name: "bob", secret: "bob-secret-0123456789ab" };

/** Proves `token` in a framed handshake of `mode`; returns the reader after the Welcome. */
async function tokenSession(t: TestServer, token: Token, mode: Mode) {
  const conn = await t.connect();
  await conn.write(concat(
    encodePreamble(),
    encodeFrame({
      type: Kind.Hello,
      payload: encodeJson({ client: "moat/test", mode, maxFrameSize: 65536 }),
    }),
  ));
  const reader = new FrameReader(conn, { bufferSize: 64 * 1024 });
  await within(reader.readExact(PREAMBLE_SIZE), "the preamble");
  const challenge = await within(reader.readFrame(), "the challenge");
  assert.equal(challenge?.type, Kind.Challenge);
  await conn.write(encodeFrame({
    type: Kind.Auth,
    payload: answerChallenge(challenge!.payload, { token, mode, binding: "" }),
  }));
  const welcome = await within(reader.readFrame(), "the welcome");
  assert.equal(welcome?.type, Kind.Welcome);
  return { conn, reader };
}

/** A plain chat client that has said one line (so it is a chat member). */
async function plainMember(t: TestServer, from: string) {
  const conn = await t.connect(from);
  await conn.write(bytes("hello\n"));
  const chat = await t.audit.waitFor(
    (e) => e.event === "chat" && e.ip === from,
    `a chat line from ${from}`,
  );
  return { conn, name: String(chat.name) };
}

test("Server.prototype.reload refuses new peers the new allowlist drops and closes their open connections", async () => {
  await using t = await startMemoryServer({
    allowlist: compileAllowlist({ allow: ["127.0.0.1", "127.0.0.2"] }),
  });
  const kept = await plainMember(t, "127.0.0.1");
  const dropped = await plainMember(t, "127.0.0.2");
  const result = t.server.reload({
    allowlist: compileAllowlist({ allow: ["127.0.0.1"] }),
  });
  assert.deepEqual(result, { changed: ["allowlist"], closed: 1 });
  const closed = await t.audit.waitFor(
    (e) => e.event === "closed" && e.name === dropped.name,
    "the dropped peer's closed line",
  );
  assert.equal(closed.reason, "access revoked by reload");
  assert.equal(
    t.audit.named("closed").some((e) => e.name === kept.name),
    false,
  );
  const late = await t.connect("127.0.0.2");
  assert.equal(
    await readText(late),
    "ERR ACCESS_DENIED access refused by server\n",
  );
  const refused = await t.audit.waitFor(
    (e) => e.event === "refused" && e.ip === "127.0.0.2",
    "the refusal",
  );
  assert.equal(refused.code, "ERR_ACCESS_DENIED");
  kept.conn.close();
});

test("Server.prototype.reload with the same settings changes nothing", async () => {
  await using t = await startMemoryServer({
    allowlist: compileAllowlist({ allow: ["127.0.0.1"] }),
    auth: { tokens: [ALICE] },
  });
  const result = t.server.reload({
    allowlist: compileAllowlist({ allow: ["127.0.0.1/32"] }),
    auth: { tokens: [{ ...ALICE }] },
  });
  assert.deepEqual(result, { changed: [], closed: 0 });
});

test("Server.prototype.reload refuses to turn tokens on and leaves the server as it was", async () => {
  await using t = await startMemoryServer();
  assert.throws(
    () =>
      t.server.reload({
        allowlist: compileAllowlist({ allow: ["10.0.0.5"] }),
        auth: { tokens: [ALICE] },
      }),
    (err: unknown) =>
      err instanceof TypeError &&
      err.message ===
        "Cannot reload: it would turn tokens on; restart moat for that",
  );
  // Still plain-text mode, still loopback only.
  const conn = await t.connect();
  await conn.write(bytes("hello\n"));
  await t.audit.waitFor((e) => e.event === "chat", "the chat line");
  conn.close();
  const outside = await t.connect("10.0.0.5");
  assert.match(await readText(outside), /^ERR ACCESS_DENIED /);
});

test("Server.prototype.reload closes the sessions of a removed or changed token and keeps the others", async () => {
  const carol: Token = { name: "carol", secret: "carol-secret-0123456789" };
  await using t = await startMemoryServer({
    auth: { tokens: [ALICE, BOB, carol] },
  });
  await tokenSession(t, ALICE, "chat");
  const bob = await tokenSession(t, BOB, "chat");
  await tokenSession(t, carol, "chat");
  await t.audit.waitCount(
    (e) => e.event === "authenticated",
    3,
    "three authentications",
  );
  const result = t.server.reload({
    allowlist: compileAllowlist({}),
    auth: {
      tokens: [BOB, { name: "carol", secret: "a-new-secret-0123456789" }],
    },
  });
  assert.deepEqual(result, { changed: ["tokens"], closed: 2 });
  const closed = await t.audit.waitCount(
    (e) => e.event === "closed",
    2,
    "two closed lines",
  );
  assert.deepEqual(
    closed.map((e) => [e.identity, e.reason]).sort(),
    [
      ["token:alice", "token revoked by reload"],
      ["token:carol", "token revoked by reload"],
    ],
  );
  // Bob's session is still served: its chat line is relayed and audited.
  await bob.conn.write(
    encodeFrame({ type: Kind.Chat, payload: bytes("still here") }),
  );
  const chat = await t.audit.waitFor((e) => e.event === "chat", "bob's line");
  assert.equal(chat.identity, "token:bob");
  assert.equal(chat.peer, `127.0.0.1:${chat.port}`);
  assert.equal(chat.ip, "127.0.0.1");
  bob.conn.close();
});

test("Server audits every event of a token session with its identity, ip and port", async () => {
  await using t = await startMemoryServer({ auth: { tokens: [ALICE] } });
  fs.writeFileSync(path.join(t.root, "a.txt"), "some bytes");
  const { conn, reader } = await tokenSession(t, ALICE, "get");
  await conn.write(encodeFrame({
    type: Kind.Get,
    payload: encodeJson({ path: "a.txt", offset: 0, digest: "crc32" }),
  }));
  for (let i = 0; i < 100; i++) {
    const frame = await within(reader.readFrame(), "the file");
    if (frame === null || frame.type === Kind.FileEnd) break;
  }
  conn.close();
  await t.audit.waitFor((e) => e.event === "closed", "closed");
  const events = t.audit.events.filter((e) => e.name !== undefined);
  assert.deepEqual(events.map((e) => e.event), [
    "accepted",
    "authenticated",
    "get_started",
    "get_finished",
    "closed",
  ]);
  for (const e of events.slice(1)) {
    assert.equal(e.identity, "token:alice", `${e.event} names the identity`);
  }
  for (const e of events) {
    assert.equal(e.ip, "127.0.0.1", `${e.event} has ip`);
    assert.equal(typeof e.port, "number", `${e.event} has a numeric port`);
    assert.equal(e.peer, `127.0.0.1:${e.port}`, `${e.event} keeps peer`);
  }
  // identity comes right after name, ip and port right after peer.
  const keys = Object.keys(events[2]!);
  assert.deepEqual(keys.slice(0, 7), [
    "ts",
    "event",
    "peer",
    "ip",
    "port",
    "name",
    "identity",
  ]);
});

test("Server names connections with namePrefix", async () => {
  await using t = await startMemoryServer({ namePrefix: "k3f9-" });
  const listening = t.audit.named("listening")[0]!;
  assert.equal(listening.namePrefix, "k3f9-");
  const conn = await t.connect();
  await conn.write(bytes("hello\n"));
  const chat = await t.audit.waitFor((e) => e.event === "chat", "chat");
  assert.equal(chat.name, "k3f9-c1");
  conn.close();
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.name, "k3f9-c1");
});

test("Server shows an IPv4-mapped peer as IPv4 in ip and keeps peer as it was", async () => {
  await using t = await startMemoryServer();
  const conn = await t.connect("::ffff:127.0.0.1");
  await conn.write(bytes("hi\n"));
  const chat = await t.audit.waitFor((e) => e.event === "chat", "chat");
  assert.equal(chat.ip, "127.0.0.1");
  assert.match(String(chat.peer), /^\[::ffff:127\.0\.0\.1\]:\d+$/);
  assert.equal(chat.peer, `[::ffff:127.0.0.1]:${chat.port}`);
  conn.close();
});

test("Server.prototype.close runs beforeShutdown after the last connection and before the shutdown line", async () => {
  const t = await startMemoryServer();
  const conn = await t.connect();
  await conn.write(bytes("hi\n"));
  await t.audit.waitFor((e) => e.event === "chat", "chat");
  await t.server.close({
    beforeShutdown: () => {
      t.audit.log.write("vault_sealed", { note: "from beforeShutdown" });
      return Promise.resolve();
    },
  });
  const order = t.audit.events.map((e) => e.event);
  assert.deepEqual(order.slice(-3), ["closed", "vault_sealed", "shutdown"]);
  fs.rmSync(t.root, { recursive: true, force: true });
});

test("diffReload names each kind of change in a fixed order", () => {
  const base = {
    allowlist: compileAllowlist({ allow: ["10.0.0.5"] }),
    tls: { cert: "C1", key: "K1", clientCa: "CA1" },
    auth: {
      certs: { allowed: new Set(["sha256:aa"]), clientCa: "CA1" },
      tokens: [ALICE],
    },
  };
  const all = {
    allowlist: compileAllowlist({ allow: ["10.0.0.5"], deny: ["10.0.0.5"] }),
    tls: { cert: "C1", key: "K2", clientCa: "CA2" },
    auth: {
      certs: { allowed: new Set(["sha256:bb"]), clientCa: "CA2" },
      tokens: [{ ...ALICE, secret: "other-secret-0123456789" }],
    },
  };
  assert.deepEqual(diffReload(base, all), [
    "allowlist",
    "certificate",
    "client-ca",
    "allow-cert",
    "tokens",
  ]);
  assert.deepEqual(diffReload(base, { ...base }), []);
});
