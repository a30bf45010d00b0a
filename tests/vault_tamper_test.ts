// Tamper suite: builds one sealed vault of 10,200 records (3 sources, many
// segments, 13 seals) through the store API, then damages a working copy in
// many randomized ways and checks that verifyVault names the right place.
// Every instance restores the files it touched, so the vault is built once.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { initVault } from "../lib/vault/init.ts";
import { openVault } from "../lib/vault/store.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import type { VerifyProblem } from "../lib/vault/verify.ts";
import { sourceDirName } from "../lib/vault/_key.ts";
import { crc32c } from "../lib/segment/crc32c.ts";
import { Buffer } from "node:buffer";
import { runMoat } from "./_e2e.ts";
import { computeLink } from "../lib/vault/_chain.ts";
import { decodeSeal, encodeSeal } from "../lib/vault/_seal.ts";

const INSTANCES = 50;
const PER_SOURCE = 3400;
const BATCH = 100;
const SEAL_EVERY = 3; // batches per source between seals
const SEGMENT_BYTES = 64 * 1024;
const KEYS = [
  { peer: "10.0.0.1", name: "web" },
  { peer: "10.0.0.2", name: "db" },
  { peer: "10.0.0.3", name: "mail" },
];
const LABELS = KEYS.map((k) => `${k.peer}/${k.name}`);

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-tamper-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

/** Deterministic PRNG (mulberry32). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Rec {
  seq: number;
  file: string;
  offset: number;
  length: number;
}

interface Built {
  dir: string;
  key: string;
  /** Per source: records in order. */
  index: Rec[][];
  /** Per source: the distinct sealed lastSeq values, ascending. */
  sealed: number[][];
  /** Seal records: offset and length in the seal segment. */
  seals: { file: string; offset: number; length: number }[];
}

/** Appends the same content to a vault (so two vaults get equal segments). */
async function fill(
  dir: string,
  options: { seal: boolean },
): Promise<number[][]> {
  const vault = await openVault(dir, {
    sealIntervalMs: 0,
    segmentBytes: SEGMENT_BYTES,
  });
  const te = new TextEncoder();
  const random = prng(42);
  const sealed: number[][] = KEYS.map(() => []);
  let batches = 0;
  for (let from = 1; from <= PER_SOURCE; from += BATCH) {
    for (const key of KEYS) {
      const records = [];
      for (let seq = from; seq < from + BATCH && seq <= PER_SOURCE; seq++) {
        const text = `${key.name} ${seq} ` +
          "abcdefghij".repeat(Math.floor(random() * 12));
        records.push({
          seq,
          ts: 1_700_000_000_000 + seq,
          line: te.encode(text),
        });
      }
      await vault.append(key, records, { recvTs: 1_700_000_000_000 + from });
    }
    batches++;
    if (options.seal && batches % SEAL_EVERY === 0) {
      await vault.seal();
      KEYS.forEach((k, i) => sealed[i]!.push(vault.source(k).lastSeq));
    }
  }
  await vault.close(); // seals once more at close
  if (options.seal) KEYS.forEach((_, i) => sealed[i]!.push(PER_SOURCE));
  return sealed.map((list) => [...new Set(list)]);
}

function segmentsOf(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.endsWith(".seg")).sort()
    .map((n) => path.join(dir, n));
}

function indexRecords(file: string): Rec[] {
  const buf = fs.readFileSync(file);
  const out: Rec[] = [];
  let at = 32;
  let seq = Number(path.basename(file, ".seg"));
  while (at < buf.length) {
    const length = buf.readUInt32LE(at + 4);
    out.push({ seq: seq++, file, offset: at, length });
    at += length;
  }
  return out;
}

let A: Built;
let otherDir: string;
let work: string;
const originals = new Map<string, Uint8Array>();

function sourcePath(dir: string, i: number): string {
  return path.join(dir, "sources", sourceDirName(KEYS[i]!));
}

