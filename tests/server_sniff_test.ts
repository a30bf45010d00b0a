/**
 * In-process tests of `lib/server/sniff.ts`: the first byte of a connection
 * picks framed, plain or a TLS refusal.
 *
 * @module
 */

import { AuthThrottle } from "../lib/auth.ts";
import { SendBudget } from "../lib/server/send_budget.ts";
import {
  AppendBudget,
  DEFAULT_APPEND_BUDGET,
} from "../lib/server/append_pipeline.ts";
import { SourceWatch } from "../lib/server/liveness.ts";
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  decodeError,
  decodeText,
  decodeWelcome,
  Kind,
} from "../lib/protocol.ts";
import { FrameReader } from "../lib/framer.ts";
import { AuditLog } from "../lib/audit.ts";
import { ChatHub } from "../lib/chat.ts";
import { compileAllowlist } from "../lib/allowlist.ts";
import { DigestCache } from "../lib/file_sender.ts";
import {
  resolveServerOptions,
  type ServerOptions,
} from "../lib/server/options.ts";
import { Pauses, Session } from "../lib/server/session.ts";
import { plainRefusal } from "../lib/server/sniff.ts";
import type { Token } from "../lib/auth.ts";
import { memoryConnPair, memoryNet } from "./_memory_conn.ts";
import {
  bytes,
  helloBytes,
  openFramed,
  readLine,
  readText,
  startMemoryServer,
  within,
} from "./_server.ts";

const ALICE: Token = { name: "alice", secret: "s3cret-token-for-alice" };
/** Never parsed in process: the memory net speaks no TLS. */
const TLS = { cert: "CERT", key: "KEY" };
const CERTS = { allowed: new Set(["sha256:" + "ab".repeat(32)]) };

test("serveConnection treats a first byte of 0x89 as a framed client and welcomes it", async () => {
  await using t = await startMemoryServer();
  const conn = await t.connect();
  await conn.write(helloBytes("chat"));
  const reader = new FrameReader(conn, { bufferSize: 4096 });
  assert.deepEqual(
    [...await reader.readExact(8)],
    [0x89, 0x4d, 0x4f, 0x41, 0x54, 0x0d, 0x0a, 0x01],
  );
  const frame = await within(reader.readFrame(), "welcome");
  assert.equal(frame?.type, Kind.Welcome);
  const welcome = decodeWelcome(frame!.payload);
  assert.equal(welcome.server, "moat/0.0.0-test");
  assert.equal(welcome.name, "c1");
  assert.equal(welcome.peer, `127.0.0.1:${conn.localAddr.port}`);
  conn.close();
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "peer closed");
});

test("serveConnection serves any other first byte as plain-text chat", async () => {
  await using t = await startMemoryServer({ reply: "pong" });
  const listener = await openFramed(t, "chat");
  const conn = await t.connect();
  await conn.write(bytes("hello\n"));
  assert.equal(await readLine(conn), "[server] pong\n");
  // The listener hears the plain client join, then its line.
  const joined = await within(listener.reader.readFrame(), "presence line");
  assert.deepEqual(JSON.parse(decodeText(joined!.payload)), {
    from: "server",
    addr: "",
    text: `c2 (127.0.0.1:${conn.localAddr.port}) joined`,
  });
  const frame = await within(listener.reader.readFrame(), "relayed line");
  assert.equal(frame?.type, Kind.Chat);
  assert.deepEqual(JSON.parse(decodeText(frame!.payload)), {
    from: "c2",
    addr: `127.0.0.1:${conn.localAddr.port}`,
    text: "hello",
  });
  const chat = await t.audit.waitFor((e) => e.event === "chat", "chat");
  assert.equal(chat.text, "hello");
  assert.equal(chat.name, "c2");
});

