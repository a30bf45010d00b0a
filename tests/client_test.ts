/**
 * `get`, `getStream` and `chat` against fake servers on loopback: which
 * failures leave the part file for `--resume` and which remove it, what a
 * stream passes on before a failure, and what a chat still prints after its
 * input ends.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import * as zlib from "node:zlib";
import { chat, get, getStream } from "../lib/client.ts";
import { Code, MoatError } from "../lib/errors.ts";
import { partPathOf } from "../lib/file_sender.ts";
import { encodeFrame } from "../lib/framer.ts";
import { encodeError, encodeJson, Kind } from "../lib/protocol.ts";
import { getNet } from "../lib/net/mod.ts";
import { concat, fakeServer, fileFrames, WELCOME } from "./_fake_server.ts";
import { quietPort } from "./_test_utils.ts";

function tmp() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-client-"));
  return {
    dir,
    [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

function clientOf(port: number) {
  return {
    net: getNet(),
    server: { hostname: "127.0.0.1", port },
    version: "0.0.0-test",
    timeoutMs: 10_000,
  };
}

function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(() => assert.fail("resolved"), (e: unknown) => e);
}

test("get removes a fresh part and keeps a resumed one when the server cannot be reached", async () => {
  using t = tmp();
  const port = await quietPort();
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
  await using fake = await fakeServer(WELCOME);
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

test("get refuses to discard a part that holds bytes without --resume or --force", async () => {
  using t = tmp();
  const port = await quietPort();
  const out = path.join(t.dir, "a.bin");
  fs.writeFileSync(partPathOf(out), "12345");
  const refused = await rejection(get(clientOf(port), { path: "a", out }));
  assert.ok(refused instanceof MoatError, String(refused));
  assert.equal(refused.code, Code.ERR_EXISTS);
  assert.equal(refused.exitCode, 7);
  assert.equal(
    refused.message,
    `Refusing to discard "${
      partPathOf(out)
    }": it holds 5 bytes of an interrupted get (use --resume to continue it, or --force to start again)`,
  );
  assert.equal(fs.readFileSync(partPathOf(out), "utf8"), "12345");
  // --force discards it (and then fails to connect: nothing is left).
  const forced = await rejection(
    get(clientOf(port), { path: "a", out, force: true }),
  );
  assert.ok(forced instanceof MoatError && forced.code === Code.ERR_CONNECT);
  assert.deepEqual(fs.readdirSync(t.dir), []);
  // An empty part holds nothing to lose.
  fs.writeFileSync(partPathOf(out), "");
  const empty = await rejection(get(clientOf(port), { path: "a", out }));
  assert.ok(empty instanceof MoatError && empty.code === Code.ERR_CONNECT);
});

test("get refuses an existing target before looking at its part", async () => {
  using t = tmp();
  const out = path.join(t.dir, "a.bin");
  fs.writeFileSync(out, "done");
  fs.writeFileSync(partPathOf(out), "12345");
  const err = await rejection(
    get(clientOf(await quietPort()), { path: "a", out }),
  );
  assert.ok(err instanceof MoatError && err.code === Code.ERR_EXISTS);
  assert.match(err.message, /^Refusing to overwrite ".*a\.bin": it exists/);
  assert.equal(fs.readFileSync(partPathOf(out), "utf8"), "12345");
});

/** FileMeta for a file of `size` bytes, and the first `sent` of them. */
function partialFile(size: number, sent: number): Uint8Array {
  return concat(
    WELCOME,
    encodeFrame({
      type: Kind.FileMeta,
      payload: encodeJson({
        path: "a",
        size,
        offset: 0,
        mtimeMs: 0,
        digest: "crc32",
      }),
    }),
    encodeFrame({
      type: Kind.FileData,
      payload: new Uint8Array(sent).fill(0x61),
    }),
  );
}

test("get stopped by its signal mid-file rejects with the signal's reason and keeps the part", async () => {
  await using fake = await fakeServer(partialFile(1 << 20, 1000), {
    hold: true,
  });
  using t = tmp();
  const out = path.join(t.dir, "a.bin");
  const stop = new AbortController();
  let seen = 0;
  const err = await rejection(get(clientOf(fake.port), {
    path: "a",
    out,
    signal: stop.signal,
    onProgress: (received) => {
      seen = received;
      if (received === 1000) stop.abort();
    },
  }));
  assert.equal(err, stop.signal.reason);
  assert.equal(seen, 1000);
  assert.equal(fs.readFileSync(partPathOf(out), "utf8"), "a".repeat(1000));
  assert.equal(fs.existsSync(out), false);
});