/** Reads a file of the working copy (cached original). */
function original(file: string): Uint8Array {
  let bytes = originals.get(file);
  if (!bytes) {
    bytes = new Uint8Array(fs.readFileSync(file));
    originals.set(file, bytes);
  }
  return bytes;
}

const touched = new Set<string>();
function put(file: string, bytes: Uint8Array): void {
  original(file);
  touched.add(file);
  fs.writeFileSync(file, bytes);
}
function restore(): void {
  for (const file of touched) fs.writeFileSync(file, originals.get(file)!);
  touched.clear();
}

before(async () => {
  const dir = path.join(base, "a");
  const { verificationKey } = await initVault(dir);
  const sealed = await fill(dir, { seal: true });
  otherDir = path.join(base, "b");
  await fill(otherDir, { seal: false });
  const index = KEYS.map((_, i) =>
    segmentsOf(sourcePath(dir, i)).flatMap((f) => indexRecords(f))
  );
  const sealFiles = segmentsOf(path.join(dir, "seals"));
  assert.equal(sealFiles.length, 1);
  const seals = indexRecords(sealFiles[0]!).map((r) => ({
    file: r.file.replace(dir, ""),
    offset: r.offset,
    length: r.length,
  }));
  // Work on a copy, so that paths in problems point into it.
  work = path.join(base, "work");
  fs.cpSync(dir, work, { recursive: true });
  const rebase = (file: string) => path.join(work, path.relative(dir, file));
  A = {
    dir: work,
    key: verificationKey,
    index: index.map((list) =>
      list.map((r) => ({ ...r, file: rebase(r.file) }))
    ),
    sealed,
    seals: seals.map((s) => ({ ...s, file: path.join(work, s.file) })),
  };
});

async function verify(source?: number): Promise<VerifyProblem[]> {
  const report = await verifyVault(A.dir, {
    key: A.key,
    ...(source !== undefined && { source: LABELS[source]! }),
  });
  assert.equal(report.ok, report.problems.length === 0);
  return report.problems;
}

function pick<T>(random: () => number, list: readonly T[]): T {
  return list[Math.floor(random() * list.length)]!;
}

function splice(
  bytes: Uint8Array,
  at: number,
  remove: number,
  insert: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const out = new Uint8Array(bytes.length - remove + insert.length);
  out.set(bytes.subarray(0, at), 0);
  out.set(insert, at);
  out.set(bytes.subarray(at + remove), at + insert.length);
  return out;
}

function fixCrc(record: Uint8Array): void {
  new DataView(record.buffer, record.byteOffset).setUint32(
    0,
    crc32c(record, 4),
    true,
  );
}

function recordBytes(rec: Rec): Uint8Array {
  return original(rec.file).slice(rec.offset, rec.offset + rec.length);
}

/**
 * Changes one line byte of record `r` and recomputes its CRC and link and
 * the links and CRCs of every later record of the source: what an intruder
 * without the key can do (`r` ≥ 2). Returns the source's new chain head after each
 * record (by seq).
 */
function relinkFrom(source: number, r: number): Map<number, Uint8Array> {
  const list = A.index[source]!;
  const heads = new Map<number, Uint8Array>();
  const files = new Map<string, Uint8Array>();
  const bytesOf = (file: string) => {
    let b = files.get(file);
    if (!b) files.set(file, b = original(file).slice());
    return b;
  };
  let prev: Uint8Array | undefined;
  for (const rec of list) {
    if (rec.seq < r - 1) continue;
    const file = bytesOf(rec.file);
    const record = file.subarray(rec.offset, rec.offset + rec.length);
    if (rec.seq === r - 1) {
      prev = record.slice(36, 68);
      continue;
    }
    if (rec.seq === r) record[record.length - 1]! ^= 0x01;
    const link = computeLink(record, prev!);
    record.set(link, 36);
    fixCrc(record);
    heads.set(rec.seq, link);
    prev = link;
  }
  for (const [file, bytes] of files) put(file, bytes);
  return heads;
}

