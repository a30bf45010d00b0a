/**
 * Tests for the Unix sockets of the runtime adapters (`Net.listenUnix`,
 * `Net.connectUnix`). The same file runs under `deno test -A` and
 * `bun test`; each runtime exercises its own adapter through `getNet()`.
 * Sockets live in a fresh temporary directory.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { AddressInUseError, ConnectError, MoatError } from "../lib/errors.ts";
import { getNet } from "../lib/net/mod.ts";
import type { Conn, Listener } from "../lib/net/types.ts";
import { tempDir } from "./_e2e.ts";
import { within } from "./_server.ts";

const net = getNet();
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The first connection a listener accepts. */
async function acceptOne(listener: Listener): Promise<Conn> {
  const next = await within(
    listener[Symbol.asyncIterator]().next(),
    "a connection",
  );
  assert.ok(!next.done);
  return next.value;
}

/** Everything until EOF. */
async function readToEnd(conn: Conn): Promise<string> {
  const buf = new Uint8Array(1024);
  let text = "";
  for (let i = 0; i < 1000; i++) {
    const n = await within(conn.read(buf), "bytes or EOF");
    if (n === null) return text;
    text += decoder.decode(buf.subarray(0, n));
  }
  throw new Error("More than 1000 reads before EOF");
}

test("Net.listenUnix and connectUnix carry bytes both ways, with half-close", async () => {
  using dir = tempDir("moat-unix-");
  const file = path.join(dir.dir, "s.sock");
  const listener = await net.listenUnix({ path: file });
  try {
    assert.deepEqual(listener.addr, { hostname: file, port: 0 });
    assert.ok(fs.lstatSync(file).isSocket());
    const client = await net.connectUnix({ path: file });
    const server = await acceptOne(listener);
    assert.equal(server.remoteAddr.port, 0);
    assert.equal(typeof server.remoteAddr.hostname, "string");
    // Twice: the second write is where TCP turns Nagle off.
    await client.write(encoder.encode("hello "));
    await client.write(encoder.encode("server"));
    await client.closeWrite();
    assert.equal(await readToEnd(server), "hello server");
    // Its input ended; it can still answer.
    await server.write(encoder.encode("hi"));
    await server.write(encoder.encode(" client"));
    await server.closeWrite();
    assert.equal(await readToEnd(client), "hi client");
    client.close();
    server.close();
  } finally {
    listener.close();
  }
  // close() removes the socket file.
  assert.equal(fs.existsSync(file), false);
});

test("Net.listenUnix refuses a path where something exists with AddressInUseError", async () => {
  using dir = tempDir("moat-unix-");
  const file = path.join(dir.dir, "taken");
  fs.writeFileSync(file, "not a socket");
  await assert.rejects(
    net.listenUnix({ path: file }),
    (error: unknown) => {
      assert.ok(error instanceof AddressInUseError, String(error));
      assert.equal(
        error.message,
        `Cannot listen on "${file}": something exists there already`,
      );
      return true;
    },
  );
  assert.equal(fs.readFileSync(file, "utf8"), "not a socket");
});

test("Net.listenUnix in a missing directory throws ERR_LISTEN naming the path", async () => {
  using dir = tempDir("moat-unix-");
  const file = path.join(dir.dir, "no", "s.sock");
  await assert.rejects(
    net.listenUnix({ path: file }),
    (error: unknown) => {
      assert.ok(error instanceof MoatError);
      assert.equal(error.code, "ERR_LISTEN");
      assert.equal(
        error.message,
        `Cannot listen on "${file}": no such directory`,
      );
      return true;
    },
  );
});

test("Net.connectUnix names a missing socket and a socket nobody listens on", async () => {
  using dir = tempDir("moat-unix-");
  const missing = path.join(dir.dir, "missing.sock");
  await assert.rejects(
    net.connectUnix({ path: missing }),
    (error: unknown) => {
      assert.ok(error instanceof ConnectError);
      assert.equal(
        error.message,
        `Cannot connect to "${missing}": no such socket`,
      );
      return true;
    },
  );
  // A hard link keeps a socket file after its listener is gone: stale.
  const live = path.join(dir.dir, "live.sock");
  const stale = path.join(dir.dir, "stale.sock");
  const listener = await net.listenUnix({ path: live });
  fs.linkSync(live, stale);
  listener.close();
  assert.ok(fs.lstatSync(stale).isSocket());
  await assert.rejects(
    net.connectUnix({ path: stale }),
    (error: unknown) => {
      assert.ok(error instanceof ConnectError);
      assert.equal(
        error.message,
        `Cannot connect to "${stale}": connection refused`,
      );
      return true;
    },
  );
});

test("Net.listenUnix ends its iteration on close and closes later peers", async () => {
  using dir = tempDir("moat-unix-");
  const file = path.join(dir.dir, "s.sock");
  const listener = await net.listenUnix({ path: file });
  const iterating = (async () => {
    let n = 0;
    for await (const conn of listener) {
      n++;
      conn.close();
    }
    return n;
  })();
  const client = await net.connectUnix({ path: file });
  assert.equal(await readToEnd(client), "");
  client.close();
  listener.close();
  assert.equal(await within(iterating, "the iteration to end"), 1);
});