test("get stopped by its signal before any byte arrived leaves no part", async () => {
  await using fake = await fakeServer(partialFile(1 << 20, 0), { hold: true });
  using t = tmp();
  const out = path.join(t.dir, "a.bin");
  const stop = new AbortController();
  const err = await rejection(get(clientOf(fake.port), {
    path: "a",
    out,
    signal: stop.signal,
    onStart: () => stop.abort(),
  }));
  assert.equal(err, stop.signal.reason);
  assert.deepEqual(fs.readdirSync(t.dir), []);
});

test("getStream passes the file to its sink and resolves once it checks out", async () => {
  const content = new TextEncoder().encode("streamed content\n");
  await using fake = await fakeServer(concat(WELCOME, fileFrames(content)));
  const got: Uint8Array[] = [];
  const result = await getStream(clientOf(fake.port), {
    path: "f",
    write: (bytes) => {
      got.push(bytes.slice());
      return Promise.resolve();
    },
  });
  assert.deepEqual(concat(...got), content);
  assert.equal(result.bytes, content.length);
  assert.equal(result.size, content.length);
  assert.equal(result.digestName, "crc32");
  assert.equal(
    result.digest,
    zlib.crc32(content).toString(16).padStart(8, "0"),
  );
});

test("getStream rejects with ERR_INTEGRITY when the bytes it passed on do not match the digest", async () => {
  const content = new TextEncoder().encode("streamed content\n");
  await using fake = await fakeServer(
    concat(WELCOME, fileFrames(content, { crc: 0xdeadbeef })),
  );
  const got: Uint8Array[] = [];
  const err = await rejection(getStream(clientOf(fake.port), {
    path: "f",
    write: (bytes) => {
      got.push(bytes.slice());
      return Promise.resolve();
    },
  }));
  assert.ok(err instanceof MoatError, String(err));
  assert.equal(err.code, Code.ERR_INTEGRITY);
  assert.match(err.message, /^crc32 mismatch: server sent deadbeef/);
  assert.deepEqual(concat(...got), content, "the bytes went out first");
});

test("getStream rejects with ERR_CONNECTION_CLOSED when the file is cut short", async () => {
  await using fake = await fakeServer(partialFile(5000, 1000));
  let passed = 0;
  const err = await rejection(getStream(clientOf(fake.port), {
    path: "a",
    write: (bytes) => {
      passed += bytes.length;
      return Promise.resolve();
    },
  }));
  assert.ok(err instanceof MoatError, String(err));
  assert.equal(err.code, Code.ERR_CONNECTION_CLOSED);
  assert.equal(err.message, "Connection closed after 1000 of 5000 bytes");
  assert.equal(passed, 1000);
});

/**
 * A chat server that welcomes the client and, once the client has closed
 * its sending side, sends `onEnd` (and closes, unless `hold`).
 */
async function chatServer(
  onEnd: Uint8Array,
  options: { hold?: boolean } = {},
) {
  const socks = new Set<net.Socket>();
  const srv = net.createServer({ allowHalfOpen: true }, (sock) => {
    socks.add(sock);
    sock.on("error", () => {});
    sock.once("data", () => sock.write(WELCOME));
    sock.on("end", () => {
      if (options.hold) sock.write(onEnd);
      else sock.end(onEnd);
    });
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

async function* linesOf(...lines: string[]): AsyncIterable<string> {
  for (const line of lines) {
    await Promise.resolve();
    yield line;
  }
}

const PONG = encodeFrame({
  type: Kind.Chat,
  payload: encodeJson({ from: "server", addr: "", text: "PONG" }),
});

test("chat prints what the server sends after the input ends, until the server closes", async () => {
  await using fake = await chatServer(PONG);
  const shown: string[] = [];
  await chat(clientOf(fake.port), {
    input: linesOf("hi"),
    output: (line) => shown.push(line),
  });
  assert.deepEqual(shown, ["[server] PONG"]);
});

test("chat leaves after quietMs without a line once the input ended", async () => {
  await using fake = await chatServer(PONG, { hold: true });
  const shown: string[] = [];
  await chat(clientOf(fake.port), {
    input: linesOf("hi"),
    output: (line) => shown.push(line),
    quietMs: 50,
  });
  assert.deepEqual(shown, ["[server] PONG"]);
});

test("chat rejects with the server's error sent after the input ended", async () => {
  await using fake = await chatServer(encodeFrame({
    type: Kind.Error,
    payload: encodeError({ code: "ERR_LINE_TOO_LONG", message: "too long" }),
  }));
  const err = await rejection(chat(clientOf(fake.port), {
    input: linesOf("hi"),
    output: () => {},
  }));
  assert.ok(err instanceof MoatError, String(err));
  assert.equal(err.code, Code.ERR_LINE_TOO_LONG);
});
