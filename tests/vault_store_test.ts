import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createHash } from "node:crypto";
import { openVault } from "../lib/vault/store.ts";
import type { AppendRecord, VaultEvent } from "../lib/vault/store.ts";
import { listSources, readRecords } from "../lib/vault/read.ts";
import { sourceDirName } from "../lib/vault/_key.ts";
import { _internals } from "../lib/segment/log.ts";
import {
  DEFAULT_MAX_SOURCES_PER_PEER,
  sourceKey,
  sourceLabel,
} from "../lib/vault/store.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import {
  MoatError,
  SourceNameError,
  TooManyRecordsError,
  TooManySourcesError,
} from "../lib/errors.ts";
import { encodeFrame } from "../lib/framer.ts";
import { encodeShipBatch, indexShipBatch, Kind } from "../lib/protocol.ts";
import { encodeVaultRecords } from "../lib/vault/_format.ts";
import { checkLink } from "../lib/vault/_chain.ts";
import { crc32c } from "../lib/segment/crc32c.ts";
import { openFds, writeLegacySource } from "./_vault_test_utils.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-vault-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

let counter = 0;
function freshDir(): string {
  return path.join(base, `v${counter++}`);
}

const te = new TextEncoder();
const td = new TextDecoder();
const KEY = { peer: "127.0.0.1", name: "web1" };

function records(from: number, to: number, prefix = "line"): AppendRecord[] {
  const out: AppendRecord[] = [];
  for (let seq = from; seq <= to; seq++) {
    out.push({ seq, ts: 1_000 + seq, line: te.encode(`${prefix} ${seq}`) });
  }
  return out;
}

async function readAll(
  dir: string,
  source?: string,
): Promise<{ seq: number; text: string; name: string }[]> {
  const out = [];
  for await (
    const r of readRecords(dir, source === undefined ? {} : { source })
  ) {
    out.push({ seq: r.seq, text: td.decode(r.line), name: r.name });
  }
  return out;
}

function segmentFiles(dir: string, key = KEY): string[] {
  const sdir = path.join(dir, "sources", sourceDirName(key));
  return fs.readdirSync(sdir).filter((n) => n.endsWith(".seg")).sort()
    .map((n) => path.join(sdir, n));
}

describe("encodeVaultRecords", () => {
  test("encodeVaultRecords encodes a ship frame read by index as the same records in an array, each link and CRC as the reader checks them", () => {
    const lengths = [0, 1, 63, 64, 65, 300, 0, 17];
    const records = lengths.map((n, i) => ({
      seq: 40 + i,
      ts: 1_700_000_000_000 + i,
      partial: i % 3 === 1,
      line: new Uint8Array(n).map((_, k) => (k * 7 + i) & 0xff),
    }));
    const genesis = createHash("sha256").update("genesis").digest();
    const fromArray = { link: new Uint8Array(genesis) };
    const fromView = { link: new Uint8Array(genesis) };
    const a = encodeVaultRecords(records.slice(2), 99, { chain: fromArray });
    const b = encodeVaultRecords(
      indexShipBatch(encodeShipBatch(records)),
      99,
      { chain: fromView, from: 2 },
    );
    assert.deepEqual(b, a);
    assert.deepEqual(fromView.link, fromArray.link);
    // Each record against the reader's own checks: its CRC, its link from
    // the one before (computeLink), the line and flags.
    const view = new DataView(a.buffer, a.byteOffset, a.byteLength);
    let prev: Uint8Array = genesis;
    let at = 0;
    for (const r of records.slice(2)) {
      const length = view.getUint32(at + 4, true);
      const record = a.slice(at, at + length);
      assert.equal(view.getUint32(at, true), crc32c(record, 4));
      const { link, ok } = checkLink(record, prev);
      assert.ok(ok, `link of record ${r.seq}`);
      assert.deepEqual(record.subarray(68), r.line);
      assert.equal(record[9], 0x01 | (r.partial ? 0x02 : 0));
      prev = link;
      at += length;
    }
    assert.equal(at, a.length);
    assert.deepEqual(fromArray.link, new Uint8Array(prev));
  });
});