test("serveConnection refuses a TLS ClientHello on a plain port with one ERR line and never relays it", async () => {
  await using t = await startMemoryServer();
  const listener = await openFramed(t, "chat");
  const conn = await t.connect();
  // A ClientHello record header, then the start of its body.
  await conn.write(Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00));
  assert.equal(
    await readText(conn),
    "ERR TLS_NOT_ENABLED this server does not speak TLS on this port\n",
  );
  conn.close();
  const closed = await t.audit.waitFor(
    (e) => e.event === "closed" && e.name === "c2",
    "closed",
  );
  assert.equal(closed.reason, "TLS client on a plain port");
  assert.deepEqual(t.audit.named("chat"), []);
  listener.conn.close();
});

test("serveConnection refuses plain text with one ERR line when plain mode is off, and still serves framed clients", async () => {
  await using t = await startMemoryServer({ plain: false });
  const conn = await t.connect();
  await conn.write(bytes("hello\n"));
  assert.equal(
    await readText(conn),
    "ERR PLAIN_DISABLED plain-text mode is off on this server\n",
  );
  conn.close();
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "plain-text client refused (--no-plain)");
  const framed = await openFramed(t, "chat");
  assert.equal(framed.welcome.name, "c2");
  assert.deepEqual(t.audit.named("chat"), []);
});

test("serveConnection ends a connection that closes before sending anything", async () => {
  await using t = await startMemoryServer();
  const conn = await t.connect();
  await conn.closeWrite();
  assert.equal(await readText(conn), "");
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "peer closed before sending anything");
});

test("resolveServerOptions turns plain text off for tokens or plain: false, and leaves it on with TLS and client certificates", () => {
  const base: ServerOptions = {
    net: memoryNet(),
    hosts: ["127.0.0.1"],
    allowlist: compileAllowlist({}),
    jail: { root: ".", open: () => Promise.reject(new Error("unused")) },
    audit: new AuditLog(() => {}),
    version: "0.0.0-test",
  };
  const rows: [string, Partial<ServerOptions>, boolean][] = [
    ["plain TCP", {}, true],
    ["plain TCP, plain: false", { plain: false }, false],
    ["plain TCP, tokens", { auth: { tokens: [ALICE] } }, false],
    ["TLS", { tls: TLS }, true],
    ["TLS, plain: false", { tls: TLS, plain: false }, false],
    ["TLS, client certificates", { tls: TLS, auth: { certs: CERTS } }, true],
    ["TLS, tokens", { tls: TLS, auth: { tokens: [ALICE] } }, false],
    [
      "TLS, certificates and tokens",
      { tls: TLS, auth: { certs: CERTS, tokens: [ALICE] } },
      false,
    ],
    ["tokens, plain: true", { plain: true, auth: { tokens: [ALICE] } }, false],
  ];
  for (const [name, extra, plain] of rows) {
    assert.equal(
      resolveServerOptions({ ...base, ...extra }).plain,
      plain,
      name,
    );
  }
});

test("serveConnection serves FILE: and chat lines on a TLS server that requires no token", async () => {
  await using t = await startMemoryServer({ tls: TLS, reply: "PONG" });
  fs.writeFileSync(path.join(t.root, "hello.txt"), "hello over tls\n");
  const get = await t.connect();
  await get.write(bytes("FILE:hello.txt\n"));
  assert.equal(await readText(get), "hello over tls\n");
  const chat = await t.connect();
  await chat.write(bytes("hi\n"));
  assert.equal(await readLine(chat), "[server] PONG\n");
  assert.equal(t.audit.named("listening")[0]!.plain, true);
  chat.close();
});

test("serveConnection refuses plain text on a TLS server that requires a token, and says why in the audit log", async () => {
  await using t = await startMemoryServer({
    tls: TLS,
    auth: { tokens: [ALICE] },
  });
  const conn = await t.connect();
  await conn.write(bytes("FILE:hello.txt\n"));
  assert.equal(
    await readText(conn),
    "ERR PLAIN_DISABLED plain-text mode is off on this server\n",
  );
  conn.close();
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "plain-text client refused (token required)");
  assert.equal(t.audit.named("listening")[0]!.plain, false);
});

