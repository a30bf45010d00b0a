/**
 * In-process tests of `lib/server/get.ts`: framed gets served to the real
 * client (`lib/client.ts`) over a memory net, several gets on one
 * connection, resumes, and refusals.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { get } from "../lib/client.ts";
import { createDigest } from "../lib/digest.ts";
import { INTERNAL_MESSAGE, PathError } from "../lib/errors.ts";
import {
  decodeError,
  decodeFileMeta,
  decodeText,
  encodeJson,
  Kind,
} from "../lib/protocol.ts";
import { tempDir, writeRandomFile } from "./_e2e.ts";
import {
  bytes,
  openFramed,
  readAll,
  startMemoryServer,
  type TestServer,
  within,
} from "./_server.ts";

function clientOf(t: TestServer) {
  return {
    net: t.net,
    server: { hostname: "127.0.0.1", port: t.port },
    version: "0.0.0-test",
  };
}

function crc32Hex(data: Uint8Array): string {
  const crc = createDigest("crc32");
  crc.update(data);
  return crc.hex();
}

test("serveGets sends a file the client verifies, and audits it with its CRC-32", async () => {
  await using t = await startMemoryServer();
  using out = tempDir();
  writeRandomFile(path.join(t.root, "data.bin"), 3 << 20, 11);
  const want = fs.readFileSync(path.join(t.root, "data.bin"));
  const target = path.join(out.dir, "data.bin");
  const result = await get(clientOf(t), { path: "data.bin", out: target });
  assert.equal(result.bytes, want.length);
  assert.deepEqual(fs.readFileSync(target), want);
  const done = await t.audit.waitFor(
    (e) => e.event === "get_finished",
    "get_finished",
  );
  assert.equal(done.path, "data.bin");
  assert.equal(done.bytes, want.length);
  assert.equal(done.crc32, crc32Hex(want), "the default digest is CRC-32");
  const started = t.audit.named("get_started")[0]!;
  assert.equal(started.mode, "framed");
  assert.equal(started.offset, 0);
});

test("serveGets reports SHA-256 when the client asks for it", async () => {
  await using t = await startMemoryServer();
  using out = tempDir();
  fs.writeFileSync(path.join(t.root, "notes.txt"), "hello sha\n");
  await get(clientOf(t), {
    path: "notes.txt",
    out: path.join(out.dir, "notes.txt"),
    digest: "sha256",
  });
  const done = await t.audit.waitFor(
    (e) => e.event === "get_finished",
    "get_finished",
  );
  assert.equal(
    done.sha256,
    createHash("sha256").update("hello sha\n").digest("hex"),
  );
  assert.equal(done.crc32, undefined);
});

test("serveGets resumes a part file from its offset", async () => {
  await using t = await startMemoryServer();
  using out = tempDir();
  fs.writeFileSync(path.join(t.root, "f.txt"), "abcdefghij");
  const target = path.join(out.dir, "f.txt");
  fs.writeFileSync(target + ".moat-part", "abcd");
  const result = await get(clientOf(t), {
    path: "f.txt",
    out: target,
    resume: true,
  });
  assert.equal(result.offset, 4);
  assert.equal(fs.readFileSync(target, "utf8"), "abcdefghij");
  const started = await t.audit.waitFor(
    (e) => e.event === "get_started",
    "get_started",
  );
  assert.equal(started.offset, 4);
});

test("serveGets serves several files on one connection, then ends at the client's close", async () => {
  await using t = await startMemoryServer();
  fs.writeFileSync(path.join(t.root, "a.txt"), "first");
  fs.writeFileSync(path.join(t.root, "b.txt"), "second file");
  const client = await openFramed(t, "get");
  for (const [name, text] of [["a.txt", "first"], ["b.txt", "second file"]]) {
    await client.send(
      Kind.Get,
      encodeJson({ path: name, offset: 0, digest: "crc32" }),
    );
    const meta = await within(client.reader.readFrame(), "file metadata");
    assert.equal(meta?.type, Kind.FileMeta);
    const m = decodeFileMeta(meta!.payload);
    assert.equal(m.path, name);
    assert.equal(m.size, text!.length);
    let received = "";
    for (let i = 0; i < 100; i++) {
      const frame = await within(client.reader.readFrame(), "file data");
      assert.ok(frame !== null, "closed mid-file");
      if (frame.type === Kind.FileEnd) {
        assert.equal(
          Buffer.from(frame.payload).toString("hex"),
          crc32Hex(bytes(text!)),
        );
        break;
      }
      assert.equal(frame.type, Kind.FileData);
      received += decodeText(frame.payload);
    }
    assert.equal(received, text);
  }
  client.conn.close();
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "peer closed");
  assert.equal(t.audit.named("get_finished").length, 2);
});

test("serveGets refuses traversal, absolute, missing and non-file paths with one Error frame each", async () => {
  using outside = tempDir();
  fs.writeFileSync(path.join(outside.dir, "secret"), "secret");
  await using t = await startMemoryServer();
  fs.symlinkSync(path.join(outside.dir, "secret"), path.join(t.root, "link"));
  fs.mkdirSync(path.join(t.root, "sub"));
  using out = tempDir();
  const cases: [string, string][] = [
    ["../../etc/passwd", "ERR_OUTSIDE_ROOT"],
    ["/etc/passwd", "ERR_BAD_PATH"],
    ["sub\\..\\..\\x", "ERR_BAD_PATH"],
    ["link", "ERR_OUTSIDE_ROOT"],
    ["sub", "ERR_NOT_FILE"],
    ["missing.txt", "ERR_NOT_FOUND"],
  ];
  for (const [request, code] of cases) {
    await assert.rejects(
      get(clientOf(t), { path: request, out: path.join(out.dir, "x") }),
      (err) => {
        assert.ok(err instanceof PathError, String(err));
        assert.equal(err.code, code, request);
        return true;
      },
    );
  }
  assert.deepEqual(fs.readdirSync(out.dir), []);
  const errors = t.audit.named("error");
  assert.deepEqual(errors.map((e) => e.code), cases.map(([, code]) => code));
  const closed = await t.audit.waitCount(
    (e) => e.event === "closed",
    cases.length,
    "closed",
  );
  assert.ok(closed.every((e) => String(e.reason).startsWith("refused path:")));
});

test("serveGets refuses a resume offset past the end of the file", async () => {
  await using t = await startMemoryServer();
  fs.writeFileSync(path.join(t.root, "short.txt"), "0123456789");
  const client = await openFramed(t, "get");
  await client.send(Kind.Get, encodeJson({ path: "short.txt", offset: 11 }));
  const frame = await within(client.reader.readFrame(), "the refusal");
  assert.equal(frame?.type, Kind.Error);
  assert.deepEqual(decodeError(frame!.payload), {
    code: "ERR_BAD_OFFSET",
    message: 'Resume offset 11 is past the end of "short.txt" (10 bytes)',
  });
});

test("serveGets ends a connection that sends something other than a get", async () => {
  await using t = await startMemoryServer();
  const client = await openFramed(t, "get");
  await client.send(Kind.Chat, bytes("not a get"));
  assert.equal((await readAll(client.conn)).length, 0);
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "Expected a get frame, got type 0x10");
  assert.equal(t.audit.named("error")[0]!.code, "ERR_PROTOCOL");
});

/** A system error as node:fs makes it: its message names a server path. */
function systemError(code: string, file: string): Error {
  return Object.assign(
    new Error(`${code}: too many open files, open '${file}'`),
    { code, errno: -24, syscall: "open", path: file },
  );
}