describe("Vault.append", () => {
  test("Vault.append stores records and resolves with the last sequence number", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    assert.equal(vault.source(KEY).lastSeq, 0);
    assert.equal(await vault.append(KEY, records(1, 3)), 3);
    assert.equal(vault.source(KEY).lastSeq, 3);
    await vault.close();
    const got = await readAll(dir);
    assert.deepEqual(got.map((r) => r.text), ["line 1", "line 2", "line 3"]);
  });

  test("Vault.append skips duplicates and keeps the rest of the batch", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await vault.append(KEY, records(1, 5));
    assert.equal(await vault.append(KEY, records(3, 8, "new")), 8);
    assert.equal(await vault.append(KEY, records(1, 8, "dup")), 8);
    assert.equal(await vault.append(KEY, records(2, 4, "dup")), 4);
    assert.equal(await vault.append(KEY, []), 8);
    await vault.close();
    const got = await readAll(dir);
    assert.deepEqual(got.map((r) => r.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.deepEqual(got.map((r) => r.text).slice(4), [
      "line 5",
      "new 6",
      "new 7",
      "new 8",
    ]);
  });

  const rejections: {
    label: string;
    batch: () => AppendRecord[];
    code?: string;
    name?: string;
  }[] = [
    { label: "a gap", batch: () => records(5, 6), code: "ERR_SEQ_GAP" },
    {
      label: "a gap after duplicates",
      batch: () => [...records(2, 3), ...records(5, 5)],
      code: "ERR_SEQ_GAP",
    },
    {
      label: "records out of order",
      batch: () => [...records(4, 4), ...records(6, 6)],
      code: "ERR_SEQUENCE",
    },
    {
      label: "a repeated new record",
      batch: () => [...records(4, 4), ...records(4, 4)],
      code: "ERR_SEQUENCE",
    },
    {
      label: "a sequence number of 0",
      batch: () => [{ seq: 0, ts: 1, line: te.encode("x") }],
      name: "RangeError",
    },
    {
      label: "a fractional timestamp",
      batch: () => [{ seq: 4, ts: 1.5, line: te.encode("x") }],
      name: "RangeError",
    },
    {
      label: "a negative timestamp",
      batch: () => [{ seq: 4, ts: -1, line: te.encode("x") }],
      name: "RangeError",
    },
    {
      label: "a line that is not bytes",
      batch: () => [{ seq: 4, ts: 1, line: "x" as unknown as Uint8Array }],
      name: "TypeError",
    },
    {
      label: "an overlong line",
      batch: () => [{ seq: 4, ts: 1, line: new Uint8Array(1025) }],
      name: "RangeError",
    },
  ];
  for (const { label, batch, code, name } of rejections) {
    test(`Vault.append rejects ${label} and stores nothing of the call`, async () => {
      const dir = freshDir();
      const vault = await openVault(dir, { maxLineBytes: 1024 });
      await vault.append(KEY, records(1, 3));
      const promise = vault.append(KEY, batch());
      assert.ok(promise instanceof Promise);
      await assert.rejects(promise, (error: Error) => {
        if (code) assert.equal((error as MoatError).code, code);
        if (name) assert.equal(error.name, name);
        assert.doesNotMatch(error.message, /\.$/);
        return true;
      });
      assert.equal(vault.source(KEY).acceptedSeq, 3);
      await vault.append(KEY, records(4, 4));
      await vault.close();
      assert.deepEqual((await readAll(dir)).map((r) => r.seq), [1, 2, 3, 4]);
    });
  }

  test("Vault.append gap error names the missing records", async () => {
    const vault = await openVault(freshDir());
    await vault.append(KEY, records(1, 3));
    await assert.rejects(vault.append(KEY, records(7, 7)), {
      code: "ERR_SEQ_GAP",
      message:
        'Cannot append to source "127.0.0.1/web1": record 7 arrived but the vault holds up to 3 (records 4 to 6 are missing)',
    });
    await vault.close();
  });

  test("Vault.append keeps order for calls made without waiting", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const calls = [];
    for (let i = 0; i < 50; i++) {
      calls.push(vault.append(KEY, records(i * 10 + 1, i * 10 + 10)));
    }
    assert.deepEqual(
      await Promise.all(calls),
      calls.map((_, i) => i * 10 + 10),
    );
    await vault.close();
    const got = await readAll(dir);
    assert.deepEqual(got.map((r) => r.seq), records(1, 500).map((r) => r.seq));
  });

  test("Vault.append rotates segments and reads across them", async () => {
    const dir = freshDir();
    const vault = await openVault(dir, { segmentBytes: 4096 });
    for (let i = 0; i < 40; i++) {
      await vault.append(KEY, records(i * 10 + 1, i * 10 + 10));
    }
    await vault.close();
    const files = segmentFiles(dir);
    assert.ok(files.length > 3, `${files.length} segments`);
    for (const file of files) {
      assert.ok(fs.statSync(file).size <= 4096, file);
    }
    assert.equal(path.basename(files[0]!), "00000000000000000001.seg");
    const got = await readAll(dir);
    assert.equal(got.length, 400);
    assert.ok(
      got.every((r, i) => r.seq === i + 1 && r.text === `line ${i + 1}`),
    );
    const reopened = await openVault(dir, { segmentBytes: 4096 });
    assert.equal(reopened.source(KEY).lastSeq, 400);
    await reopened.append(KEY, records(401, 401));
    await reopened.close();
    assert.equal((await readAll(dir)).length, 401);
  });

  test("Vault.append stores the shipper time, receive time and partial flag", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await vault.append(KEY, [
      { seq: 1, ts: 2 ** 53 - 1, line: te.encode("a"), partial: true },
      { seq: 2, ts: 0, line: new Uint8Array(0) },
    ], { recvTs: 2 ** 40 + 7 });
    await vault.close();
    const got = await Array.fromAsync(readRecords(dir));
    assert.deepEqual(
      got.map((r) => [r.seq, r.ts, r.recvTs, r.partial, r.line.length]),
      [[1, 2 ** 53 - 1, 2 ** 40 + 7, true, 1], [2, 0, 2 ** 40 + 7, false, 0]],
    );
  });

  test("Vault.append rejects after close", async () => {
    const vault = await openVault(freshDir());
    await vault.close();
    await assert.rejects(vault.append(KEY, records(1, 1)), {
      code: "ERR_CLOSED",
    });
  });
});

