// Retention: Vault.prune and retainMs, and how verifyVault tells a prune
// from a deletion. Vaults here run on a fake clock (openVault's `now`), so
// records can be days old without waiting.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { initVault } from "../lib/vault/init.ts";
import { openVault } from "../lib/vault/store.ts";
import type { PruneEvent, SourceKey, Vault } from "../lib/vault/store.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import { listSources, readRecords } from "../lib/vault/read.ts";
import { sourceDirName, sourceHash } from "../lib/vault/_key.ts";
import { decodeSeal, encodeSeal, evolveKey } from "../lib/vault/_seal.ts";
import { crc32c } from "../lib/segment/crc32c.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-vault-prune-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

let counter = 0;
function freshDir(): string {
  return path.join(base, `v${counter++}`);
}

const DAY = 86_400_000;
const T0 = 1_700_000_000_000;
const PER_DAY = 50;
const WEB: SourceKey = { peer: "10.0.0.1", name: "web" };
const DB: SourceKey = { peer: "10.0.0.2", name: "db" };
const te = new TextEncoder();

/** A fake clock. */
class Clock {
  t = T0;
  now = () => this.t;
}

/** The day (from 0) record `seq` was appended on, in {@linkcode daily}. */
function dayOf(seq: number): number {
  return Math.floor((seq - 1) / PER_DAY);
}

/**
 * A vault written one day at a time: PER_DAY records per source in appends
 * of 10, a seal (sealed vaults) at the end of each day, then the clock
 * moves a day on. Left open, on the fake clock; segments of about 30
 * records, so they do not line up with days.
 */
async function daily(
  days: number,
  options: { sealed?: boolean; keys?: SourceKey[]; retainMs?: number } = {},
): Promise<{ dir: string; key: string; clock: Clock; vault: Vault }> {
  const dir = freshDir();
  const sealed = options.sealed ?? true;
  const key = sealed ? (await initVault(dir)).verificationKey : "";
  const clock = new Clock();
  const vault = await openVault(dir, {
    sealIntervalMs: 0,
    segmentBytes: 4096,
    now: clock.now,
  });
  for (let day = 0; day < days; day++) {
    for (const k of options.keys ?? [WEB]) {
      for (let i = 1; i <= PER_DAY; i += 10) {
        const records = range(day * PER_DAY + i, day * PER_DAY + i + 9).map((
          seq,
        ) => ({
          seq,
          ts: clock.t,
          line: te.encode(`${k.name} day ${day} line ${seq} ${"x".repeat(40)}`),
        }));
        await vault.append(k, records);
      }
    }
    if (sealed) await vault.seal();
    clock.t += DAY;
  }
  return { dir, key, clock, vault };
}

function sourceDir(dir: string, key: SourceKey = WEB): string {
  return path.join(dir, "sources", sourceDirName(key));
}

/** The first sequence numbers of a source's segment files, in order. */
function segmentFirsts(dir: string, key: SourceKey = WEB): number[] {
  return fs.readdirSync(sourceDir(dir, key)).filter((n) => n.endsWith(".seg"))
    .map((n) => Number(n.slice(0, 20))).sort((a, b) => a - b);
}

/**
 * What a prune at `before` must remove, from the segments on disk and the
 * daily seals (each record first sealed at the end of its day): the last
 * record of the longest run of segments from the oldest, never the last
 * one, whose last record was sealed before `before`.
 */
function expectedCut(firsts: number[], before: number): number {
  let through = 0;
  for (let i = 0; i + 1 < firsts.length; i++) {
    const last = firsts[i + 1]! - 1;
    if (T0 + dayOf(last) * DAY >= before) break;
    through = last;
  }
  return through;
}