function firstSealedAtOrAfter(source: number, seq: number): [number, number] {
  const sealed = A.sealed[source]!;
  const i = sealed.findIndex((s) => s >= seq);
  const from = i === 0 ? 1 : sealed[i - 1]! + 1;
  return [from, sealed[i]!];
}

function assertAt(
  problem: VerifyProblem | undefined,
  want: {
    kinds: string[];
    source: number;
    seq: number;
    file: string;
    offset: number;
  },
  label: string,
): void {
  assert.ok(problem, `${label}: no problem reported`);
  assert.ok(
    want.kinds.includes(problem.kind),
    `${label}: kind ${problem.kind} (${problem.message})`,
  );
  assert.equal(problem.source, LABELS[want.source], label);
  assert.equal(problem.seq, want.seq, `${label}: ${problem.message}`);
  assert.equal(problem.file, want.file, `${label}: ${problem.message}`);
  assert.equal(problem.offset, want.offset, `${label}: ${problem.message}`);
}

describe("verifyVault on a sealed vault of 10,200 records", () => {
  test("verifyVault finds an untouched vault intact, fully sealed", async () => {
    const report = await verifyVault(A.dir, { key: A.key });
    assert.deepEqual(report.problems, []);
    assert.equal(report.ok, true);
    assert.equal(report.keyed, true);
    assert.ok(report.seals >= 12, `${report.seals} seals`);
    assert.equal(report.unsealed, 0);
    assert.deepEqual(
      report.sources.map((s) => [s.label, s.records, s.sealedSeq]),
      [...LABELS].map((l) => [l, PER_SOURCE, PER_SOURCE]).sort((a, b) =>
        String(a[0]) < String(b[0]) ? -1 : 1
      ),
    );
    assert.ok(
      A.index.every((list) => new Set(list.map((r) => r.file)).size > 5),
    );
  });

  test("verifyVault detects a flipped bit anywhere in a segment at its record", async () => {
    const random = prng(1);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const file = pick(random, [...new Set(A.index[s]!.map((r) => r.file))]);
      const bytes = original(file).slice();
      const at = Math.floor(random() * bytes.length);
      bytes[at]! ^= 1 << Math.floor(random() * 8);
      put(file, bytes);
      const [problem] = await verify(s);
      restore();
      if (at < 32) {
        const first = A.index[s]!.find((r) => r.file === file)!;
        assertAt(problem, {
          kinds: ["header"],
          source: s,
          seq: first.seq,
          file,
          offset: 0,
        }, `flip at ${at}`);
      } else {
        const rec = A.index[s]!.find((r) =>
          r.file === file && r.offset <= at && at < r.offset + r.length
        )!;
        assertAt(problem, {
          kinds: ["checksum", "truncated"],
          source: s,
          seq: rec.seq,
          file,
          offset: rec.offset,
        }, `flip at ${at}`);
      }
    }
  });

  test("verifyVault detects a changed byte with a recomputed checksum by its chain link", async () => {
    const random = prng(2);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const rec = pick(random, A.index[s]!);
      const bytes = original(rec.file).slice();
      const record = bytes.subarray(rec.offset, rec.offset + rec.length);
      const at = 20 + Math.floor(random() * (rec.length - 20));
      record[at]! ^= 1 + Math.floor(random() * 255);
      fixCrc(record);
      put(rec.file, bytes);
      const [problem] = await verify(s);
      restore();
      assertAt(problem, { kinds: ["link"], source: s, ...rec }, `byte ${at}`);
    }
  });

  test("verifyVault detects a rewritten and re-linked record by the first seal over it", async () => {
    const random = prng(3);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const r = 2 + Math.floor(random() * (PER_SOURCE - 1));
      relinkFrom(s, r);
      const [problem] = await verify(s);
      restore();
      const range = firstSealedAtOrAfter(s, r);
      const end = A.index[s]![range[1] - 1]!;
      assert.ok(problem, `record ${r}`);
      assert.equal(problem.kind, "seal-head", problem.message);
      assert.equal(problem.source, LABELS[s]);
      assert.deepEqual(problem.range, range, problem.message);
      assert.equal(problem.seq, end.seq);
      assert.equal(problem.file, end.file);
      assert.equal(problem.offset, end.offset);
    }
  });

  test("verifyVault detects a deleted record where it was", async () => {
    const random = prng(4);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const rec = pick(random, A.index[s]!);
      put(rec.file, splice(original(rec.file), rec.offset, rec.length));
      const [problem] = await verify(s);
      restore();
      assertAt(problem, {
        kinds: ["sequence", "gap", "truncated"],
        source: s,
        ...rec,
      }, `delete ${rec.seq}`);
    }
  });

  test("verifyVault detects an inserted, well-formed and linked record right after it", async () => {
    const random = prng(5);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const rec = pick(random, A.index[s]!.slice(1));
      const prevRec = A.index[s]![rec.seq - 2]!;
      // A forged record r, linked from r - 1 and checksummed like a real one.
      const forged = recordBytes(rec);
      forged[forged.length - 1]! ^= 0x20;
      const link = computeLink(forged, recordBytes(prevRec).slice(36, 68));
      forged.set(link, 36);
      fixCrc(forged);
      put(rec.file, splice(original(rec.file), rec.offset, 0, forged));
      const [problem] = await verify(s);
      restore();
      assertAt(problem, {
        kinds: ["sequence"],
        source: s,
        seq: rec.seq + 1,
        file: rec.file,
        offset: rec.offset + forged.length,
      }, `insert before ${rec.seq}`);
    }
  });

  test("verifyVault detects a duplicated record", async () => {
    const random = prng(6);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const list = A.index[s]!;
      const rec = pick(
        random,
        list.filter((r, i) => i > 0 && list[i - 1]!.file === r.file),
      );
      const copy = recordBytes(list[rec.seq - 2]!);
      put(rec.file, splice(original(rec.file), rec.offset, 0, copy));
      const [problem] = await verify(s);
      restore();
      assertAt(problem, { kinds: ["sequence"], source: s, ...rec }, `dup`);
    }
  });

  test("verifyVault detects two swapped records", async () => {
    const random = prng(7);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const list = A.index[s]!;
      const rec = pick(
        random,
        list.filter((r, i) =>
          i + 1 < list.length && list[i + 1]!.file === r.file
        ),
      );
      const next = list[rec.seq]!;
      const swapped = new Uint8Array([
        ...recordBytes(next),
        ...recordBytes(rec),
      ]);
      put(
        rec.file,
        splice(
          original(rec.file),
          rec.offset,
          rec.length + next.length,
          swapped,
        ),
      );
      const [problem] = await verify(s);
      restore();
      assertAt(problem, { kinds: ["sequence"], source: s, ...rec }, `swap`);
    }
  });

  test("verifyVault detects a truncated segment at the first record cut", async () => {
    const random = prng(8);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const file = pick(random, [...new Set(A.index[s]!.map((r) => r.file))]);
      const bytes = original(file);
      const cut = Math.floor(random() * bytes.length);
      put(file, bytes.slice(0, cut));
      const [problem] = await verify(s);
      restore();
      const records = A.index[s]!.filter((r) => r.file === file);
      if (cut < 32) {
        assertAt(problem, {
          kinds: ["truncated"],
          source: s,
          seq: records[0]!.seq,
          file,
          offset: 0,
        }, `cut ${cut}`);
      } else {
        const rec = records.find((r) => r.offset + r.length > cut)!;
        assertAt(problem, {
          kinds: ["truncated", "gap"],
          source: s,
          ...rec,
        }, `cut ${cut}`);
      }
    }
  });

  test("verifyVault detects a removed seal as an epoch gap", async () => {
    const random = prng(9);
    for (let n = 0; n < INSTANCES; n++) {
      // Every seal but the last: removing the newest seal is a rollback that
      // only the seal's age can show (docs/VAULT.md).
      const epoch = 1 + Math.floor(random() * (A.seals.length - 1));
      const seal = A.seals[epoch - 1]!;
      put(seal.file, splice(original(seal.file), seal.offset, seal.length));
      const [problem] = await verify(0);
      restore();
      assert.ok(problem);
      assert.equal(problem.kind, "seal-gap", problem.message);
      assert.equal(problem.epoch, epoch);
      assert.equal(problem.file, seal.file);
      assert.equal(problem.offset, seal.offset);
    }
  });

  test("verifyVault detects a sealed range rewritten and re-sealed with the current key", async () => {
    const random = prng(10);
    const stolen = JSON.parse(
      fs.readFileSync(path.join(A.dir, "seal.key"), "utf8"),
    );
    const key = new Uint8Array(Buffer.from(stolen.key, "hex"));
    assert.equal(stolen.epoch, A.seals.length + 1);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const r = 2 + Math.floor(random() * (PER_SOURCE - 1));
      const heads = relinkFrom(s, r);
      // Re-seal every seal from the one over r on, with the stolen key.
      const sealFile = A.seals[0]!.file;
      const bytes = original(sealFile).slice();
      let firstResealed = 0;
      for (const [i, at] of A.seals.entries()) {
        const seal = decodeSeal(bytes.slice(at.offset, at.offset + at.length));
        assert.ok(typeof seal !== "string");
        const entry = seal.entries.find((e) =>
          heads.has(e.lastSeq) &&
          e.lastSeq >= r && _isSource(e.source, s)
        );
        if (entry === undefined) continue;
        firstResealed ||= i + 1;
        entry.head = heads.get(entry.lastSeq)!;
        bytes.set(encodeSeal(seal, key), at.offset);
      }
      put(sealFile, bytes);
      const [problem, ...rest] = await verify(s);
      restore();
      assert.ok(problem);
      assert.equal(problem.kind, "seal-mac", problem.message);
      assert.equal(problem.epoch, firstResealed);
      assert.equal(problem.offset, A.seals[firstResealed - 1]!.offset);
      // Seals from there on are not trusted, so nothing else is claimed of
      // them; the second layer (the stored Merkle tree and the vault's own
      // checkpoints, which this intruder left alone) disagrees too.
      assert.deepEqual(rest.filter((p) => p.kind !== "tree"), []);
      assert.ok(rest.length > 0);
    }
  });

  test("verifyVault detects a segment swapped in from another vault", async () => {
    const random = prng(11);
    for (let n = 0; n < INSTANCES; n++) {
      const s = Math.floor(random() * KEYS.length);
      const rec = pick(
        random,
        A.index[s]!.filter((r) => r.offset === 32),
      );
      const theirs = path.join(
        sourcePath(otherDir, s),
        path.basename(rec.file),
      );
      const bytes = new Uint8Array(fs.readFileSync(theirs));
      // Same records, same segment: only the chain (vault id) differs.
      assert.equal(bytes.length, original(rec.file).length);
      put(rec.file, bytes);
      const [problem] = await verify(s);
      restore();
      assertAt(problem, { kinds: ["link"], source: s, ...rec }, "swap-in");
    }
  });
});