describe("Vault group commit", () => {
  test("Vault group commit shares fsync rounds across 10 concurrent sources", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const keys = Array.from(
      { length: 10 },
      (_, i) => ({ peer: `10.0.0.${i}`, name: `app${i % 3}` }),
    );
    await Promise.all(keys.map(async (key, k) => {
      const pending: Promise<number>[] = [];
      for (let b = 0; b < 40; b++) {
        pending.push(
          vault.append(key, records(b * 25 + 1, b * 25 + 25, `k${k}`)),
        );
        if (pending.length >= 4) await pending.shift();
        if (b % 7 === 0) await new Promise((r) => setTimeout(r, 0));
      }
      await Promise.all(pending);
      assert.equal(vault.source(key).lastSeq, 1000);
    }));
    const stats = vault.stats;
    assert.equal(stats.appends, 400);
    // Far fewer commit rounds than appends: the rounds were shared.
    assert.ok(stats.commits < stats.appends / 2, JSON.stringify(stats));
    assert.ok(stats.syncs >= stats.commits, JSON.stringify(stats));
    await vault.close();
    for (const [k, key] of keys.entries()) {
      const label = `${key.peer}/${key.name}`;
      const got = await readAll(dir, label);
      assert.equal(got.length, 1000, label);
      assert.ok(
        got.every((r, i) => r.seq === i + 1 && r.text === `k${k} ${i + 1}`),
        label,
      );
    }
    const listed = await listSources(dir);
    assert.equal(listed.length, 10);
    assert.ok(listed.every((s) => s.records === 1000 && s.lastSeq === 1000));
  });

  test("Vault group commit resolves no append before its fsync", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const synced = new Set<string>();
    const written: string[] = [];
    let resolvedEarly = false;
    _internals.fault = (step, file) => {
      if (step === "write") written.push(file);
      if (step === "synced") synced.add(file);
    };
    try {
      const keys = Array.from(
        { length: 10 },
        (_, i) => ({ peer: "p", name: `s${i}` }),
      );
      await Promise.all(
        keys.map((key) =>
          vault.append(key, records(1, 20)).then(() => {
            const file = segmentFiles(dir, key)[0]!;
            if (!synced.has(file)) resolvedEarly = true;
          })
        ),
      );
    } finally {
      _internals.fault = undefined;
    }
    assert.equal(resolvedEarly, false);
    assert.equal(written.length, 10);
    // Issued in one tick, the ten appends shared one commit round.
    assert.equal(vault.stats.commits, 1);
    await vault.close();
  });
});

