/**
 * In-process tests of `lib/server/handshake.ts`: the preamble, the Hello and
 * its 4 KiB cap, the token challenge, and the handshake deadline (on a fake
 * clock, swept by hand).
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeFrame } from "../lib/framer.ts";
import {
  decodeError,
  decodeText,
  encodeJson,
  encodePreamble,
  Kind,
} from "../lib/protocol.ts";
import { answerChallenge, type Token } from "../lib/auth.ts";
import {
  answerTokenChallenge,
  bytes,
  helloBytes,
  openFramed,
  readAll,
  startMemoryServer,
  within,
} from "./_server.ts";

function concat(...parts: (Uint8Array | number[] | string)[]): Uint8Array {
  const arrays = parts.map((p) =>
    typeof p === "string" ? bytes(p) : Uint8Array.from(p)
  );
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of arrays) {
    out.set(a, o);
    o += a.length;
  }
  return out;
}

test("handshake refuses a hello over 4 KiB before its payload arrives, and takes one just under", async () => {
  await using t = await startMemoryServer();
  // The header announces 5,000 bytes; only 10 are sent, so an answer proves
  // the server did not wait for (or allocate) the payload.
  const conn = await t.connect();
  await conn.write(
    concat(encodePreamble(), [Kind.Hello, 0, 0, 0x13, 0x88], '{"client":'),
  );
  const reply = await readAll(conn);
  assert.deepEqual([...reply.subarray(0, 8)], [...encodePreamble()]);
  assert.equal(reply[8], Kind.Error);
  assert.match(
    decodeText(reply.subarray(13)),
    /"code":"ERR_FRAME_TOO_LARGE".*length 5000 exceeds maxFrameSize 4096/,
  );

  // A hello of 4,096 bytes (an unknown field pads it) is still a hello.
  const base = JSON.stringify({
    client: "moat/test",
    mode: "chat",
    maxFrameSize: 1_048_576,
    pad: "",
  });
  const hello = JSON.stringify({
    client: "moat/test",
    mode: "chat",
    maxFrameSize: 1_048_576,
    pad: "x".repeat(4096 - base.length),
  });
  assert.equal(hello.length, 4096);
  const ok = await t.connect();
  await ok.write(
    concat(
      encodePreamble(),
      encodeFrame({ type: Kind.Hello, payload: bytes(hello) }),
    ),
  );
  const head = new Uint8Array(13);
  for (let got = 0; got < 13;) {
    const n = await within(ok.read(head.subarray(got)), "a welcome");
    assert.notEqual(n, null, "closed before the welcome");
    got += n!;
  }
  assert.equal(head[8], Kind.Welcome);
  ok.close();
});

test("handshake rejects a frame claiming 4 GiB without reading it, and the server keeps serving", async () => {
  await using t = await startMemoryServer();
  const conn = await t.connect();
  // Preamble, then a hello frame claiming 4 GiB.
  await conn.write(concat(encodePreamble(), [0x01, 0xff, 0xff, 0xff, 0xff]));
  const text = decodeText(await readAll(conn));
  assert.match(text, /ERR_FRAME_TOO_LARGE/);
  const err = await t.audit.waitFor((e) => e.event === "error", "error event");
  assert.equal(err.code, "ERR_FRAME_TOO_LARGE");
  // Still serving:
  const get = await openFramed(t, "get");
  await get.send(Kind.Get, encodeJson({ path: "nope", offset: 0 }));
  const frame = await within(get.reader.readFrame(), "the refusal");
  assert.equal(frame?.type, Kind.Error);
  assert.equal(decodeError(frame!.payload).code, "ERR_NOT_FOUND");
});

test("handshake closes a connection with a bad magic without answering", async () => {
  await using t = await startMemoryServer();
  const conn = await t.connect();
  await conn.write(concat([0x89], "MOAX\r\n", [0x01]));
  assert.equal((await readAll(conn)).length, 0);
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "Bad preamble: not a moat client");
  const err = t.audit.named("error")[0]!;
  assert.equal(err.code, "ERR_PROTOCOL");
});

test("handshake answers another protocol version with our preamble and ERR_VERSION", async () => {
  await using t = await startMemoryServer();
  const conn = await t.connect();
  await conn.write(encodePreamble(2));
  const reply = await readAll(conn);
  assert.deepEqual([...reply.subarray(0, 8)], [...encodePreamble()]);
  assert.equal(reply[8], Kind.Error);
  assert.deepEqual(decodeError(reply.subarray(13)), {
    code: "ERR_VERSION",
    message: "Unsupported protocol version 2; this server speaks 1",
  });
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "unsupported protocol version 2");
});

test("handshake refuses a first frame that is not a hello", async () => {
  await using t = await startMemoryServer();
  const conn = await t.connect();
  await conn.write(
    concat(
      encodePreamble(),
      encodeFrame({ type: Kind.Chat, payload: bytes("hi") }),
    ),
  );
  const reply = await readAll(conn);
  assert.equal(reply[8], Kind.Error);
  const body = decodeError(reply.subarray(13));
  assert.equal(body.code, "ERR_PROTOCOL");
  assert.match(body.message, /^Expected a hello frame, got type 0x/);
});

test("Server closes a framed client that stalls in the handshake at the deadline, not before", async () => {
  await using t = await startMemoryServer({ handshakeTimeoutMs: 1000 });
  const conn = await t.connect();
  await conn.write(Uint8Array.of(0x89, 0x4d));
  // Both bytes read: the first byte armed the deadline.
  await within(conn.drained(), "the server to read the bytes");
  t.clock.advance(1000);
  t.server.sweep();
  assert.equal(conn.peer.isClosed, false, "closed before the deadline");
  t.clock.advance(1);
  t.server.sweep();
  assert.equal(conn.peer.isClosed, true, "still open after the deadline");
  assert.equal((await readAll(conn)).length, 0);
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "handshake timeout");
});

test("handshake clears the deadline once the client is welcomed", async () => {
  await using t = await startMemoryServer({
    handshakeTimeoutMs: 1000,
    idleTimeoutMs: 60_000,
  });
  const client = await openFramed(t, "chat");
  t.clock.advance(30_000);
  t.server.sweep();
  assert.equal(client.conn.peer.isClosed, false);
  assert.equal(t.server.connections, 1);
});

const ALICE: Token = { name: "alice", secret: "s3cret-token-for-alice" };

/** Sends a Hello to a token server and answers its challenge with `token`. */
async function tokenHandshake(
  t: Awaited<ReturnType<typeof startMemoryServer>>,
  token: Token,
) {
  const { conn, reader } = await answerTokenChallenge(t, "chat", token, {
    hello: { maxFrameSize: 65536 },
  });
  return { conn, reply: await within(reader.readFrame(), "the answer") };
}