async function seqs(dir: string, source?: string): Promise<number[]> {
  const out: number[] = [];
  for await (const r of readRecords(dir, source ? { source } : {})) {
    out.push(r.seq);
  }
  return out;
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

describe("Vault.prune", () => {
  test("Vault.prune removes whole segments sealed before the cut-off, and verifyVault reports the range", async () => {
    const { dir, key, clock, vault } = await daily(10);
    const firsts = segmentFirsts(dir);
    const before = T0 + 5 * DAY;
    const through = expectedCut(firsts, before);
    assert.ok(
      through >= 4 * PER_DAY - 50 && through < 5 * PER_DAY,
      `${through}`,
    );
    const info = await vault.prune({ before });
    await vault.close();
    assert.equal(info.sources.length, 1);
    assert.equal(info.sources[0]!.throughSeq, through);
    assert.equal(info.records, through);
    assert.equal(info.before, before);
    assert.equal(typeof info.epoch, "number");
    assert.deepEqual(
      segmentFirsts(dir),
      firsts.filter((f) => f > through),
    );
    assert.deepEqual(await seqs(dir), range(through + 1, 10 * PER_DAY));
    const [listed] = await listSources(dir);
    assert.equal(listed!.firstSeq, through + 1);
    assert.equal(listed!.records, 10 * PER_DAY - through);
    for (const options of [{ key }, {}]) {
      const report = await verifyVault(dir, { ...options, now: clock.t });
      assert.deepEqual(report.problems, []);
      const [source] = report.sources;
      assert.deepEqual(source!.pruned, {
        throughSeq: through,
        before,
        time: info.time,
        epoch: info.epoch,
      });
      assert.equal(source!.records, 10 * PER_DAY - through);
      assert.equal(source!.unsealed, 0);
    }
  });

  test("Vault.prune never removes an unsealed record nor a source's last segment", async () => {
    const { dir, key, clock, vault } = await daily(3);
    // Two more days without a seal: records in new, closed segments.
    for (let day = 3; day < 5; day++) {
      const records = range(day * PER_DAY + 1, (day + 1) * PER_DAY).map((
        seq,
      ) => ({
        seq,
        ts: clock.t,
        line: te.encode(`late ${seq} ${"y".repeat(40)}`),
      }));
      await vault.append(WEB, records);
      clock.t += DAY;
    }
    const firsts = segmentFirsts(dir);
    assert.ok(firsts.length > 6, `${firsts}`);
    const info = await vault.prune({ before: clock.t + 365 * DAY });
    const through = info.sources[0]!.throughSeq;
    // Only what the last seal (end of day 2) covered, in whole segments:
    // as a cut-off just after that seal.
    assert.equal(through, expectedCut(firsts, T0 + 3 * DAY));
    assert.ok(through > 0 && through <= 3 * PER_DAY, `${through}`);
    assert.deepEqual(await seqs(dir), range(through + 1, 5 * PER_DAY));
    // A source with one segment keeps it, whatever the cut-off.
    await vault.append(DB, [{ seq: 1, ts: 1, line: te.encode("only") }]);
    await vault.seal();
    clock.t += DAY;
    const again = await vault.prune({ before: clock.t });
    assert.ok(again.sources.every((s) => s.source.name !== "db"));
    assert.deepEqual(await seqs(dir, "db"), [1]);
    assert.ok(segmentFirsts(dir).length >= 1);
    await vault.close();
    const report = await verifyVault(dir, { key, now: clock.t });
    assert.deepEqual(report.problems, []);
  });

  test("Vault.prune dates the segments of a vault from before the index by its seal log", async () => {
    const { dir, key, clock, vault } = await daily(10);
    await vault.close();
    const firsts = segmentFirsts(dir);
    // As an earlier version left it: no index.
    fs.rmSync(path.join(sourceDir(dir), "segments.json"));
    const reopened = await openVault(dir, {
      sealIntervalMs: 0,
      now: clock.now,
    });
    const before = T0 + 6 * DAY;
    const info = await reopened.prune({ before });
    await reopened.close();
    // The same cut as with the index all along: each segment dated by the
    // first seal that covered it, not by the seal at open.
    assert.equal(info.sources[0]!.throughSeq, expectedCut(firsts, before));
    const index = JSON.parse(
      fs.readFileSync(path.join(sourceDir(dir), "segments.json"), "utf8"),
    );
    const kept = firsts.filter((f) => f > info.sources[0]!.throughSeq);
    assert.deepEqual(
      index.segments.map((e: { first: number }) => e.first),
      kept.slice(0, -1),
    );
    for (const entry of index.segments) {
      assert.equal(entry.sealedAt, T0 + dayOf(entry.last) * DAY);
      assert.equal(entry.maxRecvTs, T0 + dayOf(entry.last) * DAY);
      assert.match(entry.lastLink, /^[0-9a-f]{64}$/);
    }
    const report = await verifyVault(dir, { key, now: clock.t });
    assert.deepEqual(report.problems, []);
  });

  test("Vault.prune of an unsealed vault writes a prune marker that verifyVault starts from", async () => {
    const { dir, clock, vault } = await daily(6, { sealed: false });
    const firsts = segmentFirsts(dir);
    const before = T0 + 3 * DAY;
    const info = await vault.prune({ before });
    await vault.close();
    const through = info.sources[0]!.throughSeq;
    assert.equal(info.epoch, undefined);
    // Unsealed: by receive time (every record of day d received at T0 + d days).
    let want = 0;
    for (let i = 0; i + 1 < firsts.length; i++) {
      if (T0 + dayOf(firsts[i + 1]! - 1) * DAY >= before) break;
      want = firsts[i + 1]! - 1;
    }
    assert.equal(through, want);
    const marker = JSON.parse(
      fs.readFileSync(path.join(sourceDir(dir), "pruned.json"), "utf8"),
    );
    assert.equal(marker.seq, through);
    const report = await verifyVault(dir, { now: clock.t });
    assert.deepEqual(report.problems, []);
    assert.equal(report.sources[0]!.pruned?.throughSeq, through);
    // A marker edited by hand no longer matches the records kept.
    fs.writeFileSync(
      path.join(sourceDir(dir), "pruned.json"),
      JSON.stringify({ ...marker, link: "00".repeat(32) }),
    );
    const edited = await verifyVault(dir, { now: clock.t });
    assert.equal(edited.ok, false);
    assert.equal(edited.problems[0]!.kind, "link");
    assert.equal(edited.problems[0]!.seq, through + 1);
  });

  test("Vault with retainMs prunes at open and again on its interval, and says so", async () => {
    const made = await daily(6);
    await made.vault.close();
    const clock = made.clock;
    const events: PruneEvent[] = [];
    let seen: (() => void) | undefined;
    const vault = await openVault(made.dir, {
      sealIntervalMs: 0,
      now: clock.now,
      retainMs: 3 * DAY,
      pruneIntervalMs: 20,
      onPrune: (e) => {
        events.push(e);
        seen?.();
      },
    });
    try {
      const next = () => new Promise<void>((resolve) => (seen = resolve));
      await next();
      const first = events[0]!;
      assert.equal(first.type, "pruned");
      if (first.type !== "pruned") return;
      const firsts = segmentFirsts(made.dir);
      assert.equal(first.before, clock.t - 3 * DAY);
      assert.ok(first.sources[0]!.throughSeq > 0);
      // Two days later, the next prune takes two more days.
      const waiting = next();
      clock.t += 2 * DAY;
      await waiting;
      const second = events[1]!;
      assert.equal(second.type, "pruned");
      if (second.type !== "pruned") return;
      assert.ok(second.sources[0]!.throughSeq > first.sources[0]!.throughSeq);
      assert.ok(segmentFirsts(made.dir).length < firsts.length);
    } finally {
      await vault.close();
    }
    const last = events.at(-1)!;
    assert.equal(last.type, "pruned");
    const report = await verifyVault(made.dir, { key: made.key, now: clock.t });
    assert.deepEqual(report.problems, []);
    assert.equal(
      report.sources[0]!.pruned?.epoch,
      last.type === "pruned" ? last.epoch : -1,
    );
  });
});

describe("verifyVault tells a prune from a deletion", () => {
  test("verifyVault fails on a segment deleted by hand after a prune", async () => {
    const { dir, key, clock, vault } = await daily(8);
    const info = await vault.prune({ before: T0 + 4 * DAY });
    await vault.close();
    const through = info.sources[0]!.throughSeq;
    // The first segment kept, removed by hand.
    fs.rmSync(
      path.join(sourceDir(dir), `${String(through + 1).padStart(20, "0")}.seg`),
    );
    for (const options of [{ key }, {}]) {
      const report = await verifyVault(dir, { ...options, now: clock.t });
      assert.equal(report.ok, false);
      const problem = report.problems.find((p) => p.source === "10.0.0.1/web");
      assert.equal(problem?.kind, "gap", problem?.message);
      assert.equal(problem?.seq, through + 1);
    }
  });

  test("verifyVault ignores a prune marker written by hand in a sealed vault", async () => {
    const { dir, key, clock, vault } = await daily(8);
    await vault.close();
    const firsts = segmentFirsts(dir);
    const cut = firsts[3]! - 1;
    // Forge: delete the first three segments and claim a prune.
    for (const first of firsts.slice(0, 3)) {
      fs.rmSync(
        path.join(sourceDir(dir), `${String(first).padStart(20, "0")}.seg`),
      );
    }
    fs.writeFileSync(
      path.join(sourceDir(dir), "pruned.json"),
      JSON.stringify({
        version: 1,
        seq: cut,
        link: "ab".repeat(32),
        before: clock.t,
        time: clock.t,
      }),
    );
    for (const options of [{ key }, {}]) {
      const report = await verifyVault(dir, { ...options, now: clock.t });
      assert.equal(report.ok, false);
      assert.equal(report.problems[0]!.kind, "gap");
      assert.equal(report.problems[0]!.seq, 1);
    }
  });

  test("verifyVault with the key fails a prune forged into a seal", async () => {
    const { dir, key, clock, vault } = await daily(8);
    await vault.close();
    const firsts = segmentFirsts(dir);
    const cut = firsts[3]! - 1;
    const record = fs.readFileSync(
      path.join(sourceDir(dir), `${String(cut + 1).padStart(20, "0")}.seg`),
    );
    // The real link of record `cut` is not needed to forge the MAC: the
    // intruder lacks the epoch key whatever they put in.
    const sealFile = path.join(dir, "seals", "00000000000000000001.seg");
    const bytes = new Uint8Array(fs.readFileSync(sealFile));
    const offsets: number[] = [];
    for (let at = 32; at < bytes.length;) {
      offsets.push(at);
      at += new DataView(bytes.buffer).getUint32(at + 4, true);
    }
    const lastAt = offsets.at(-1)!;
    const seal = decodeSeal(bytes.slice(lastAt));
    assert.ok(typeof seal !== "string");
    const forged = encodeSeal({
      ...seal,
      prunes: [{
        source: sourceHash(WEB),
        seq: cut,
        link: record.subarray(32 + 36, 32 + 68),
        before: seal.time,
      }],
    }, new Uint8Array(32).fill(7));
    fs.writeFileSync(
      sealFile,
      Buffer.concat([bytes.subarray(0, lastAt), forged]),
    );
    for (const first of firsts.slice(0, 3)) {
      fs.rmSync(
        path.join(sourceDir(dir), `${String(first).padStart(20, "0")}.seg`),
      );
    }
    const report = await verifyVault(dir, { key, now: clock.t });
    assert.equal(report.ok, false);
    assert.equal(report.problems[0]!.kind, "seal-mac");
    assert.equal(report.problems[0]!.epoch, seal.epoch);
  });

  test("verifyVault catches a prune made with a stolen key that breaks the rules", async () => {
    const { dir, key, clock, vault } = await daily(8);
    await vault.close();
    // The intruder holds the current sealing key and seals a prune of
    // their own: every record up to yesterday.
    const stolen = JSON.parse(
      fs.readFileSync(path.join(dir, "seal.key"), "utf8"),
    );
    const firsts = segmentFirsts(dir);
    const cut = firsts.at(-2)! - 1;
    const kept = fs.readFileSync(
      path.join(
        sourceDir(dir),
        `${String(firsts.at(-2)).padStart(20, "0")}.seg`,
      ),
    );
    const prior = fs.readFileSync(
      path.join(
        sourceDir(dir),
        `${String(firsts.at(-3)).padStart(20, "0")}.seg`,
      ),
    );
    const link = _lastLink(prior);
    assert.ok(link);
    const keyBytes = Buffer.from(stolen.key, "hex");
    const sealFile = path.join(dir, "seals", "00000000000000000001.seg");
    const bytes = new Uint8Array(fs.readFileSync(sealFile));
    let lastAt = 32;
    for (let at = 32; at < bytes.length;) {
      lastAt = at;
      at += new DataView(bytes.buffer).getUint32(at + 4, true);
    }
    const last = decodeSeal(bytes.slice(lastAt));
    assert.ok(typeof last !== "string");
    const forge = (before: number) =>
      encodeSeal({
        epoch: stolen.epoch,
        time: clock.t,
        vaultId: last.vaultId,
        entries: last.entries,
        prunes: [{ source: sourceHash(WEB), seq: cut, link, before }],
      }, keyBytes);
    const write = (before: number) => {
      fs.writeFileSync(sealFile, Buffer.concat([bytes, forge(before)]));
      fs.writeFileSync(
        path.join(dir, "seal.key"),
        JSON.stringify({
          ...stolen,
          epoch: stolen.epoch + 1,
          key: Buffer.from(evolveKey(keyBytes)).toString("hex"),
        }),
      );
    };
    for (const first of firsts.slice(0, -2)) {
      fs.rmSync(
        path.join(sourceDir(dir), `${String(first).padStart(20, "0")}.seg`),
      );
    }
    assert.ok(kept.length > 0);
    // A cut-off before the records it removed were first sealed.
    write(T0 + 2 * DAY);
    const early = await verifyVault(dir, { key, now: clock.t });
    assert.equal(early.ok, false);
    assert.equal(early.problems[0]!.kind, "prune", early.problems[0]!.message);
    assert.match(early.problems[0]!.message, /not before its cut-off/);
    // A cut-off that fits: a valid prune, and reported as one...
    write(clock.t);
    const fits = await verifyVault(dir, { key, now: clock.t });
    assert.deepEqual(fits.problems, []);
    assert.equal(fits.sources[0]!.pruned?.throughSeq, cut);
    assert.equal(fits.sources[0]!.pruned?.epoch, stolen.epoch);
    // ...but not under the retention the server runs with.
    const policed = await verifyVault(dir, {
      key,
      now: clock.t,
      minRetainMs: 3 * DAY,
    });
    assert.equal(policed.ok, false);
    assert.equal(policed.problems[0]!.kind, "prune");
    assert.match(
      policed.problems[0]!.message,
      /less than the minimum retention/,
    );
  });

  test("verifyVault checks pruned segments a prune did not get to delete, and the next open removes them", async () => {
    const { dir, key, clock, vault } = await daily(8);
    const copy = path.join(base, `copy-${counter++}`);
    fs.cpSync(sourceDir(dir), copy, { recursive: true });
    const info = await vault.prune({ before: T0 + 5 * DAY });
    await vault.close();
    const through = info.sources[0]!.throughSeq;
    const removed = fs.readdirSync(copy).filter((n) =>
      n.endsWith(".seg") && Number(n.slice(0, 20)) <= through
    ).sort();
    assert.ok(removed.length >= 3);
    const restore = (names: string[]) => {
      for (const name of names) {
        fs.copyFileSync(path.join(copy, name), path.join(sourceDir(dir), name));
      }
    };
    // Cut short after the seal, before any deletion: all still there.
    restore(removed);
    const report = await verifyVault(dir, { key, now: clock.t });
    assert.deepEqual(report.problems, []);
    assert.equal(report.sources[0]!.pruned?.pending, through);
    assert.equal(report.sources[0]!.records, 8 * PER_DAY - through);
    // A record among them changed (checksum fixed): its chain breaks.
    const victim = path.join(sourceDir(dir), removed[1]!);
    const original = fs.readFileSync(victim);
    const changed = new Uint8Array(original);
    let at = 32;
    for (;;) {
      const length = new DataView(changed.buffer).getUint32(at + 4, true);
      if (at + length >= changed.length) break;
      at += length;
    }
    changed[changed.length - 1]! ^= 1;
    new DataView(changed.buffer).setUint32(
      at,
      crc32c(changed.subarray(at), 4),
      true,
    );
    fs.writeFileSync(victim, changed);
    const tampered = await verifyVault(dir, { key, now: clock.t });
    assert.equal(tampered.ok, false);
    assert.equal(
      tampered.problems[0]!.kind,
      "link",
      tampered.problems[0]!.message,
    );
    assert.equal(
      tampered.problems[0]!.seq,
      Number(removed[2]!.slice(0, 20)) - 1,
    );
    fs.writeFileSync(victim, original);
    // Cut short half-way (the oldest already gone): not told from a
    // deletion.
    fs.rmSync(path.join(sourceDir(dir), removed[0]!));
    const half = await verifyVault(dir, { key, now: clock.t });
    assert.equal(half.ok, false);
    assert.equal(half.problems[0]!.kind, "gap");
    assert.match(half.problems[0]!.message, /was cut short/);
    // The next open finishes the prune.
    const reopened = await openVault(dir, {
      sealIntervalMs: 0,
      now: clock.now,
    });
    await reopened.close();
    assert.deepEqual(
      segmentFirsts(dir),
      fs.readdirSync(copy).filter((n) => n.endsWith(".seg"))
        .map((n) => Number(n.slice(0, 20))).filter((f) => f > through)
        .sort((a, b) => a - b),
    );
    const clean = await verifyVault(dir, { key, now: clock.t });
    assert.deepEqual(clean.problems, []);
    assert.equal(clean.sources[0]!.pruned?.pending, undefined);
  });

  test("verifyVault checks a source again when a prune removed its segments while it ran", async () => {
    const keys = [WEB, DB];
    const { dir, key, clock, vault } = await daily(8, { keys });
    await vault.close();
    // What the vault looks like once db is pruned, made on a copy.
    const after = path.join(base, `after-${counter++}`);
    fs.cpSync(dir, after, { recursive: true });
    const pruner = await openVault(after, {
      sealIntervalMs: 0,
      now: clock.now,
    });
    const info = await pruner.prune({ before: T0 + 5 * DAY });
    await pruner.close();
    assert.deepEqual(info.sources.map((s) => s.source.name).sort(), [
      "db",
      "web",
    ]);
    // Sources are checked in label order, 10.0.0.1/web first: while it
    // checks web, the prune of db lands (seal log and db's directory).
    let landed = false;
    const report = await verifyVault(dir, {
      key,
      now: clock.t,
      onProgress: () => {
        if (landed) return;
        landed = true;
        fs.rmSync(path.join(dir, "seals"), { recursive: true });
        fs.cpSync(path.join(after, "seals"), path.join(dir, "seals"), {
          recursive: true,
        });
        fs.rmSync(sourceDir(dir, DB), { recursive: true });
        fs.cpSync(sourceDir(after, DB), sourceDir(dir, DB), {
          recursive: true,
        });
      },
    });
    assert.ok(landed);
    const db = report.sources.find((s) => s.label === "10.0.0.2/db")!;
    assert.deepEqual(report.problems, []);
    assert.equal(
      db.pruned?.throughSeq,
      info.sources.find((s) => s.source.name === "db")!.throughSeq,
    );
  });
});

/** The chain link of the last record of a segment file. */
function _lastLink(file: Uint8Array): Uint8Array | undefined {
  let at = 32;
  let last: number | undefined;
  while (at + 20 <= file.length) {
    last = at;
    at += new DataView(file.buffer, file.byteOffset).getUint32(at + 4, true);
  }
  return last === undefined ? undefined : file.slice(last + 36, last + 68);
}
