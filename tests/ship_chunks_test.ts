// The sender's path through the spool: records appended by this process
// come from memory once, everything else from disk, checked; either way the
// same records, framed as encodeShipBatch frames them; and the positions a
// trim saves come from memory or disk alike.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  decodeSpoolChunk,
  openSpool,
  type OpenSpoolOptions,
  type Spool,
  type SpoolChunk,
  type SpoolLine,
} from "../lib/ship/spool.ts";
import { shipFrames } from "../lib/ship/frames.ts";
import { decodeHeader, HEADER_SIZE } from "../lib/framer.ts";
import { encodeShipBatch, Kind } from "../lib/protocol.ts";
import { readShipState } from "../lib/ship/state.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-chunks-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

let counter = 0;
function open(options: Partial<OpenSpoolOptions> = {}): Promise<Spool> {
  const file = path.join(base, `s${counter++}`, "ship.json");
  return openSpool(file, { source: "web1", checkpointMs: 10, ...options });
}

const te = new TextEncoder();
const td = new TextDecoder();

/** Lines `from`..`to`, of varied lengths, one partial. */
function lines(from: number, to: number, ino = 7): SpoolLine[] {
  const out: SpoolLine[] = [];
  for (let n = from; n <= to; n++) {
    out.push({
      line: te.encode(`line ${n} ${"x".repeat(n % 13)}`),
      dev: 1,
      ino,
      offset: n * 100,
      ts: 2 ** 40 + n,
      partial: n % 5 === 0,
    });
  }
  return out;
}

async function take(spool: Spool, from: number): Promise<SpoolChunk[]> {
  return (await Array.fromAsync(spool.chunks(from))).flat();
}

function text(chunks: SpoolChunk[]): string[] {
  return chunks.flatMap((c) =>
    decodeSpoolChunk(c).map((r) =>
      `${r.seq} ${r.ts} ${r.partial} ${td.decode(r.line)}`
    )
  );
}

function expected(from: number, to: number, seq = from): string[] {
  return lines(from, to).map((l, i) =>
    `${seq + i} ${l.ts} ${l.partial === true} ${td.decode(l.line)}`
  );
}

describe("Spool.chunks", () => {
  test("Spool.chunks gives appends from memory once, then reads the same from disk", async () => {
    const spool = await open();
    const input = await spool.input("/a");
    await spool.append(input.id, lines(1, 3));
    await spool.append(input.id, lines(4, 4));
    await spool.append(input.id, lines(5, 9));
    const fromMemory = await take(spool, 1);
    // One chunk per append: the bytes written, not read back.
    assert.deepEqual(fromMemory.map((c) => [c.firstSeq, c.lastSeq]), [
      [1, 3],
      [4, 4],
      [5, 9],
    ]);
    assert.deepEqual(text(fromMemory), expected(1, 9));
    // Taken: a second reader (a reconnect) reads them back in one piece.
    const fromDisk = await take(spool, 1);
    assert.deepEqual(fromDisk.map((c) => [c.firstSeq, c.lastSeq]), [[1, 9]]);
    assert.deepEqual(text(fromDisk), expected(1, 9));
    assert.deepEqual(
      Buffer.concat(fromDisk.map((c) => c.bytes)),
      Buffer.concat(fromMemory.map((c) => c.bytes)),
    );
    await spool.close();
  });

  test("Spool.chunks starts inside an append and mixes kept and read records in order", async () => {
    // Room for the first two appends only: the third is read from disk.
    const probe = await open();
    const id = (await probe.input("/a")).id;
    await probe.append(id, lines(1, 4));
    const size = (await take(probe, 1))[0]!.bytes.length;
    await probe.close();
    const spool = await open({ keepBytes: size * 2 });
    const input = await spool.input("/a");
    await spool.append(input.id, lines(1, 4));
    await spool.append(input.id, lines(1, 4));
    await spool.append(input.id, lines(1, 4));
    await spool.append(input.id, lines(1, 4));
    const got = await take(spool, 3);
    assert.deepEqual(got.map((c) => [c.firstSeq, c.lastSeq]), [
      [3, 4], // from memory, starting inside the first append
      [5, 8], // from memory
      [9, 16], // from disk, skipping what memory gave
    ]);
    assert.deepEqual(text(got), [
      ...expected(3, 4),
      ...expected(1, 4, 5),
      ...expected(1, 4, 9),
      ...expected(1, 4, 13),
    ]);
    await spool.close();
  });

  test("a trim saves each input's last position, kept in memory or read back", async () => {
    for (const keepAppends of [65536, 2, 0]) {
      const spool = await open({ segmentBytes: 4096, keepAppends });
      const a = await spool.input("/a");
      const b = await spool.input("/b");
      for (let i = 0; i < 6; i++) {
        await spool.append(a.id, lines(i * 10 + 1, i * 10 + 10));
        await spool.append(b.id, lines(i + 1, i + 1, 99));
      }
      spool.ack(spool.lastSeq);
      await spool.close();
      const state = await readShipState(spool.stateFile);
      assert.deepEqual(
        state!.inputs.map((i) => i.position),
        [{ dev: 1, ino: 7, offset: 6000 }, { dev: 1, ino: 99, offset: 600 }],
        `keepAppends ${keepAppends}`,
      );
    }
  });
});

describe("shipFrames", () => {
  test("shipFrames packs spool chunks as encodeShipBatch does, within budget and count", async () => {
    const spool = await open();
    const input = await spool.input("/a");
    await spool.append(input.id, lines(1, 7));
    await spool.append(input.id, lines(8, 8));
    await spool.append(input.id, lines(9, 30));
    const chunks = await take(spool, 1);
    const records = chunks.flatMap((c) => decodeSpoolChunk(c));
    for (
      const [budget, max] of [[1 << 20, 4096], [200, 4096], [1 << 20, 3], [
        1,
        4096,
      ]]
    ) {
      const frames = [...shipFrames(chunks, budget!, max!)];
      let seq = 1;
      for (const f of frames) {
        const header = decodeHeader(f.frame);
        assert.equal(header.type, Kind.ShipBatch);
        assert.equal(header.length, f.frame.length - HEADER_SIZE);
        const count = f.lastSeq - f.firstSeq + 1;
        assert.equal(f.firstSeq, seq);
        assert.ok(count <= max!);
        assert.ok(count === 1 || header.length <= budget!);
        assert.deepEqual(
          f.frame.subarray(HEADER_SIZE),
          encodeShipBatch(records.slice(seq - 1, f.lastSeq)),
        );
        seq = f.lastSeq + 1;
      }
      assert.equal(seq, 31, `budget ${budget}, max ${max}`);
    }
    await spool.close();
  });
});
