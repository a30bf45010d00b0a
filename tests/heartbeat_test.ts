/**
 * Tests of the client heartbeat (`lib/heartbeat.ts`) over in-memory
 * connections, and of the Welcome field that turns it on.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Heartbeat,
  heartbeatInterval,
  MIN_HEARTBEAT_MS,
} from "../lib/heartbeat.ts";
import { encodeFrame, FrameReader } from "../lib/framer.ts";
import {
  decodeWelcome,
  encodeJson,
  encodeText,
  Kind,
  type Welcome,
} from "../lib/protocol.ts";
import { ProtocolError } from "../lib/errors.ts";
import { memoryConnPair } from "./_memory_conn.ts";
import { within } from "./_server.ts";

const WELCOME: Welcome = {
  server: "moat/1",
  name: "c1",
  peer: "127.0.0.1:5000",
  maxFrameSize: 1_048_576,
};

test("heartbeatInterval is a third of the announced idle timeout, and nothing without one", () => {
  assert.equal(heartbeatInterval(WELCOME), undefined);
  assert.equal(
    heartbeatInterval({ ...WELCOME, idleTimeoutMs: 300_000 }),
    100_000,
  );
  assert.equal(heartbeatInterval({ ...WELCOME, idleTimeoutMs: 1000 }), 333);
  // A server announcing 0 does not make the client ping in a loop.
  assert.equal(
    heartbeatInterval({ ...WELCOME, idleTimeoutMs: 0 }),
    MIN_HEARTBEAT_MS,
  );
});

test("decodeWelcome reads idleTimeoutMs when present and refuses a bad one", () => {
  const base = { ...WELCOME };
  assert.deepEqual(decodeWelcome(encodeJson(base)), base);
  assert.equal(
    decodeWelcome(encodeJson({ ...base, idleTimeoutMs: 300_000 }))
      .idleTimeoutMs,
    300_000,
  );
  for (const bad of [-1, 1.5, "300", null]) {
    assert.throws(
      () => decodeWelcome(encodeJson({ ...base, idleTimeoutMs: bad })),
      ProtocolError,
      String(bad),
    );
  }
});

test("Heartbeat pings a quiet connection and writes in call order", async () => {
  const [client, server] = memoryConnPair();
  const heartbeat = new Heartbeat(client, MIN_HEARTBEAT_MS);
  const reader = new FrameReader(server, { bufferSize: 4096 });
  const first = await within(reader.readFrame(), "a ping");
  assert.equal(first?.type, Kind.Ping);
  assert.equal(first?.payload.length, 0);
  const lines = ["one", "two", "three"].map((text) =>
    encodeFrame({ type: Kind.Chat, payload: encodeText(text) })
  );
  await Promise.all(lines.map((line) => heartbeat.write(line)));
  const seen: string[] = [];
  while (seen.length < 3) {
    const frame = await within(reader.readFrame(), "a chat line");
    assert.ok(frame !== null);
    if (frame.type === Kind.Chat) {
      seen.push(new TextDecoder().decode(frame.payload));
    } else assert.equal(frame.type, Kind.Ping);
  }
  assert.deepEqual(seen, ["one", "two", "three"]);
  await heartbeat.stop();
  await client.closeWrite();
  // Whole frames to the end: a stopped heartbeat writes nothing more.
  for (let i = 0; i < 100; i++) {
    const frame = await within(reader.readFrame(), "EOF");
    if (frame === null) break;
    assert.equal(frame.type, Kind.Ping);
  }
  client.close();
  server.close();
});

test("Heartbeat without an interval never pings", async () => {
  const [quiet, quietPeer] = memoryConnPair();
  const [clock, clockPeer] = memoryConnPair();
  const silent = new Heartbeat(quiet, undefined);
  const ticking = new Heartbeat(clock, MIN_HEARTBEAT_MS);
  // Two pings of the other heartbeat: time in which this one would have pinged.
  const clockReader = new FrameReader(clockPeer, { bufferSize: 4096 });
  for (let i = 0; i < 2; i++) {
    assert.equal(
      (await within(clockReader.readFrame(), "a tick"))?.type,
      Kind.Ping,
    );
  }
  await ticking.stop();
  await silent.stop();
  await quiet.closeWrite();
  const reader = new FrameReader(quietPeer, { bufferSize: 4096 });
  assert.equal(await within(reader.readFrame(), "EOF"), null);
  for (const conn of [quiet, quietPeer, clock, clockPeer]) conn.close();
});
