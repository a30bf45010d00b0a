// lib/segment: one record check for every reader. The in-memory scan used by
// verify, the file scanner used by recovery and the spool, and readSegment
// must agree, record for record, on where valid data stops, whatever the
// damage.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import fs from "node:fs";
import { open } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import {
  checkRecord,
  checkSegmentHeader,
  encodeSegmentHeader,
  finishRecord,
  getU64,
  scanSegment,
  segmentName,
} from "../lib/segment/codec.ts";
import { CommitGroup } from "../lib/segment/commit_group.ts";
import { crc32c } from "../lib/segment/crc32c.ts";
import { SegmentLog } from "../lib/segment/log.ts";
import {
  listSegments,
  readSegment,
  SegmentScanner,
} from "../lib/segment/scanner.ts";
import { seededRandom } from "./_test_utils.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-segment-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

const MAGIC = Uint8Array.of(0x89, ...new TextEncoder().encode("MOATTST"));
const KIND = 7;

function record(seq: number, size: number): Uint8Array {
  const bytes = new Uint8Array(20 + size);
  for (let i = 20; i < bytes.length; i++) bytes[i] = (seq * 31 + i) & 0xff;
  finishRecord(bytes, { kind: KIND, flags: 0, seq });
  return bytes;
}

function segment(first: number, sizes: number[]): Uint8Array {
  const parts = [
    encodeSegmentHeader(MAGIC, first),
    ...sizes.map((n, i) => record(first + i, n)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** What the file scanner makes of a file: records and where it stopped. */
async function scanFile(
  file: string,
  firstSeq: number,
): Promise<{ seqs: number[]; end: number }> {
  const handle = await open(file, "r");
  try {
    const size = (await handle.stat()).size;
    const scanner = new SegmentScanner(handle, {
      kind: KIND,
      nextSeq: firstSeq,
      readBytes: 64,
    });
    const seqs: number[] = [];
    while (true) {
      const batch = await scanner.read(size, 100);
      if (batch.length === 0) break;
      seqs.push(...batch.map((r) => r.seq));
    }
    return { seqs, end: scanner.offset };
  } finally {
    await handle.close();
  }
}

/** CRC-32C one bit at a time: the reference the table-driven one must match. */
function bitwiseCrc32c(bytes: Uint8Array, start: number, end: number): number {
  let crc = 0xffffffff;
  for (let i = start; i < end; i++) {
    crc ^= bytes[i]!;
    for (let k = 0; k < 8; k++) {
      crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
    }
  }
  return (crc ^ 0xffffffff) >>> 0;
}

test("crc32c matches the bitwise definition for every length and offset up to 40 bytes", () => {
  const bytes = new Uint8Array(80);
  const random = seededRandom(17);
  for (let i = 0; i < bytes.length; i++) bytes[i] = random(256);
  for (let start = 0; start < 20; start++) {
    for (let end = start; end <= start + 40; end++) {
      assert.equal(
        crc32c(bytes, start, end),
        bitwiseCrc32c(bytes, start, end),
        `[${start}, ${end})`,
      );
    }
  }
  assert.equal(crc32c(bytes), bitwiseCrc32c(bytes, 0, bytes.length));
  assert.equal(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
});

test("crc32c gives the same unsigned result for a Buffer, a Uint8Array and views at an offset, over any subrange", () => {
  // The server checksums plain Uint8Arrays it built and Buffers node:fs
  // read, whole and as subarrays; the signed table must still give
  // unsigned results (the check value is above 2^31).
  const random = seededRandom(23);
  const plain = new Uint8Array(600);
  for (let i = 0; i < plain.length; i++) plain[i] = random(256);
  const buffer = Buffer.from(plain);
  const backing = new Uint8Array(plain.length + 13);
  backing.set(plain, 13);
  const offsetView = backing.subarray(13);
  const offsetBuffer = Buffer.from(backing.buffer, 13, plain.length);
  let aboveSign = 0;
  for (let start = 0; start < 40; start += 3) {
    for (let end = start; end <= plain.length; end += 7) {
      const want = bitwiseCrc32c(plain, start, end);
      if (want >= 2 ** 31) aboveSign++;
      for (const bytes of [plain, buffer, offsetView, offsetBuffer]) {
        assert.equal(crc32c(bytes, start, end), want, `[${start}, ${end})`);
        assert.equal(
          crc32c(bytes.subarray(start, end)),
          want,
          `subarray [${start}, ${end})`,
        );
      }
    }
    assert.equal(crc32c(buffer, start), bitwiseCrc32c(plain, start, 600));
  }
  assert.ok(aboveSign > 100, `${aboveSign} results at or above 2^31`);
  assert.equal(
    crc32c(Buffer.from("xx123456789"), 2),
    0xe3069283,
  );
});

describe("segment readers", () => {
  test("scanSegment, SegmentScanner and readSegment agree on 400 damaged segments", async () => {
    const random = seededRandom(7);
    const file = path.join(base, segmentName(5));
    for (let n = 0; n < 400; n++) {
      const sizes = Array.from({ length: 1 + random(12) }, () => random(90));
      const bytes = segment(5, sizes);
      const damage = random(3);
      if (damage === 0) {
        bytes[random(bytes.length)]! ^= 1 << random(8);
      } else if (damage === 1) {
        fs.writeFileSync(file, bytes.subarray(0, random(bytes.length + 1)));
      }
      if (damage !== 1) fs.writeFileSync(file, bytes);
      const written = fs.readFileSync(file);
      const mem = scanSegment(written, {
        magic: MAGIC,
        kind: KIND,
        firstSeq: 5,
      });
      const seqs = mem.records.map((r) => r.seq);
      const read: number[] = [];
      for await (
        const batch of readSegment(file, {
          magic: MAGIC,
          kind: KIND,
          firstSeq: 5,
          last: true,
        })
      ) {
        read.push(...batch.map((r) => r.seq));
      }
      assert.deepEqual(read, seqs, `case ${n}`);
      if (mem.stop?.kind !== "header") {
        const scanned = await scanFile(file, 5);
        assert.deepEqual(scanned.seqs, seqs, `case ${n}`);
        assert.equal(scanned.end, Math.max(mem.end, 32), `case ${n}`);
      }
      assert.equal(mem.stop === undefined, mem.end === written.length);
    }
  });

  test("SegmentScanner.skipWhile passes over records by their headers alone, and read checks the rest in full", async () => {
    const random = seededRandom(13);
    const file = path.join(base, segmentName(5));
    // Reference: skipped records need only a sound length, kind and
    // sequence number; from the first one kept, every check applies.
    const reference = (bytes: Uint8Array, below: number): number[] => {
      if (checkSegmentHeader(bytes, { magic: MAGIC, firstSeq: 5 })) return [];
      const view = new DataView(bytes.buffer, bytes.byteOffset);
      let at = 32;
      let seq = 5;
      while (at + 20 <= bytes.length && seq < below) {
        const length = view.getUint32(at + 4, true);
        if (
          length < 20 || at + length > bytes.length || bytes[at + 8] !== KIND ||
          getU64(view, at + 12) !== seq
        ) break;
        at += length;
        seq++;
      }
      const out: number[] = [];
      while (at < bytes.length) {
        const length = checkRecord(bytes, at, { kind: KIND, seq });
        if (typeof length !== "number") break;
        out.push(seq++);
        at += length;
      }
      return out;
    };
    for (let n = 0; n < 300; n++) {
      const sizes = Array.from({ length: 1 + random(12) }, () => random(90));
      let bytes = segment(5, sizes);
      const damage = random(3);
      if (damage === 0) {
        bytes[32 + random(bytes.length - 32)]! ^= 1 << random(8);
      }
      if (damage === 1) {
        bytes = bytes.subarray(0, 32 + random(bytes.length - 31));
      }
      fs.writeFileSync(file, bytes);
      const below = 5 + random(sizes.length + 2);
      const handle = await open(file, "r");
      const seqs: number[] = [];
      try {
        const scanner = new SegmentScanner(handle, {
          kind: KIND,
          nextSeq: 5,
          readBytes: 64,
        });
        await scanner.skipWhile(bytes.length, {
          peek: 20,
          skip: (view, at) => getU64(view, at + 12) < below,
        });
        while (true) {
          const batch = await scanner.read(bytes.length, 100);
          if (batch.length === 0) break;
          seqs.push(...batch.map((r) => r.seq));
        }
      } finally {
        await handle.close();
      }
      assert.deepEqual(seqs, reference(bytes, below), `case ${n}`);
    }
  });

  test("checkRecord tells a torn record from a damaged one", () => {
    const bytes = record(3, 10);
    assert.equal(checkRecord(bytes, 0, { kind: KIND, seq: 3 }), 30);
    assert.equal(
      (checkRecord(bytes.subarray(0, 29), 0, { kind: KIND, seq: 3 }) as {
        kind: string;
      }).kind,
      "incomplete",
    );
    assert.deepEqual(checkRecord(bytes, 0, { kind: KIND, seq: 4 }), {
      kind: "sequence",
      reason: "record 3 is stored where 4 is due",
    });
    assert.deepEqual(checkRecord(bytes, 0, { kind: KIND + 1, seq: 3 }), {
      kind: "damaged",
      reason: `record kind ${KIND} is unexpected`,
    });
    const flipped = bytes.slice();
    flipped[25]! ^= 1;
    assert.equal(
      (checkRecord(flipped, 0, { kind: KIND, seq: 3 }) as { kind: string })
        .kind,
      "damaged",
    );
  });

  test("SegmentLog.open cuts a segment where scanSegment says valid data stops", async () => {
    const random = seededRandom(11);
    for (let n = 0; n < 40; n++) {
      const dir = path.join(base, `log${n}`);
      fs.mkdirSync(dir);
      const bytes = segment(1, Array.from({ length: 6 }, () => random(50)));
      const cut = 32 + random(bytes.length - 32);
      bytes[cut]! ^= 0x40;
      const file = path.join(dir, segmentName(1));
      fs.writeFileSync(file, bytes);
      const mem = scanSegment(bytes, { magic: MAGIC, kind: KIND, firstSeq: 1 });
      const log = await SegmentLog.open(dir, {
        magic: MAGIC,
        kind: KIND,
        segmentBytes: 1 << 20,
        group: new CommitGroup(),
      });
      await log.close();
      if (mem.records.length === 0) {
        assert.deepEqual(await listSegments(dir), [], `case ${n}`);
      } else {
        assert.equal(log.durableSeq, mem.records.length, `case ${n}`);
        assert.equal(fs.statSync(file).size, mem.end, `case ${n}`);
      }
    }
  });
});