describe("openVault recovery", () => {
  async function makeVault(dir: string, n: number): Promise<string> {
    const vault = await openVault(dir);
    await vault.append(KEY, records(1, n - 1));
    await vault.append(KEY, records(n, n, "the last record"));
    await vault.close();
    return segmentFiles(dir)[0]!;
  }

  test("openVault cuts a torn last record at every byte offset", async () => {
    const template = freshDir();
    const file = await makeVault(template, 5);
    const full = fs.readFileSync(file);
    const lastLength = 68 + "the last record 5".length;
    const goodEnd = full.length - lastLength;
    for (let cut = goodEnd; cut < full.length; cut++) {
      const dir = freshDir();
      fs.cpSync(template, dir, { recursive: true });
      const seg = segmentFiles(dir)[0]!;
      fs.truncateSync(seg, cut);
      const events: VaultEvent[] = [];
      const vault = await openVault(dir, { onEvent: (e) => events.push(e) });
      assert.equal(vault.source(KEY).lastSeq, 4, `cut at ${cut}`);
      if (cut === goodEnd) {
        assert.deepEqual(events, []);
      } else {
        assert.equal(events.length, 1, `cut at ${cut}`);
        const event = events[0]!;
        assert.equal(event.type, "truncated");
        assert.equal(event.bytes, cut - goodEnd);
        assert.deepEqual(event.source, KEY);
      }
      assert.equal(fs.statSync(seg).size, goodEnd);
      // The vault goes on from record 5.
      await vault.append(KEY, records(5, 6, "again"));
      await vault.close();
      const got = await readAll(dir);
      assert.deepEqual(got.map((r) => r.text), [
        "line 1",
        "line 2",
        "line 3",
        "line 4",
        "again 5",
        "again 6",
      ], `cut at ${cut}`);
      fs.rmSync(dir, { recursive: true });
    }
  });

  const damages: {
    label: string;
    damage: (buf: Buffer, end: number) => Buffer;
    lastSeq?: number;
  }[] = [
    {
      label: "a flipped byte in the last line",
      damage: (buf) => {
        const copy = Buffer.from(buf);
        copy[copy.length - 2]! ^= 0x20;
        return copy;
      },
    },
    {
      label: "a flipped byte in the last header",
      damage: (buf, end) => {
        const copy = Buffer.from(buf);
        copy[end + 14]! ^= 0x01;
        return copy;
      },
    },
    {
      label: "zeros appended",
      damage: (buf) => Buffer.concat([buf, Buffer.alloc(4096)]),
      lastSeq: 3,
    },
    {
      label: "a huge length field",
      damage: (buf, end) => {
        const copy = Buffer.from(buf);
        copy.writeUInt32LE(0xfffffff0, end + 4);
        return copy;
      },
    },
  ];
  for (const { label, damage, lastSeq = 2 } of damages) {
    test(`openVault cuts ${label} and never serves it`, async () => {
      const dir = freshDir();
      const file = await makeVault(dir, 3);
      const buf = fs.readFileSync(file);
      const end = buf.length - (68 + "the last record 3".length);
      const damaged = damage(buf, end);
      fs.writeFileSync(file, damaged);
      const expected = [1, 2, 3].slice(0, lastSeq);
      // A reader before recovery stops at the damage too.
      assert.deepEqual((await readAll(dir)).map((r) => r.seq), expected);
      const events: VaultEvent[] = [];
      const vault = await openVault(dir, { onEvent: (e) => events.push(e) });
      assert.equal(vault.source(KEY).lastSeq, lastSeq);
      assert.equal(events.length, 1);
      assert.equal(events[0]!.type, "truncated");
      const kept = lastSeq === 3 ? buf.length : end;
      assert.equal(events[0]!.bytes, damaged.length - kept);
      await vault.close();
      assert.equal(fs.statSync(file).size, kept);
      assert.deepEqual((await readAll(dir)).map((r) => r.seq), expected);
    });
  }

  test("openVault removes a last segment with a torn header", async () => {
    const dir = freshDir();
    const vault = await openVault(dir, { segmentBytes: 4096 });
    for (let i = 0; i < 10; i++) {
      await vault.append(KEY, records(i * 20 + 1, i * 20 + 20));
    }
    await vault.close();
    const files = segmentFiles(dir);
    const last = files.at(-1)!;
    const firstOfLast = Number(path.basename(last).slice(0, 20));
    for (const size of [0, 7, 31, 32, 40]) {
      const copy = freshDir();
      fs.cpSync(dir, copy, { recursive: true });
      const seg = segmentFiles(copy).at(-1)!;
      fs.truncateSync(seg, size);
      const events: VaultEvent[] = [];
      const reopened = await openVault(copy, {
        segmentBytes: 4096,
        onEvent: (e) => events.push(e),
      });
      assert.equal(
        reopened.source(KEY).lastSeq,
        firstOfLast - 1,
        `size ${size}`,
      );
      assert.deepEqual(events.map((e) => e.type), ["removed"]);
      assert.equal(fs.existsSync(seg), false);
      await reopened.append(KEY, records(firstOfLast, 200));
      await reopened.close();
      const got = await readAll(copy);
      assert.equal(got.length, 200);
      assert.ok(got.every((r, i) => r.seq === i + 1));
    }
  });

  test("openVault removes an interrupted source directory", async () => {
    const dir = freshDir();
    await (await openVault(dir)).close();
    const temp = path.join(dir, "sources", ".tmp-x~y~0123-abc");
    fs.mkdirSync(temp);
    fs.writeFileSync(path.join(temp, "source.json"), "{");
    const vault = await openVault(dir);
    assert.equal(fs.existsSync(temp), false);
    assert.equal(vault.sources().length, 0);
    await vault.close();
  });

  test("openVault refuses a source directory that does not match its key", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await vault.append(KEY, records(1, 1));
    await vault.close();
    const sdir = path.join(dir, "sources", sourceDirName(KEY));
    fs.writeFileSync(
      path.join(sdir, "source.json"),
      JSON.stringify({ peer: "10.9.9.9", name: "web1" }),
    );
    await assert.rejects(openVault(dir), { code: "ERR_CORRUPT" });
  });
});