test("handshake welcomes a client that proves a token and names it by the token", async () => {
  await using t = await startMemoryServer({ auth: { tokens: [ALICE] } });
  const { conn, reply } = await tokenHandshake(t, ALICE);
  assert.equal(reply?.type, Kind.Welcome);
  const auth = await t.audit.waitFor(
    (e) => e.event === "authenticated",
    "authenticated",
  );
  assert.equal(auth.identity, "token:alice");
  conn.close();
});

test("handshake refuses a wrong token with ERR_AUTH and an audit line", async () => {
  await using t = await startMemoryServer({ auth: { tokens: [ALICE] } });
  const { conn, reply } = await tokenHandshake(t, {
    name: "alice",
    secret: "not-the-right-secret!!",
  });
  assert.equal(reply?.type, Kind.Error);
  assert.equal(decodeError(reply!.payload).code, "ERR_AUTH");
  const refused = await t.audit.waitFor(
    (e) => e.event === "refused",
    "refused",
  );
  assert.equal(refused.reason, "token authentication failed");
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "token authentication failed");
  assert.deepEqual(t.audit.named("authenticated"), []);
  conn.close();
});

test("Server turns plain-text mode off when tokens are required", async () => {
  await using t = await startMemoryServer({ auth: { tokens: [ALICE] } });
  const conn = await t.connect();
  await conn.write(bytes("hello\n"));
  assert.equal(
    decodeText(await readAll(conn)),
    "ERR PLAIN_DISABLED plain-text mode is off on this server\n",
  );
});

const WRONG: Token = { name: "alice", secret: "not-the-right-secret!!" };

/**
 * Sends a Hello to a token server from `from`; returns what follows the
 * preamble (a Challenge, or a refusal) and a way to answer the challenge.
 */