function _isSource(hash: Uint8Array, s: number): boolean {
  const hex = Buffer.from(hash).toString("hex");
  return sourceDirName(KEYS[s]!).endsWith(hex.slice(0, 32));
}

// Fail closed: a sealed vault is only "intact" if everything a seal should
// cover is there, sealed, and readable. Each case damages a small sealed
// vault of two sources (several segments each, five seals) in one way.

let small = 0;

/** A sealed vault: 2 sources × 100 records, sealed after every 25, closed. */
async function smallSealedVault(): Promise<{ dir: string; key: string }> {
  const dir = path.join(base, `small-${small++}`);
  const { verificationKey } = await initVault(dir);
  const vault = await openVault(dir, { sealIntervalMs: 0, segmentBytes: 4096 });
  const te = new TextEncoder();
  for (let round = 0; round < 4; round++) {
    for (const key of KEYS.slice(0, 2)) {
      const records = [];
      for (let seq = round * 25 + 1; seq <= round * 25 + 25; seq++) {
        records.push({
          seq,
          ts: seq,
          line: te.encode(`${key.name} ${seq} ${"x".repeat(80)}`),
        });
      }
      await vault.append(key, records);
    }
    await vault.seal();
  }
  await vault.close(); // seal 5; the key file is at epoch 6
  return { dir, key: verificationKey };
}

