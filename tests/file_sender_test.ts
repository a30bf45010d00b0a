import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createHash } from "node:crypto";
import * as zlib from "node:zlib";
import type { DigestName } from "../lib/digest.ts";
import {
  DigestCache,
  type FileStamp,
  PART_SUFFIX,
  partPathOf,
  prepareDownload,
  readStamp,
  receiveFile,
  sendFile,
} from "../lib/file_sender.ts";
import { encodeFrame, FrameReader } from "../lib/framer.ts";
import { createJail } from "../lib/jail.ts";
import { decodeFileMeta, encodeError, Kind } from "../lib/protocol.ts";
import {
  Code,
  ConnectionClosedError,
  IntegrityError,
  MoatError,
  ProtocolError,
  toErrorBody,
} from "../lib/errors.ts";
import { rawControl } from "../soak/hostile.ts";

function tmp() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-fs-"));
  return {
    dir,
    [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

/** Collects what sendFile writes. */
function memorySink() {
  const chunks: Uint8Array[] = [];
  return {
    chunks,
    write(bytes: Uint8Array) {
      chunks.push(bytes.slice());
      return Promise.resolve();
    },
    bytes(): Uint8Array {
      const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.length;
      }
      return out;
    },
  };
}

/** A ByteSource over a byte array, handing out `step` bytes per read. */
function source(bytes: Uint8Array, step = 7777) {
  let at = 0;
  return {
    read(buf: Uint8Array) {
      if (at >= bytes.length) return Promise.resolve(null);
      const n = Math.min(step, buf.length, bytes.length - at);
      buf.set(bytes.subarray(at, at + n));
      at += n;
      return Promise.resolve(n);
    },
  };
}

async function roundTrip(
  content: Uint8Array,
  opts: {
    offset?: number;
    mutate?: (wire: Uint8Array) => Uint8Array;
    chunkSize?: number;
    /** Digest the server sends. */
    digest?: DigestName;
    /** Digest the client asks for (default: the one sent). */
    want?: DigestName;
  } = {},
) {
  using t = tmp();
  const root = path.join(t.dir, "root");
  fs.mkdirSync(root);
  fs.writeFileSync(path.join(root, "f.bin"), content);
  const out = path.join(t.dir, "out.bin");
  if (opts.offset) {
    fs.writeFileSync(out + PART_SUFFIX, content.subarray(0, opts.offset));
  }
  const jail = await createJail(root);
  const file = await jail.open("f.bin");
  const sink = memorySink();
  const sent = await sendFile(sink, file, {
    offset: opts.offset ?? 0,
    chunkSize: opts.chunkSize ?? 4096,
    cache: new DigestCache(),
    digest: opts.digest ?? "sha256",
  });
  file.close();
  let wire = sink.bytes();
  if (opts.mutate) wire = opts.mutate(wire);
  const reader = new FrameReader(source(wire), { bufferSize: 8192 });
  const head = await reader.readFrame();
  assert.equal(head!.type, Kind.FileMeta);
  const download = prepareDownload(out, {
    resume: (opts.offset ?? 0) > 0,
    digest: opts.want ?? opts.digest ?? "sha256",
  });
  try {
    const got = await receiveFile(
      reader,
      download,
      decodeFileMeta(head!.payload),
    );
    return {
      sent,
      got,
      out: fs.readFileSync(out),
      part: fs.existsSync(out + PART_SUFFIX),
    };
  } catch (err) {
    return {
      sent,
      err,
      exists: fs.existsSync(out),
      part: fs.existsSync(out + PART_SUFFIX),
    };
  }
}

const content = new Uint8Array(100_003).map((_, i) => (i * 31 + 7) & 0xff);
const expected: Record<DigestName, string> = {
  sha256: createHash("sha256").update(content).digest("hex"),
  // An independent CRC-32: the digest module's output is checked, not echoed.
  crc32: zlib.crc32(content).toString(16).padStart(8, "0"),
};

for (const digest of ["crc32", "sha256"] as const) {
  test(`sendFile and receiveFile move a file intact in chunks with ${digest}, renaming only at the end`, async () => {
    const r = await roundTrip(content, { digest });
    assert.ok("got" in r && r.got, String("err" in r ? r.err : ""));
    assert.equal(r.sent.digestName, digest);
    assert.equal(r.sent.digest, expected[digest]);
    assert.equal(r.got.digest, expected[digest]);
    assert.deepEqual(r.out, Buffer.from(content));
    assert.equal(r.part, false);
  });

  test(`receiveFile resumes from a part file and still verifies the whole file with ${digest}`, async () => {
    const r = await roundTrip(content, { offset: 54_321, digest });
    assert.ok("got" in r && r.got);
    assert.equal(r.got.bytes, content.length - 54_321);
    assert.equal(r.got.digest, expected[digest]);
    assert.deepEqual(r.out, Buffer.from(content));
  });

  test(`receiveFile refuses a flipped byte with ${digest}: IntegrityError, no target, no part`, async () => {
    for (const at of [1000, 40_000, 90_000]) {
      const r = await roundTrip(content, {
        digest,
        mutate: (w) => {
          const c = w.slice();
          c[c.length - at]! ^= 1;
          return c;
        },
      });
      assert.ok(
        "err" in r && r.err instanceof IntegrityError,
        String("err" in r && r.err),
      );
      assert.match(String(r.err), new RegExp(`${digest} mismatch`));
      assert.equal(r.exists, false);
      assert.equal(r.part, false);
    }
  });
}

test("receiveFile refuses a digest other than the one asked for, and a file end of the wrong size", async () => {
  const other = await roundTrip(content, { digest: "sha256", want: "crc32" });
  assert.ok(
    "err" in other && other.err instanceof ProtocolError,
    String("err" in other && other.err),
  );
  assert.match(
    String(other.err),
    /announced a sha256 digest, crc32 was asked for/,
  );
  assert.equal(other.exists, false);
  // A FileEnd cut to 4 bytes while FileMeta still says sha256.
  const short = await roundTrip(content, {
    digest: "sha256",
    mutate: (w) => {
      const c = w.slice(0, w.length - 28);
      new DataView(c.buffer).setUint32(c.length - 4 - 4, 4);
      return c;
    },
  });
  assert.ok(
    "err" in short && short.err instanceof ProtocolError,
    String("err" in short && short.err),
  );
  assert.match(String(short.err), /carries 4 bytes, a sha256 digest has 32/);
  assert.equal(short.exists, false);
});

test("receiveFile keeps the part of a cut transfer for --resume and never creates the target", async () => {
  for (const cut of [200, 5000, 60_000, 100_100]) {
    const r = await roundTrip(content, {
      mutate: (w) => w.subarray(0, Math.min(cut, w.length - 40)),
    });
    assert.ok(
      "err" in r && r.err instanceof ConnectionClosedError,
      `cut ${cut}: ${"err" in r && r.err}`,
    );
    assert.equal(r.exists, false);
    assert.equal(r.part, true);
  }
});

test("DigestCache serves a second send without rehashing and forgets the oldest", async () => {
  using t = tmp();
  fs.writeFileSync(path.join(t.dir, "a"), "abc");
  const jail = await createJail(t.dir);
  // A clock a minute ahead: the files just written count as settled.
  const cache = new DigestCache({ limit: 1, now: () => Date.now() + 60_000 });
  const f = await jail.open("a");
  assert.equal(cache.get(readStamp(f.fd), "sha256"), undefined);
  // A made-up digest, as hex: the sender turns it into FileEnd's bytes.
  cache.set(readStamp(f.fd), "sha256", "ab".repeat(32));
  assert.equal(cache.get(readStamp(f.fd), "sha256"), "ab".repeat(32));
  assert.equal(
    cache.get(readStamp(f.fd), "crc32"),
    undefined,
    "keyed by digest name",
  );
  const r = await sendFile(memorySink(), f, { cache, digest: "sha256" });
  assert.equal(r.digest, "ab".repeat(32), "cached digest used");
  f.close();
  fs.writeFileSync(path.join(t.dir, "b"), "def");
  const g = await jail.open("b");
  cache.set(readStamp(g.fd), "sha256", "cd".repeat(32));
  g.close();
  const f2 = await jail.open("a");
  assert.equal(cache.get(readStamp(f2.fd), "sha256"), undefined, "evicted");
  f2.close();
});

test("DigestCache keys on the whole stamp: identity, size, mtime and ctime", () => {
  const now = Date.now();
  const cache = new DigestCache({ now: () => now });
  const base: FileStamp = {
    dev: 1n,
    ino: 2n,
    size: 3n,
    mtimeNs: BigInt(now - 10_000) * 1_000_000n,
    ctimeNs: BigInt(now - 10_000) * 1_000_000n,
  };
  cache.set(base, "crc32", "0000000a");
  assert.equal(cache.get({ ...base }, "crc32"), "0000000a");
  for (const field of ["dev", "ino", "size", "mtimeNs", "ctimeNs"] as const) {
    const other = { ...base, [field]: base[field] + 1n };
    assert.equal(cache.get(other, "crc32"), undefined, field);
  }
});

test("DigestCache keeps nothing for a file changed in the last 2 s", () => {
  const now = Date.now();
  const cache = new DigestCache({ now: () => now });
  const stamp = (ageMs: number): FileStamp => ({
    dev: 1n,
    ino: BigInt(ageMs),
    size: 3n,
    mtimeNs: BigInt(now - ageMs) * 1_000_000n,
    ctimeNs: BigInt(now - ageMs) * 1_000_000n,
  });
  for (const age of [0, 1000, 1999]) {
    cache.set(stamp(age), "crc32", "0000000a");
    assert.equal(cache.get(stamp(age), "crc32"), undefined, `${age} ms`);
  }
  for (const age of [2000, 60_000]) {
    cache.set(stamp(age), "crc32", "0000000a");
    assert.equal(cache.get(stamp(age), "crc32"), "0000000a", `${age} ms`);
  }
});

test("sendFile with a DigestCache sends the new digest after a same-size rewrite that puts the mtime back", async () => {
  using t = tmp();
  const file = path.join(t.dir, "a");
  const times = 1_600_000_000; // whole seconds: put back exactly on every runtime
  fs.writeFileSync(file, "first version");
  fs.utimesSync(file, times, times);
  const jail = await createJail(t.dir);
  const cache = new DigestCache();
  for (const digest of ["crc32", "sha256"] as const) {
    fs.writeFileSync(file, "first version");
    fs.utimesSync(file, times, times);
    const f1 = await jail.open("a");
    const stamp1 = readStamp(f1.fd);
    const r1 = await sendFile(memorySink(), f1, { cache, digest });
    f1.close();
    fs.writeFileSync(file, "other version");
    fs.utimesSync(file, times, times);
    const f2 = await jail.open("a");
    const stamp2 = readStamp(f2.fd);
    const r2 = await sendFile(memorySink(), f2, { cache, digest });
    f2.close();
    // The rewrite kept what the old cache key looked at.
    assert.equal(stamp2.size, stamp1.size);
    assert.equal(stamp2.mtimeNs, stamp1.mtimeNs);
    assert.equal(stamp2.ino, stamp1.ino);
    const hash = (s: string) =>
      digest === "sha256"
        ? createHash("sha256").update(s).digest("hex")
        : zlib.crc32(s).toString(16).padStart(8, "0");
    assert.equal(r1.digest, hash("first version"), digest);
    assert.equal(r2.digest, hash("other version"), digest);
  }
});

/**
 * A sink that holds its `at`-th write until `between()` has run: the sender
 * is then paused with its file open, mid-transfer.
 */
function pausingSink(at: number, between: () => void) {
  const sink = memorySink();
  let writes = 0;
  return {
    ...sink,
    async write(bytes: Uint8Array) {
      if (++writes === at) {
        await Promise.resolve();
        between();
      }
      return sink.write(bytes);
    },
  };
}

/** The frame types in `wire`, in order. */
function frameTypes(wire: Uint8Array): number[] {
  const types: number[] = [];
  const view = new DataView(wire.buffer, wire.byteOffset, wire.byteLength);
  for (let at = 0; at + 5 <= wire.length && types.length < 10_000;) {
    types.push(wire[at]!);
    at += 5 + view.getUint32(at + 1);
  }
  return types;
}

/** Writes `content` into `file` and dates it a day back, so a change now shows in its mtime. */
function writeOld(file: string, content: Uint8Array) {
  fs.writeFileSync(file, content);
  const day = Date.now() / 1000 - 86_400;
  fs.utimesSync(file, day, day);
}

/**
 * Rewrites, in place, bytes the sender has sent (the first chunk) and bytes
 * it has yet to read: what it sends is then neither version.
 */
function rewriteHeadAndTail(file: string) {
  const fd = fs.openSync(file, "r+");
  fs.writeSync(fd, new Uint8Array(1000).fill(0xee), 0, 1000, 0);
  fs.writeSync(fd, new Uint8Array(1000).fill(0xee), 0, 1000, 99_000);
  fs.closeSync(fd);
}

const rewrites: [string, (file: string) => void][] = [
  ["rewritten in place at the same size", rewriteHeadAndTail],
  ["appended to", (file) => fs.appendFileSync(file, "more")],
  ["truncated and written again", (file) => fs.writeFileSync(file, content)],
  ["cut short", (file) => fs.truncateSync(file, 50_000)],
];

for (const [what, rewrite] of rewrites) {
  test(`sendFile ends with ERR_FILE_CHANGED, not FileEnd, when the file is ${what} during the send, and receiveFile keeps nothing`, async () => {
    using t = tmp();
    const file = path.join(t.dir, "f.bin");
    writeOld(file, content);
    const jail = await createJail(t.dir);
    const opened = await jail.open("f.bin");
    // Write 1 is FileMeta, write 2 the first FileData: rewrite between them.
    const sink = pausingSink(2, () => rewrite(file));
    const err = await sendFile(sink, opened, {
      chunkSize: 4096,
      digest: "crc32",
      cache: new DigestCache({ now: () => Date.now() + 60_000 }),
    }).then(() => undefined, (e: unknown) => e);
    opened.close();
    assert.ok(
      err instanceof MoatError && err.code === Code.ERR_FILE_CHANGED,
      String(err),
    );
    assert.match(
      err.message,
      /^File "f\.bin" (changed|shrank) while being sent/,
    );
    const types = frameTypes(sink.bytes());
    assert.equal(types[0], Kind.FileMeta);
    assert.ok(!types.includes(Kind.FileEnd), "no FileEnd after a change");
    // What the server then sends, and what the client makes of it.
    const wire = new Uint8Array([
      ...sink.bytes(),
      ...encodeFrame({
        type: Kind.Error,
        payload: encodeError(toErrorBody(err)),
      }),
    ]);
    const out = path.join(t.dir, "out.bin");
    const reader = new FrameReader(source(wire), { bufferSize: 8192 });
    const head = await reader.readFrame();
    {
      await using download = prepareDownload(out, { digest: "crc32" });
      await assert.rejects(
        receiveFile(reader, download, decodeFileMeta(head!.payload)),
        (e: unknown) =>
          e instanceof MoatError && e.code === Code.ERR_FILE_CHANGED &&
          /^Server error: File "f\.bin" (changed|shrank)/.test(e.message),
      );
      assert.equal(fs.existsSync(partPathOf(out)), false, "part removed");
    }
    assert.equal(fs.existsSync(out), false, "no final file");
  });
}

test("sendFile refuses a file that changed between open and send, before writing anything", async () => {
  using t = tmp();
  const file = path.join(t.dir, "f.bin");
  writeOld(file, content);
  const jail = await createJail(t.dir);
  const opened = await jail.open("f.bin");
  fs.appendFileSync(file, "x");
  const sink = memorySink();
  await assert.rejects(
    sendFile(sink, opened),
    (e: unknown) => e instanceof MoatError && e.code === Code.ERR_FILE_CHANGED,
  );
  opened.close();
  assert.equal(sink.chunks.length, 0);
});

/** Whether this runtime shows a file's ctime finer than whole seconds (Deno does not). */
function ctimeIsFine(dir: string): boolean {
  const file = path.join(dir, "probe");
  for (let i = 0; i < 3; i++) {
    fs.writeFileSync(file, String(i));
    const { ctimeNs } = fs.statSync(file, { bigint: true });
    if (ctimeNs % 1_000_000_000n !== 0n) return true;
  }
  return false;
}

const fineCtime = (() => {
  using t = tmp();
  return ctimeIsFine(t.dir);
})();

for (
  const [what, change] of [
    ["another file is renamed over its path", (file: string) => {
      fs.writeFileSync(file + ".new", new Uint8Array(content.length));
      fs.renameSync(file + ".new", file);
    }],
    ["it is renamed", (file: string) => fs.renameSync(file, file + ".1")],
    ["its mode changes", (file: string) => fs.chmodSync(file, 0o600)],
  ] as const
) {
  test(`sendFile sends the open file whole when ${what} during the send`, async () => {
    using t = tmp();
    const file = path.join(t.dir, "f.bin");
    writeOld(file, content);
    const jail = await createJail(t.dir);
    const opened = await jail.open("f.bin");
    const before = readStamp(opened.fd);
    const sink = pausingSink(2, () => change(file));
    const r = await sendFile(sink, opened, {
      chunkSize: 4096,
      digest: "crc32",
    });
    // The change time moved (seen where the runtime shows it finer than a
    // second), and the content, read again, said the file was the same.
    const after = readStamp(opened.fd);
    assert.equal(after.mtimeNs, before.mtimeNs);
    if (fineCtime) assert.notEqual(after.ctimeNs, before.ctimeNs);
    opened.close();
    assert.equal(r.digest, expected.crc32, "the file as opened, whole");
    assert.equal(frameTypes(sink.bytes()).at(-1), Kind.FileEnd);
  });
}

test(
  "sendFile ends with ERR_FILE_CHANGED when the file is rewritten at the same size with its mtime put back during the send",
  {
    skip: !fineCtime && "this runtime shows ctime in whole seconds",
  },
  async () => {
    using t = tmp();
    const file = path.join(t.dir, "f.bin");
    // Whole seconds, so utimes puts the mtime back exactly.
    const when = 1_600_000_000;
    fs.writeFileSync(file, content);
    fs.utimesSync(file, when, when);
    const jail = await createJail(t.dir);
    const opened = await jail.open("f.bin");
    const before = readStamp(opened.fd);
    const sink = pausingSink(2, () => {
      rewriteHeadAndTail(file);
      fs.utimesSync(file, when, when);
    });
    const err = await sendFile(sink, opened, {
      chunkSize: 4096,
      digest: "crc32",
    })
      .then(() => undefined, (e: unknown) => e);
    const after = readStamp(opened.fd);
    opened.close();
    assert.equal(after.mtimeNs, before.mtimeNs, "mtime put back");
    assert.equal(after.size, before.size);
    assert.ok(
      err instanceof MoatError && err.code === Code.ERR_FILE_CHANGED,
      String(err),
    );
    assert.ok(!frameTypes(sink.bytes()).includes(Kind.FileEnd));
  },
);

test("receiveFile shows a server's mid-transfer error escaped and keeps the part for --resume", async () => {
  using t = tmp();
  const meta = {
    path: "x",
    size: 1000,
    offset: 0,
    mtimeMs: 0,
    digest: "crc32" as const,
  };
  const evil = "\x1b[2J\x07\rgone\u202e\n";
  const wire = new Uint8Array([
    ...encodeFrame({ type: Kind.FileData, payload: new Uint8Array(300) }),
    ...encodeFrame({
      type: Kind.Error,
      payload: encodeError({ code: "ERR_INTERNAL", message: evil }),
    }),
  ]);
  const out = path.join(t.dir, "out.bin");
  {
    await using download = prepareDownload(out, { digest: "crc32" });
    const err = await receiveFile(
      new FrameReader(source(wire)),
      download,
      meta,
    ).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof MoatError && err.code === Code.ERR_INTERNAL);
    assert.equal(rawControl(err.message), undefined, err.message);
    assert.equal(err.message, "Server error: \\e[2J\\x07\\rgone\\u{202e}\\n");
  }
  assert.equal(fs.statSync(partPathOf(out)).size, 300, "kept for --resume");
});