test("serveFile tells a peer ERR_INTERNAL for a system error naming a server path, and keeps the path in the audit log", async () => {
  let secretPath = "";
  await using t = await startMemoryServer({
    wrapJail: (jail) => ({
      root: jail.root,
      open: (requestPath) => {
        secretPath = path.join(jail.root, requestPath);
        return Promise.reject(systemError("EMFILE", secretPath));
      },
    }),
  });
  const framed = await openFramed(t, "get");
  await framed.send(Kind.Get, encodeJson({ path: "a.txt", offset: 0 }));
  const frame = await within(framed.reader.readFrame(), "the refusal");
  assert.equal(frame?.type, Kind.Error);
  const body = decodeError(frame!.payload);
  assert.deepEqual(body, { code: "ERR_INTERNAL", message: INTERNAL_MESSAGE });
  assert.ok(!decodeText(frame!.payload).includes(t.root));

  const plain = await t.connect();
  await plain.write(bytes("FILE:b.txt\n"));
  const line = decodeText(await readAll(plain));
  assert.equal(line, `ERR INTERNAL ${INTERNAL_MESSAGE}\n`);
  assert.ok(!line.includes(t.root));

  // The operator still sees what happened, path and all.
  const errors = await t.audit.waitCount(
    (e) => e.event === "error" && e.code === "EMFILE",
    2,
    "the errors",
  );
  assert.ok(errors.every((e) => String(e.message).includes(t.root)));
  assert.ok(String(errors[1]!.message).includes(secretPath));
});