function sealSegment(dir: string): string {
  const names = fs.readdirSync(path.join(dir, "seals")).filter((n) =>
    n.endsWith(".seg")
  );
  assert.equal(names.length, 1);
  return path.join(dir, "seals", names[0]!);
}

/** Offset just after the first seal record in the seal segment. */
function afterFirstSeal(file: string): number {
  return 32 + fs.readFileSync(file).readUInt32LE(32 + 4);
}

/** Replaces a file with a directory of the same name: unreadable, even as root. */
function makeUnreadable(file: string): void {
  fs.rmSync(file);
  fs.mkdirSync(file);
}

function kinds(problems: VerifyProblem[]): string[] {
  return problems.map((p) => p.kind);
}

const FAIL_CLOSED: {
  label: string;
  damage: (dir: string) => void;
  /** Problem kinds that must all be reported, with and without the key. */
  expected: string[];
  /** Also expected with the key only. */
  keyed?: string[];
}[] = [
  {
    label: "seals/ removed",
    damage: (dir) => fs.rmSync(path.join(dir, "seals"), { recursive: true }),
    expected: ["seal", "seal-gap", "unsealed"],
  },
  {
    label: "the seal log cut to its first seal",
    damage: (dir) => {
      const file = sealSegment(dir);
      fs.truncateSync(file, afterFirstSeal(file));
    },
    expected: ["seal-gap"],
  },
  {
    label: "the seal log emptied to its header",
    damage: (dir) => fs.truncateSync(sealSegment(dir), 32),
    expected: ["seal-gap", "unsealed"],
  },
  {
    label: "the seal log's only segment removed",
    damage: (dir) => fs.rmSync(sealSegment(dir)),
    expected: ["seal-gap", "unsealed"],
  },
  {
    label: "the sealing key file moved ahead of the seal log",
    damage: (dir) => {
      const file = path.join(dir, "seal.key");
      const stored = JSON.parse(fs.readFileSync(file, "utf8"));
      fs.writeFileSync(file, JSON.stringify({ ...stored, epoch: 9 }));
    },
    expected: ["seal-gap"],
  },
  {
    label: "the sealing key file replaced at its epoch",
    damage: (dir) => {
      const file = path.join(dir, "seal.key");
      const stored = JSON.parse(fs.readFileSync(file, "utf8"));
      fs.writeFileSync(
        file,
        JSON.stringify({ ...stored, key: "ab".repeat(32) }),
      );
    },
    expected: [],
    keyed: ["seal-key"],
  },
  {
    label: "the sealing key file removed",
    damage: (dir) => fs.rmSync(path.join(dir, "seal.key")),
    expected: ["seal-key"],
  },
  {
    label: "vault.json removed",
    damage: (dir) => fs.rmSync(path.join(dir, "vault.json")),
    expected: ["vault"],
  },
  {
    label: "the first segment of a source removed",
    damage: (dir) =>
      fs.rmSync(
        path.join(sourcePath(dir, 0), "00000000000000000001.seg"),
      ),
    expected: ["gap"],
  },
  {
    label: "every segment of a sealed source removed",
    damage: (dir) => {
      for (const file of segmentsOf(sourcePath(dir, 0))) fs.rmSync(file);
    },
    expected: ["truncated"],
  },
  {
    label: "the sources directory emptied",
    damage: (dir) => {
      for (const name of fs.readdirSync(path.join(dir, "sources"))) {
        fs.rmSync(path.join(dir, "sources", name), { recursive: true });
      }
    },
    expected: ["missing-source"],
  },
  {
    label: "the sources directory removed",
    damage: (dir) => fs.rmSync(path.join(dir, "sources"), { recursive: true }),
    expected: ["vault", "missing-source"],
  },
  {
    label: "a segment unreadable",
    damage: (dir) => makeUnreadable(segmentsOf(sourcePath(dir, 1)).at(-1)!),
    expected: ["unreadable"],
  },
  {
    label: "the seal segment unreadable",
    damage: (dir) => makeUnreadable(sealSegment(dir)),
    expected: ["unreadable"],
  },
  {
    label: "the sealing key file unreadable",
    damage: (dir) => makeUnreadable(path.join(dir, "seal.key")),
    expected: ["seal-key"],
  },
  {
    label: "vault.json unreadable",
    damage: (dir) => makeUnreadable(path.join(dir, "vault.json")),
    expected: ["vault"],
  },
  {
    label: "a source's source.json unreadable",
    damage: (dir) =>
      makeUnreadable(path.join(sourcePath(dir, 0), "source.json")),
    expected: ["header", "missing-source"],
  },
];

