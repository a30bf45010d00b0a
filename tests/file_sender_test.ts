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
  PART_SUFFIX,
  prepareDownload,
  receiveFile,
  sendFile,
} from "../lib/file_sender.ts";
import { FrameReader } from "../lib/framer.ts";
import { createJail } from "../lib/jail.ts";
import { decodeFileMeta, Kind } from "../lib/protocol.ts";
import {
  ConnectionClosedError,
  IntegrityError,
  ProtocolError,
} from "../lib/errors.ts";

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
  const cache = new DigestCache(1);
  const f = await jail.open("a");
  assert.equal(cache.get(f, "sha256"), undefined);
  cache.set(f, "sha256", "x".repeat(64));
  assert.equal(cache.get(f, "sha256"), "x".repeat(64));
  assert.equal(cache.get(f, "crc32"), undefined, "keyed by digest name");
  const r = await sendFile(memorySink(), f, { cache, digest: "sha256" });
  assert.equal(r.digest, "x".repeat(64), "cached digest used");
  f.close();
  fs.writeFileSync(path.join(t.dir, "b"), "def");
  const g = await jail.open("b");
  cache.set(g, "sha256", "y".repeat(64));
  g.close();
  const f2 = await jail.open("a");
  assert.equal(cache.get(f2, "sha256"), undefined, "evicted");
  f2.close();
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