describe("Vault write failures", () => {
  const steps = ["write", "sync"] as const;
  for (const step of steps) {
    test(`Vault.append rejects on a failed ${step}, keeps nothing, and works again`, async () => {
      const dir = freshDir();
      const vault = await openVault(dir);
      await vault.append(KEY, records(1, 3));
      const file = segmentFiles(dir)[0]!;
      const durable = fs.statSync(file).size;
      let failures = 0;
      _internals.fault = (at, target) => {
        if (at !== step) return;
        failures++;
        // A partial write reached the file before the disk filled up.
        fs.appendFileSync(target, Buffer.from("garbage that must go"));
        throw Object.assign(new Error("No space left on device"), {
          code: "ENOSPC",
        });
      };
      try {
        const a = vault.append(KEY, records(4, 6));
        const b = vault.append(KEY, records(7, 8));
        await assert.rejects(a, { code: "ENOSPC" });
        await assert.rejects(b, { code: "ENOSPC" });
      } finally {
        _internals.fault = undefined;
      }
      assert.equal(failures, 1);
      assert.equal(vault.source(KEY).lastSeq, 3);
      assert.equal(vault.source(KEY).acceptedSeq, 3);
      assert.equal(fs.statSync(file).size, durable);
      // Space is back: the shipper resends from 4.
      assert.equal(await vault.append(KEY, records(4, 8, "retry")), 8);
      await vault.close();
      const got = await readAll(dir);
      assert.deepEqual(got.map((r) => r.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
      assert.equal(got[3]!.text, "retry 4");
    });
  }

  test("Vault.append failing on a new source's first segment leaves no file", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    _internals.fault = (step) => {
      if (step === "sync") throw new Error("Input/output error");
    };
    try {
      await assert.rejects(vault.append(KEY, records(1, 2)), /Input\/output/);
    } finally {
      _internals.fault = undefined;
    }
    assert.deepEqual(segmentFiles(dir), []);
    await vault.append(KEY, records(1, 2));
    await vault.close();
    assert.equal((await readAll(dir)).length, 2);
  });

  test("Vault write failure in one source does not fail the others", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const bad = { peer: "p", name: "bad" };
    const good = { peer: "p", name: "good" };
    await vault.append(bad, records(1, 1));
    await vault.append(good, records(1, 1));
    const badFile = segmentFiles(dir, bad)[0]!;
    _internals.fault = (step, file) => {
      if (step === "sync" && file === badFile) throw new Error("EIO");
    };
    try {
      const results = await Promise.allSettled([
        vault.append(bad, records(2, 3)),
        vault.append(good, records(2, 3)),
      ]);
      assert.deepEqual(results.map((r) => r.status), ["rejected", "fulfilled"]);
    } finally {
      _internals.fault = undefined;
    }
    await vault.close();
  });
});

