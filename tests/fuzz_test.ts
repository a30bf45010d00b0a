/**
 * Framer fuzzing for the normal suite: the fixture corpus replayed under many
 * splits, a short seeded campaign against the reference decoder, and the
 * memory bound under a one-byte trickle. The 1,000,000-case campaign runs in
 * `npm run soak`.
 *
 * Set MOAT_FUZZ_SEED to run the campaign with another seed.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import process from "node:process";
import v8 from "node:v8";
import vm from "node:vm";
import {
  encodeHeader,
  FrameDecoderStream,
  FrameReader,
  HEADER_SIZE,
} from "../lib/framer.ts";
import {
  caseFromEntry,
  type CorpusEntry,
  fuzzFramer,
  modelDecode,
  prng,
  type ReaderMode,
  runDecoderStream,
  runFrameReader,
} from "../soak/framer_fuzz.ts";

const CORPUS: CorpusEntry[] = JSON.parse(
  fs.readFileSync(
    new URL("./fixtures/framer_corpus.json", import.meta.url),
    "utf8",
  ),
);

const SEED = Number(process.env.MOAT_FUZZ_SEED ?? 20_261_124);

/** Cut lists for replaying one input: recorded, whole, every byte, random. */
function splitsFor(
  length: number,
  recorded: number[],
  seed: number,
): number[][] {
  const out = [recorded, []];
  if (length > 1) out.push(Array.from({ length: length - 1 }, (_, i) => i + 1));
  const rand = prng(seed);
  for (let k = 0; k < 6 && length > 1; k++) {
    const set = new Set<number>();
    for (let j = rand(6) + 1; j > 0; j--) set.add(rand(length - 1) + 1);
    out.push([...set].sort((a, b) => a - b));
  }
  return out;
}

/** Forces a full garbage collection where the runtime allows it. */
function collectGarbage(): void {
  try {
    v8.setFlagsFromString("--expose-gc");
    (vm.runInNewContext("gc") as () => void)();
  } catch {
    // Not available (Bun): allocation pressure has to do.
  }
}

test("fixture corpus holds the header edges and every decoder ending", () => {
  assert.ok(CORPUS.length >= 100, `${CORPUS.length} entries`);
  const endings = new Set(CORPUS.map((e) => e.expect.ending));
  assert.deepEqual(
    [...endings].sort(),
    ["ok", "too_large", "truncated_header", "truncated_payload", "type0"],
  );
  const names = new Set(CORPUS.map((e) => e.name));
  for (
    const name of [
      "length 0",
      "length max",
      "length max + 1",
      "length 2^32 - 1",
      "length max + 1, header split at 3",
    ]
  ) {
    assert.ok(names.has(name), name);
  }
  // The recorded expectations agree with the reference decoder.
  for (const entry of CORPUS) {
    const { c, expected } = caseFromEntry(entry);
    const model = modelDecode(c.bytes, c.maxFrameSize);
    assert.equal(model.ending, expected.ending, entry.name);
    assert.equal(model.frames.length, expected.frames.length, entry.name);
  }
});

test("FrameDecoderStream replays the fixture corpus under every split", async () => {
  const findings: string[] = [];
  let runs = 0;
  for (const [i, entry] of CORPUS.entries()) {
    const { c, expected } = caseFromEntry(entry);
    for (const cuts of splitsFor(c.bytes.length, c.cuts, i)) {
      const run = await runDecoderStream({ ...c, cuts }, expected);
      runs++;
      if (run.finding) {
        findings.push(
          `${entry.name} cuts ${JSON.stringify(cuts)}: ${run.finding}`,
        );
      }
    }
  }
  assert.deepEqual(findings.slice(0, 10), []);
  assert.ok(runs > CORPUS.length * 3);
});