test("plainRefusal serves a certificate port's connection only with a verified certificate", () => {
  const options = resolveServerOptions({
    net: memoryNet(),
    hosts: ["127.0.0.1"],
    allowlist: compileAllowlist({}),
    jail: { root: ".", open: () => Promise.reject(new Error("unused")) },
    audit: new AuditLog(() => {}),
    version: "0.0.0-test",
    tls: TLS,
    auth: { certs: CERTS },
  });
  const ctx = {
    options,
    audit: options.audit,
    hub: new ChatHub(() => {}),
    cache: new DigestCache(),
    sources: new SourceWatch({
      audit: options.audit,
      silentAfterMs: options.silentAfterMs,
      now: options.now,
    }),
    authThrottle: new AuthThrottle(),
    sendBudget: new SendBudget(options.sendBufferBytes),
    appendBudget: new AppendBudget(DEFAULT_APPEND_BUDGET),
    chatRate: undefined,
    pauses: new Pauses(),
  };
  const [client, conn] = memoryConnPair();
  const verified = new Session(ctx, {
    name: "c1",
    conn,
    identity: `cert:sha256:${"ab".repeat(32)}`,
  });
  assert.equal(plainRefusal(verified), undefined);
  // Fails closed: the guard refuses such a peer first, but if that check
  // were ever skipped, plain text would not be served either.
  const unverified = new Session(ctx, { name: "c2", conn });
  assert.equal(
    plainRefusal(unverified),
    "plain-text client refused (no verified client certificate)",
  );
  client.close();
});

test("serveConnection answers a frame over maxFrameSize after the handshake with ERR_FRAME_TOO_LARGE before the close", async () => {
  await using t = await startMemoryServer({ maxFrameSize: 65_536 });
  for (const mode of ["get", "chat"] as const) {
    const client = await openFramed(t, mode);
    // A header announcing one byte over the limit, and none of its payload.
    await client.conn.write(Uint8Array.of(Kind.Get, 0, 1, 0, 1));
    const frame = await within(client.reader.readFrame(), "the refusal");
    assert.equal(frame?.type, Kind.Error, mode);
    assert.deepEqual(decodeError(frame!.payload), {
      code: "ERR_FRAME_TOO_LARGE",
      message: "Cannot decode frame: length 65537 exceeds maxFrameSize 65536",
    });
    assert.equal(await within(client.reader.readFrame(), "the close"), null);
    const err = await t.audit.waitFor(
      (e) => e.event === "error" && e.name === client.welcome.name,
      "the error in the audit log",
    );
    assert.equal(err.code, "ERR_FRAME_TOO_LARGE");
  }
});

test("serveConnection serves a silent connection whose late first bytes are a preamble as a framed client", async () => {
  await using t = await startMemoryServer();
  const conn = await t.connect();
  const reader = new FrameReader(conn, { bufferSize: 4096 });
  // Silent past the detection time: the server takes it for a plain client
  // that waits to be spoken to, and it hears the operator.
  const firstByte = reader.readExact(1).then((b) => decodeText(b));
  let heard: string | undefined;
  for (let i = 0; i < 200 && heard === undefined; i++) {
    t.server.say("anyone?");
    heard = await Promise.race([
      firstByte,
      new Promise<undefined>((r) => setTimeout(() => r(undefined), 20)),
    ]);
  }
  assert.equal(heard, "[");
  assert.equal(
    decodeText(await within(reader.readExact(18), "the line")),
    "operator] anyone?\n",
  );
  // Then its preamble arrives: a framed client that was starved, not text.
  await conn.write(helloBytes("chat"));
  // Lines said before it joined the framed side come first.
  for (let i = 0; i < 200; i++) {
    const [next] = await within(reader.peek(1), "more bytes");
    if (next === 0x89) break;
    assert.equal(
      decodeText(await within(reader.readExact(19), "a line")),
      "[operator] anyone?\n",
    );
  }
  assert.deepEqual(
    [...await within(reader.readExact(8), "the preamble")],
    [0x89, 0x4d, 0x4f, 0x41, 0x54, 0x0d, 0x0a, 0x01],
  );
  const frame = await within(reader.readFrame(), "the welcome");
  assert.equal(frame?.type, Kind.Welcome);
  assert.deepEqual(t.audit.named("chat"), [], "the preamble relayed as chat");
  conn.close();
});