describe("openVault", () => {
  test("openVault refuses a non-empty directory that is not a vault", async () => {
    const dir = freshDir();
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, "notes.txt"), "mine");
    await assert.rejects(openVault(dir), { code: "ERR_NOT_VAULT" });
    assert.deepEqual(fs.readdirSync(dir), ["notes.txt"]);
  });

  test("openVault refuses a vault another live process holds", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await assert.rejects(openVault(dir), { code: "ERR_LOCKED" });
    await vault.close();
    const again = await openVault(dir);
    await again.close();
  });

  test("openVault takes over a lock left by a dead process", async () => {
    const dir = freshDir();
    await (await openVault(dir)).close();
    fs.writeFileSync(path.join(dir, "LOCK"), "2147483646\n");
    const vault = await openVault(dir);
    await vault.close();
    assert.equal(fs.existsSync(path.join(dir, "LOCK")), false);
  });

  test("openVault keeps hostile source names inside the sources directory", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    // Keys the vault creates, and keys only earlier versions created (a "/"
    // or a control character in the name, an empty or "/"-holding peer):
    // those are refused now, so they are written as such a version left
    // them, and must stay inside the sources directory and readable.
    const created = [
      { peer: ".", name: ".." },
      { peer: "a~b", name: "c" },
      { peer: "a", name: "b~c" },
      { peer: "x".repeat(1024), name: "\u202e".repeat(300) },
    ];
    const legacy = [
      { peer: "../..", name: "../../../etc/passwd" },
      { peer: "::ffff:10.0.0.1", name: "a/b\\c\0d" },
      { peer: "x".repeat(1024), name: "\u202e\u0000\n".repeat(300) },
      { peer: "", name: "empty peer" },
    ];
    const keys = [...created, ...legacy];
    for (const key of created) await vault.append(key, records(1, 1));
    for (const key of legacy) {
      assert.throws(() => vault.source(key), TypeError);
    }
    await vault.close();
    for (const key of legacy) writeLegacySource(dir, key, [{ line: "x" }]);
    const entries = fs.readdirSync(path.join(dir, "sources"));
    assert.equal(entries.length, keys.length);
    for (const entry of entries) {
      assert.match(
        entry,
        /^([A-Za-z0-9_-][A-Za-z0-9._-]{0,39})?~[A-Za-z0-9_-][A-Za-z0-9._-]{0,39}~[0-9a-f]{32}$/,
      );
    }
    assert.deepEqual(fs.readdirSync(base).filter((n) => n === "etc"), []);
    const listed = await listSources(dir);
    assert.deepEqual(
      listed.map((s) => JSON.stringify([s.peer, s.name])).sort(),
      keys.map((k) => JSON.stringify([k.peer, k.name])).sort(),
    );
  });

  test("Vault.source rejects a malformed key", async () => {
    const vault = await openVault(freshDir());
    assert.throws(() => vault.source({ peer: "p", name: "" }), TypeError);
    assert.throws(
      () => vault.source({ peer: 1 as unknown as string, name: "n" }),
      TypeError,
    );
    assert.throws(
      () => vault.source({ peer: "p", name: "n".repeat(1025) }),
      TypeError,
    );
    await vault.close();
  });
});