async function startTokenHandshake(
  t: Awaited<ReturnType<typeof startMemoryServer>>,
  from: string,
) {
  const conn = await t.connect(from);
  await conn.write(helloBytes("chat"));
  const { FrameReader } = await import("../lib/framer.ts");
  const reader = new FrameReader(conn, { bufferSize: 4096 });
  await within(reader.readExact(8), "the preamble");
  const first = await within(reader.readFrame(), "the challenge");
  return {
    conn,
    first,
    async answer(token: Token) {
      assert.equal(first?.type, Kind.Challenge);
      await conn.write(encodeFrame({
        type: Kind.Auth,
        payload: answerChallenge(first!.payload, {
          token,
          mode: "chat",
          binding: "",
        }),
      }));
      return await within(reader.readFrame(), "the answer");
    },
  };
}

/** Asserts that `frame` is ERR_AUTH_THROTTLED naming `seconds`. */
function assertThrottled(
  frame: { type: number; payload: Uint8Array } | null,
  seconds: number,
) {
  assert.equal(frame?.type, Kind.Error);
  assert.deepEqual(decodeError(frame!.payload), {
    code: "ERR_AUTH_THROTTLED",
    message:
      `Too many failed authentication attempts from this address: try again in ${seconds} s`,
  });
}

test("handshake throttles failed token proofs per address: the wait doubles, a waiting address is not challenged, a success clears it", async () => {
  await using t = await startMemoryServer({ auth: { tokens: [ALICE] } });
  /** Fails one proof; `failures` is what the audit line should count. */
  const fail = async (failures: number) => {
    const before = t.audit.named("auth_failed").length;
    const h = await startTokenHandshake(t, "127.0.0.1");
    const reply = await h.answer(WRONG);
    assert.equal(decodeError(reply!.payload).code, "ERR_AUTH");
    const e = await t.audit.waitCount(
      (e) => e.event === "auth_failed",
      before + 1,
      "auth_failed",
    );
    assert.deepEqual(
      {
        ...e.at(-1)!,
        ts: undefined,
        peer: undefined,
        name: undefined,
        port: undefined,
      },
      {
        ts: undefined,
        event: "auth_failed",
        peer: undefined,
        name: undefined,
        ip: "127.0.0.1",
        port: undefined,
        address: "127.0.0.1",
        token: "alice",
        failures,
      },
    );
    assert.equal(e.at(-1)!.peer, `127.0.0.1:${h.conn.localAddr.port}`);
  };
  await fail(1);
  // 250 ms to wait: refused at once, before any challenge.
  const early = await startTokenHandshake(t, "127.0.0.1");
  assertThrottled(early.first, 1);
  assert.equal(await within(early.conn.read(new Uint8Array(1)), "EOF"), null);
  // Another address is not held up.
  const other = await startTokenHandshake(t, "127.0.0.2");
  assert.equal((await other.answer(ALICE))?.type, Kind.Welcome);
  t.clock.advance(250);
  await fail(2);
  t.clock.advance(499);
  assertThrottled((await startTokenHandshake(t, "127.0.0.1")).first, 1);
  t.clock.advance(1);
  await fail(3);
  t.clock.advance(999);
  assertThrottled((await startTokenHandshake(t, "127.0.0.1")).first, 1);
  t.clock.advance(1);
  const ok = await startTokenHandshake(t, "127.0.0.1");
  assert.equal((await ok.answer(ALICE))?.type, Kind.Welcome);
  // The success cleared the address: its next failure counts from 1 again.
  await fail(1);
  assertThrottled((await startTokenHandshake(t, "127.0.0.1")).first, 1);
  const throttled = t.audit.events.filter((e) =>
    e.event === "refused" && e.reason === "authentication throttled"
  );
  assert.equal(throttled.length, 4);
  const closed = await t.audit.waitFor(
    (e) => e.event === "closed" && e.reason === "authentication throttled",
    "a throttled close",
  );
  assert.equal(closed.name, "c2");
});

test("handshake checks no proof from an address whose parallel connection just failed", async () => {
  await using t = await startMemoryServer({ auth: { tokens: [ALICE] } });
  // Both are challenged before either answers: guessing in parallel.
  const a = await startTokenHandshake(t, "127.0.0.1");
  const b = await startTokenHandshake(t, "127.0.0.1");
  assert.equal(decodeError((await a.answer(WRONG))!.payload).code, "ERR_AUTH");
  // Even the right token is not checked while the address waits.
  assertThrottled(await b.answer(ALICE), 1);
  assert.equal(t.audit.named("auth_failed").length, 1);
  assert.deepEqual(t.audit.named("authenticated"), []);
});