describe("verifyVault fails closed on a sealed vault", () => {
  test("verifyVault finds a small sealed vault intact before any damage", async () => {
    const { dir, key } = await smallSealedVault();
    assert.ok(segmentsOf(sourcePath(dir, 0)).length > 1);
    for (const options of [{ key }, {}]) {
      const report = await verifyVault(dir, options);
      assert.deepEqual(report.problems, []);
      assert.equal(report.seals, 5);
      assert.equal(report.keyEpoch, 6);
    }
  });

  for (const { label, damage, expected, keyed = [] } of FAIL_CLOSED) {
    test(`verifyVault reports damage: ${label}`, async () => {
      const { dir, key } = await smallSealedVault();
      damage(dir);
      const withKey = await verifyVault(dir, { key });
      const without = await verifyVault(dir);
      for (
        const [report, want] of [
          [withKey, [...expected, ...keyed]],
          [without, expected],
        ] as const
      ) {
        const found = kinds(report.problems);
        for (const kind of want) {
          assert.ok(found.includes(kind), `${kind} not in ${found}`);
        }
        assert.equal(report.ok, report.problems.length === 0);
      }
      assert.equal(withKey.ok, false, "damage passed with the key");
      for (const p of withKey.problems) {
        assert.doesNotMatch(p.message, /\.$/);
        assert.ok(!p.message.includes("\n"));
      }
    });
  }

  test("verifyVault reports a source forged after the seals were removed", async () => {
    const { dir, key } = await smallSealedVault();
    // The intruder has the vault id and the current key file; they rebuild
    // source 0 (well-formed, chained from the genesis) with an unsealed
    // copy of the vault, swap it in, delete the seals, and start the key
    // file over at epoch 1 with a key of their own.
    const scratch = path.join(base, `forge-${small++}`);
    fs.cpSync(dir, scratch, { recursive: true });
    fs.rmSync(path.join(scratch, "seals"), { recursive: true });
    fs.rmSync(path.join(scratch, "seal.key"));
    fs.rmSync(sourcePath(scratch, 0), { recursive: true });
    const info = JSON.parse(
      fs.readFileSync(path.join(scratch, "vault.json"), "utf8"),
    );
    fs.writeFileSync(
      path.join(scratch, "vault.json"),
      JSON.stringify({ ...info, sealed: false }),
    );
    const forger = await openVault(scratch, { sealIntervalMs: 0 });
    await forger.append(KEYS[0]!, [{
      seq: 1,
      ts: 1,
      line: new TextEncoder().encode("nothing happened here"),
    }]);
    await forger.close();
    fs.rmSync(sourcePath(dir, 0), { recursive: true });
    fs.cpSync(sourcePath(scratch, 0), sourcePath(dir, 0), { recursive: true });
    fs.rmSync(path.join(dir, "seals"), { recursive: true });
    fs.mkdirSync(path.join(dir, "seals"));
    const stored = JSON.parse(
      fs.readFileSync(path.join(dir, "seal.key"), "utf8"),
    );
    fs.writeFileSync(
      path.join(dir, "seal.key"),
      JSON.stringify({ ...stored, epoch: 1, key: "cd".repeat(32) }),
    );
    // The forged chain itself is sound: only the missing seals show.
    const plain = await verifyVault(scratch);
    assert.deepEqual(plain.problems, []);
    const withKey = await verifyVault(dir, { key });
    assert.equal(withKey.ok, false);
    assert.ok(kinds(withKey.problems).includes("seal-key"));
    assert.ok(kinds(withKey.problems).includes("unsealed"));
    const without = await verifyVault(dir);
    assert.equal(without.ok, false);
    const forged = without.problems.find((p) => p.source === LABELS[0]);
    assert.equal(forged?.kind, "unsealed");
    assert.equal(forged?.seq, 1);
  });

  test("moat vault verify exits 5 on a sealed vault whose seals/ was removed", async () => {
    const { dir, key } = await smallSealedVault();
    fs.rmSync(path.join(dir, "seals"), { recursive: true });
    for (const args of [["--key", key], []]) {
      const r = await runMoat(["vault", "verify", dir, ...args]);
      assert.equal(r.code, 5, r.stdout + r.stderr);
      assert.match(r.stdout, /DAMAGED: .*seal log ends at seal 0/);
      assert.doesNotMatch(r.stdout, /^OK/m);
    }
  });
});