describe("Vault bounds what a peer can make it keep", () => {
  test(
    "Vault keeps at most maxOpenSegments files open over 2,000 sources",
    { skip: openFds() === undefined ? "needs /proc/self/fd" : false },
    async () => {
      const dir = freshDir();
      const max = 32;
      const vault = await openVault(dir, {
        maxOpenSegments: max,
        maxSourcesPerPeer: 2000,
      });
      const keys = Array.from(
        { length: 2000 },
        (_, i) => ({ peer: "127.0.0.1", name: `s${i}` }),
      );
      let peak = 0;
      let calls = 0;
      // Sampled at every 10th write or fsync: 32 commits run all along.
      _internals.fault = () => {
        if (calls++ % 10 === 0) peak = Math.max(peak, openFds(dir)!);
      };
      try {
        // All at once: one commit round over 2,000 new sources.
        await Promise.all(keys.map((key) => vault.append(key, records(1, 1))));
      } finally {
        _internals.fault = undefined;
      }
      // Then one by one: each reopens a file closed to make room.
      for (const key of keys) await vault.append(key, records(2, 2));
      const idle = openFds(dir)!;
      // At rest: the cached segment files, nothing more.
      assert.ok(idle <= max, `${idle} descriptors held at rest`);
      // While committing: the cached files plus, per parallel commit, the
      // directories it fsyncs and the source.json it writes, whose closes
      // may still be on their way (without the bound: over 2,000).
      assert.ok(peak <= 4 * max, `${peak} descriptors at the peak`);
      assert.ok(vault.stats.evictions >= 2000, JSON.stringify(vault.stats));
      await vault.close();
      assert.equal(openFds(dir), 0, "close leaves no descriptor open");
      const listed = await listSources(dir);
      assert.equal(listed.length, 2000);
      assert.ok(listed.every((s) => s.records === 2 && s.segments === 1));
    },
  );

  test("Vault.source refuses a peer's 65th source by default, and only that peer's", async () => {
    assert.equal(DEFAULT_MAX_SOURCES_PER_PEER, 64);
    const dir = freshDir();
    const vault = await openVault(dir);
    for (let i = 0; i < 64; i++) {
      vault.source({ peer: "10.0.0.1", name: `s${i}` });
    }
    const refused = (e: unknown) => {
      assert.ok(e instanceof TooManySourcesError);
      assert.equal(e.code, "ERR_TOO_MANY_SOURCES");
      assert.ok(!e.message.includes(dir), e.message);
      assert.match(e.message, /"10\.0\.0\.1".* 64 /);
      return true;
    };
    assert.throws(
      () => vault.source({ peer: "10.0.0.1", name: "s64" }),
      refused,
    );
    // Another identity from the same address gets no more room.
    assert.throws(
      () => vault.source({ peer: "10.0.0.1", identity: "token:x", name: "s0" }),
      refused,
    );
    await assert.rejects(
      vault.append({ peer: "10.0.0.1", name: "s64" }, records(1, 1)),
      refused,
    );
    // The peer's sources still work, and other peers are not affected.
    await vault.append({ peer: "10.0.0.1", name: "s0" }, records(1, 1));
    await vault.append({ peer: "10.0.0.2", name: "s64" }, records(1, 1));
    await vault.close();
  });

  test("Vault counts the sources already on disk against maxSourcesPerPeer", async () => {
    const dir = freshDir();
    let vault = await openVault(dir, { maxSourcesPerPeer: 3 });
    for (let i = 0; i < 3; i++) {
      await vault.append({ peer: "10.0.0.1", name: `s${i}` }, records(1, 1));
    }
    await vault.close();
    vault = await openVault(dir, { maxSourcesPerPeer: 3 });
    assert.throws(
      () => vault.source({ peer: "10.0.0.1", name: "s3" }),
      { code: "ERR_TOO_MANY_SOURCES" },
    );
    await vault.append({ peer: "10.0.0.1", name: "s2" }, records(2, 2));
    await vault.close();
    assert.equal((await listSources(dir)).length, 3);
  });

  test("Vault.append refuses more than maxRecordsPerAppend records and stores nothing of them", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const refused = (e: unknown) => {
      assert.ok(e instanceof TooManyRecordsError);
      assert.ok(e instanceof RangeError);
      assert.equal(e.code, "ERR_TOO_MANY_RECORDS");
      assert.ok(!e.message.includes(dir), e.message);
      return true;
    };
    await assert.rejects(vault.append(KEY, records(1, 4097)), refused);
    assert.equal(vault.source(KEY).acceptedSeq, 0);
    assert.equal(await vault.append(KEY, records(1, 4096)), 4096);
    await vault.close();
    assert.equal((await readAll(dir)).length, 4096);
  });

  test("Vault stores a batch of empty records in at most 3.3 bytes per wire byte", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const batch = Array.from(
      { length: 4096 },
      (_, i) => ({
        seq: i + 1,
        ts: 1,
        line: new Uint8Array(0),
        partial: false,
      }),
    );
    const wire = encodeFrame({
      type: Kind.ShipBatch,
      payload: encodeShipBatch(batch),
    }).length;
    await vault.append(KEY, batch);
    await vault.close();
    const stored = fs.statSync(segmentFiles(dir)[0]!).size;
    // 68 bytes per record on disk (header, times, chain link) against 21 on
    // the wire: the worst case, and a bound; one batch costs at most 4096
    // chain hashes.
    assert.equal(stored, 32 + 4096 * 68);
    assert.ok(stored / wire < 3.3, `${stored} bytes for ${wire}`);
  });
});