test("FrameReader replays the fixture corpus in every mode and buffer size", async () => {
  const findings: string[] = [];
  const modes: ReaderMode[] = ["frame", "fragment", "skip", "peek"];
  for (const [i, entry] of CORPUS.entries()) {
    const { c, expected } = caseFromEntry(entry);
    for (const cuts of splitsFor(c.bytes.length, c.cuts, i).slice(0, 4)) {
      for (const mode of modes) {
        for (const bufferSize of [HEADER_SIZE, 64, 4096]) {
          for (const emptyReads of [[], [0, 2, 3]]) {
            const finding = await runFrameReader({
              ...c,
              cuts,
              mode,
              bufferSize,
              emptyReads,
            }, expected);
            if (finding) {
              findings.push(`${entry.name} ${mode}/${bufferSize}: ${finding}`);
            }
          }
        }
      }
    }
  }
  assert.deepEqual(findings.slice(0, 10), []);
});

test("FrameDecoderStream and FrameReader match the reference decoder on 50,000 seeded cases", async () => {
  const corpus = CORPUS.map((e) => caseFromEntry(e).c.bytes);
  const stats = await fuzzFramer({
    seed: SEED,
    cases: 50_000,
    corpus,
    timeLimitMs: 30_000,
  });
  assert.deepEqual(stats.findings, [], `seed ${SEED}`);
  assert.equal(stats.hangs, 0);
  assert.equal(stats.unhandled, 0);
  assert.ok(stats.cases >= 20_000, `only ${stats.cases} cases in 30 s`);
  // Every ending was exercised, not just the easy ones.
  for (
    const ending of [
      "ok",
      "type0",
      "too_large",
      "truncated_header",
      "truncated_payload",
    ]
  ) {
    assert.ok(
      (stats.endings[ending] ?? 0) > 500,
      `${ending}: ${stats.endings[ending]}`,
    );
  }
});

test("FrameReader keeps memory to its buffer when a payload trickles in one byte per chunk", async () => {
  const limit = 65_536;
  let sent = 0;
  const header = encodeHeader(1, limit);
  const source = {
    read(buf: Uint8Array): Promise<number | null> {
      if (sent < HEADER_SIZE) {
        buf[0] = header[sent++]!;
        return Promise.resolve(1);
      }
      if (sent >= HEADER_SIZE + limit) return Promise.resolve(null);
      // A fresh 4 KiB buffer per read, like a socket that allocates per chunk.
      const chunk = new Uint8Array(4096).subarray(0, 1);
      chunk[0] = sent++ & 0xff;
      buf.set(chunk);
      return Promise.resolve(1);
    },
  };
  collectGarbage();
  const before = process.memoryUsage();
  const reader = new FrameReader(source, {
    maxFrameSize: limit,
    bufferSize: 4096,
  });
  const frame = await reader.readFrame();
  collectGarbage();
  const grown = process.memoryUsage().external - before.external;
  assert.equal(frame?.payload.length, limit);
  // Pinning every 4 KiB source chunk would retain 256 MiB; the bound leaves
  // room for source garbage a lazy collector has not freed yet (Bun).
  assert.ok(grown < 64 << 20, `external memory grew ${grown} bytes`);
});

test("FrameDecoderStream keeps memory bounded by maxFrameSize when a payload trickles in one byte per chunk", async () => {
  // A socket's readable hands out small views of larger buffers (lib/net/deno.ts
  // allocates 64 KiB per chunk). A decoder that keeps each view until the frame
  // is complete keeps every backing buffer alive: 65,535 one-byte chunks of 4 KiB
  // buffers would pin 256 MiB for a 64 KiB frame.
  const limit = 65_536;
  const decoder = new FrameDecoderStream({ maxFrameSize: limit });
  const writer = decoder.writable.getWriter();
  const reader = decoder.readable.getReader();
  const frames: number[] = [];
  const reading = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      frames.push(value.payload.length);
    }
  })();
  collectGarbage();
  const before = process.memoryUsage().external;
  await writer.write(encodeHeader(1, limit));
  for (let i = 0; i < limit - 1; i++) {
    await writer.write(new Uint8Array(4096).subarray(0, 1));
  }
  collectGarbage();
  const grown = process.memoryUsage().external - before;
  await writer.write(new Uint8Array(1));
  await writer.close();
  await reading;
  assert.deepEqual(frames, [limit]);
  // Pinning would retain 256 MiB; 64 MiB leaves room for unswept garbage.
  assert.ok(
    grown < 64 << 20,
    `external memory grew ${
      (grown / 2 ** 20).toFixed(0)
    } MiB while one ${limit}-byte frame was pending`,
  );
});
