/**
 * `get` against fake servers on loopback: which failures leave the part file
 * for `--resume` and which remove it.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { get } from "../lib/client.ts";
import { Code, MoatError } from "../lib/errors.ts";
import { partPathOf } from "../lib/file_sender.ts";
import { encodeFrame } from "../lib/framer.ts";
import {
  encodeError,
  encodeJson,
  encodePreamble,
  Kind,
} from "../lib/protocol.ts";
import { getNet } from "../lib/net/mod.ts";

function tmp() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-client-"));
  return {
    dir,
    [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

/** A server that answers the client's first bytes with `reply`, then closes. */
async function fakeServer(reply: Uint8Array) {
  const socks = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on("error", () => {});
    sock.once("data", () => sock.end(reply));
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  return {
    port: (srv.address() as net.AddressInfo).port,
    [Symbol.asyncDispose]: () => {
      for (const sock of socks) sock.destroy();
      return new Promise<void>((r) => srv.close(() => r()));
    },
  };
}

/** A loopback port that nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

function clientOf(port: number) {
  return {
    net: getNet(),
    server: { hostname: "127.0.0.1", port },
    version: "0.0.0-test",
    timeoutMs: 10_000,
  };
}

const WELCOME = encodeFrame({
  type: Kind.Welcome,
  payload: encodeJson({
    server: "moat/fake",
    name: "c1",
    peer: "127.0.0.1:1",
    maxFrameSize: 1 << 20,
  }),
});

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(() => assert.fail("resolved"), (e: unknown) => e);
}

test("get removes a fresh part and keeps a resumed one when the server cannot be reached", async () => {
  using t = tmp();
  const port = await closedPort();
  const out = path.join(t.dir, "a.bin");
  const fresh = await rejection(get(clientOf(port), { path: "a", out }));
  assert.ok(fresh instanceof MoatError && fresh.code === Code.ERR_CONNECT);
  assert.deepEqual(fs.readdirSync(t.dir), []);
  fs.writeFileSync(partPathOf(out), "12345");
  const resumed = await rejection(
    get(clientOf(port), { path: "a", out, resume: true }),
  );
  assert.ok(resumed instanceof MoatError && resumed.code === Code.ERR_CONNECT);
  assert.equal(fs.readFileSync(partPathOf(out), "utf8"), "12345");
});

test("get removes the part, resumed or not, when the server refuses the request", async () => {
  await using fake = await fakeServer(concat(
    encodePreamble(),
    WELCOME,
    encodeFrame({
      type: Kind.Error,
      payload: encodeError({ code: "ERR_BAD_OFFSET", message: "past the end" }),
    }),
  ));
  using t = tmp();
  const out = path.join(t.dir, "a.bin");
  fs.writeFileSync(partPathOf(out), "12345");
  const err = await rejection(
    get(clientOf(fake.port), { path: "a", out, resume: true }),
  );
  assert.ok(err instanceof MoatError && err.code === Code.ERR_BAD_OFFSET);
  assert.equal(err.message, "Server error: past the end");
  assert.deepEqual(fs.readdirSync(t.dir), []);
});

test("get keeps a resumed part when the server closes before the file begins, and removes a fresh one", async () => {
  await using fake = await fakeServer(concat(encodePreamble(), WELCOME));
  using t = tmp();
  const out = path.join(t.dir, "a.bin");
  const fresh = await rejection(get(clientOf(fake.port), { path: "a", out }));
  assert.ok(
    fresh instanceof MoatError && fresh.code === Code.ERR_CONNECTION_CLOSED,
    String(fresh),
  );
  assert.deepEqual(fs.readdirSync(t.dir), [], "no empty part left behind");
  fs.writeFileSync(partPathOf(out), "12345");
  const resumed = await rejection(
    get(clientOf(fake.port), { path: "a", out, resume: true }),
  );
  assert.ok(
    resumed instanceof MoatError && resumed.code === Code.ERR_CONNECTION_CLOSED,
  );
  assert.equal(fs.readFileSync(partPathOf(out), "utf8"), "12345");
});