describe("Vault source keys", () => {
  test("Vault keys a source by address and identity: a shared token never joins two hosts", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const a = sourceKey(
      { address: "10.0.0.1", identity: "token:shared" },
      "web",
    );
    const b = sourceKey(
      { address: "10.0.0.2", identity: "token:shared" },
      "web",
    );
    const anon = sourceKey({ address: "10.0.0.1", identity: undefined }, "web");
    await vault.append(a, records(1, 3, "a"));
    // Host b, with the same token and name, starts its own source.
    assert.equal(vault.source(b).lastSeq, 0);
    await vault.append(b, records(1, 1, "b"));
    assert.equal(vault.source(anon).lastSeq, 0);
    assert.notEqual(vault.source(a), vault.source(b));
    await vault.close();
    const listed = await listSources(dir);
    assert.deepEqual(
      listed.map((s) => [sourceLabel(s), s.identity, s.records]),
      [
        ["10.0.0.1[token:shared]/web", "token:shared", 3],
        ["10.0.0.2[token:shared]/web", "token:shared", 1],
      ],
    );
    const got = await readAll(dir, "10.0.0.2[token:shared]/web");
    assert.deepEqual(got.map((r) => r.text), ["b 1"]);
    const saved = JSON.parse(
      fs.readFileSync(
        path.join(dir, "sources", sourceDirName(b), "source.json"),
        "utf8",
      ),
    );
    assert.deepEqual(saved, {
      peer: "10.0.0.2",
      identity: "token:shared",
      name: "web",
    });
  });

  test("Vault reads, verifies and extends a source written before keys had an identity", async () => {
    const dir = freshDir();
    // What the server stored for an authenticated peer before: the
    // identity alone as the peer. Its directory name and chain are
    // unchanged: SHA-256 over JSON [peer, name].
    const old = { peer: "token:alice", name: "auth" };
    const hash = createHash("sha256").update(
      JSON.stringify(["token:alice", "auth"]),
    )
      .digest("hex").slice(0, 32);
    assert.equal(sourceDirName(old), `token_alice~auth~${hash}`);
    let vault = await openVault(dir);
    await vault.append(old, records(1, 2));
    await vault.close();
    vault = await openVault(dir);
    assert.equal(vault.source(old).lastSeq, 2);
    await vault.append(old, records(3, 3));
    // The same host under today's key is another source.
    const now = sourceKey(
      { address: "127.0.0.1", identity: "token:alice" },
      "auth",
    );
    assert.equal(vault.source(now).lastSeq, 0);
    await vault.close();
    const report = await verifyVault(dir);
    assert.deepEqual(report.problems, []);
    assert.deepEqual(report.sources.map((s) => [s.label, s.records]), [
      ["token:alice/auth", 3],
    ]);
  });

  test("Vault.source refuses a name holding '/' or a control character with ERR_SOURCE_NAME", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    for (
      const name of [
        "127.0.0.5/auth",
        "a\nb",
        "tab\there",
        "nul\0",
        "del\x7f",
        "/",
      ]
    ) {
      assert.throws(
        () => vault.source({ peer: "10.0.0.9", name }),
        (e: unknown) => {
          assert.ok(e instanceof SourceNameError, String(e));
          assert.ok(e instanceof TypeError);
          assert.equal(e.code, "ERR_SOURCE_NAME");
          assert.ok(!e.message.includes(dir));
          assert.doesNotMatch(e.message, /[\n\t\0\x7f]/);
          return true;
        },
      );
    }
    // Address and identity come from the server: a bad one is a TypeError.
    for (
      const key of [
        { peer: "", name: "x" },
        { peer: "10.0.0.1/8", name: "x" },
        { peer: "10.0.0.1 ", name: "x" },
        { peer: "10.0.0.1", identity: "", name: "x" },
        { peer: "10.0.0.1", identity: "token:a]", name: "x" },
      ]
    ) {
      assert.throws(() => vault.source(key), (e: unknown) => {
        assert.ok(e instanceof TypeError && !(e instanceof SourceNameError));
        return true;
      }, JSON.stringify(key));
    }
    await vault.close();
    assert.deepEqual(fs.readdirSync(path.join(dir, "sources")), []);
  });
});