test("Download removes its part when disposed uncommitted, unless kept", async () => {
  using t = tmp();
  const out = path.join(t.dir, "x");
  {
    await using d = prepareDownload(out);
    fs.writeSync(d.fd, new Uint8Array(5));
    assert.ok(fs.existsSync(d.partPath));
  }
  assert.equal(fs.existsSync(partPathOf(out)), false);
  {
    await using d = prepareDownload(out);
    fs.writeSync(d.fd, new Uint8Array(5));
    d.keep();
  }
  assert.equal(fs.statSync(partPathOf(out)).size, 5);
  {
    await using d = prepareDownload(out, { resume: true });
    assert.equal(d.offset, 5);
    fs.writeSync(d.fd, new Uint8Array(2), 0, 2, 5);
    d.commit();
    assert.equal(d.committed, true);
  }
  assert.equal(fs.statSync(out).size, 7, "the committed target stays");
  assert.equal(fs.existsSync(partPathOf(out)), false);
});

test("partPathOf puts the part beside the target", () => {
  assert.equal(partPathOf("/tmp/a.log"), "/tmp/a.log" + PART_SUFFIX);
  assert.equal(partPathOf("a"), "a.moat-part");
});

test("prepareDownload refuses to overwrite without force", () => {
  using t = tmp();
  const out = path.join(t.dir, "x");
  fs.writeFileSync(out, "keep");
  assert.throws(() => prepareDownload(out), /Refusing to overwrite/);
  const d = prepareDownload(out, { force: true });
  d.discard();
  assert.equal(fs.readFileSync(out, "utf8"), "keep");
});