describe("verifyVault judges unsealed records by the seal interval", () => {
  const HOUR = 3_600_000;
  const cases: {
    label: string;
    /** Seal interval the vault is served with (0: none recorded). */
    interval: number;
    /** Receive time of the unsealed record, relative to the last seal. */
    after: number;
    /** Verification time, relative to the last seal. */
    now: number;
    damaged: boolean;
  }[] = [
    {
      label: "within the interval",
      interval: HOUR,
      after: HOUR / 2,
      now: 2 * HOUR,
      damaged: false,
    },
    {
      label: "past interval and grace",
      interval: HOUR,
      after: 2 * HOUR + 1,
      now: 3 * HOUR,
      damaged: true,
    },
    {
      label: "just inside interval and grace",
      interval: HOUR,
      after: 2 * HOUR - 1,
      now: 3 * HOUR,
      damaged: false,
    },
    {
      label: "well before the last seal",
      interval: HOUR,
      after: -2 * HOUR,
      now: HOUR,
      damaged: true,
    },
    {
      label: "received while verifying",
      interval: HOUR,
      after: 5 * HOUR,
      now: 5 * HOUR,
      damaged: false,
    },
    {
      label: "no interval recorded, inside 60 s + 60 s",
      interval: 0,
      after: 119_000,
      now: HOUR,
      damaged: false,
    },
    {
      label: "no interval recorded, past 60 s + 60 s",
      interval: 0,
      after: 121_000,
      now: HOUR,
      damaged: true,
    },
  ];
  for (const { label, interval, after, now, damaged } of cases) {
    test(`verifyVault unsealed record ${label}: ${damaged ? "damage" : "tail"}`, async () => {
      const dir = path.join(base, `tail-${small++}`);
      const { verificationKey } = await initVault(dir);
      const vault = await openVault(dir, { sealIntervalMs: interval });
      try {
        const key = KEYS[0]!;
        const line = new TextEncoder().encode("x");
        await vault.append(key, [{ seq: 1, ts: 1, line }]);
        const sealed = await vault.seal();
        await vault.append(key, [{ seq: 2, ts: 2, line }], {
          recvTs: sealed.time + after,
        });
        const report = await verifyVault(dir, {
          key: verificationKey,
          now: sealed.time + now,
        });
        assert.equal(report.sealIntervalMs, interval || 60_000);
        if (damaged) {
          assert.equal(report.ok, false);
          assert.equal(report.problems.length, 1, report.problems[0]?.message);
          assert.equal(report.problems[0]!.kind, "unsealed");
          assert.equal(report.problems[0]!.seq, 2);
        } else {
          assert.deepEqual(report.problems, []);
          assert.equal(report.unsealed, 1);
        }
      } finally {
        await vault.close();
      }
    });
  }
});
