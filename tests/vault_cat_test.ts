// Reading a vault over months: time ranges that skip whole segments by the
// segment index, JSON output, and following a vault that is being written.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openVault } from "../lib/vault/store.ts";
import type { SourceKey } from "../lib/vault/store.ts";
import {
  catRecords,
  formatRecordJson,
  matchSources,
  readRecords,
} from "../lib/vault/read.ts";
import { sourceDirName } from "../lib/vault/_key.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-vault-cat-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

let counter = 0;
function freshDir(): string {
  return path.join(base, `v${counter++}`);
}

const HOUR = 3_600_000;
const T0 = 1_700_000_000_000;
const WEB: SourceKey = { peer: "10.0.0.1", name: "web" };
const te = new TextEncoder();
const td = new TextDecoder();

/** Receive time of record `seq` in {@linkcode hourly}: 20 records an hour. */
function recvOf(seq: number): number {
  return T0 + Math.floor((seq - 1) / 20) * HOUR;
}

/** A vault of `hours` × 20 records of one source, in small segments. */
async function hourly(hours: number): Promise<string> {
  const dir = freshDir();
  const vault = await openVault(dir, { segmentBytes: 4096 });
  for (let seq = 1; seq <= hours * 20; seq += 10) {
    const records = Array.from({ length: 10 }, (_, i) => ({
      seq: seq + i,
      ts: recvOf(seq + i),
      line: te.encode(`line ${seq + i} ${"z".repeat(50)}`),
    }));
    await vault.append(WEB, records, { recvTs: recvOf(seq) });
  }
  await vault.close();
  return dir;
}

function segments(dir: string): string[] {
  const sdir = path.join(dir, "sources", sourceDirName(WEB));
  return fs.readdirSync(sdir).filter((n) => n.endsWith(".seg")).sort()
    .map((n) => path.join(sdir, n));
}

/**
 * Flips a bit in the sequence number of a segment's first record: reading
 * the segment fails, even only passing over its records' headers.
 */
function damage(file: string): void {
  const bytes = fs.readFileSync(file);
  bytes[32 + 12]! ^= 0x01;
  fs.writeFileSync(file, bytes);
}

async function seqs(
  dir: string,
  options: { since?: number; until?: number } = {},
): Promise<number[]> {
  const out: number[] = [];
  for await (const r of readRecords(dir, options)) out.push(r.seq);
  return out;
}

function expected(
  total: number,
  options: { since?: number; until?: number },
): number[] {
  const out: number[] = [];
  for (let seq = 1; seq <= total; seq++) {
    const t = recvOf(seq);
    if (options.since !== undefined && t < options.since) continue;
    if (options.until !== undefined && t >= options.until) continue;
    out.push(seq);
  }
  return out;
}

describe("readRecords time range", () => {
  test("readRecords since skips segments the index dates before it, unread", async () => {
    const dir = await hourly(24);
    const files = segments(dir);
    assert.ok(files.length > 10, `${files.length} segments`);
    const since = T0 + 20 * HOUR;
    // Segments far older than `since` are damaged: reading them would fail.
    for (const file of files.slice(0, 5)) damage(file);
    await assert.rejects(seqs(dir), { code: "ERR_CORRUPT" });
    assert.deepEqual(await seqs(dir, { since }), expected(480, { since }));
    // Without the index (a vault from before it), every segment is read
    // (passing over what is older only checks record headers).
    const index = path.join(path.dirname(files[0]!), "segments.json");
    assert.ok(fs.existsSync(index));
    fs.rmSync(index);
    await assert.rejects(seqs(dir, { since }), { code: "ERR_CORRUPT" });
  });

  test("readRecords keeps since ≤ receive time < until, index or not", async () => {
    const dir = await hourly(12);
    const cases = [
      { since: T0 + 3 * HOUR },
      { until: T0 + 5 * HOUR },
      { since: T0 + 2 * HOUR + 1, until: T0 + 7 * HOUR },
      { since: T0 + 11 * HOUR, until: T0 + 11 * HOUR },
      { since: T0 + 99 * HOUR },
    ];
    for (const range of cases) {
      assert.deepEqual(await seqs(dir, range), expected(240, range));
    }
    fs.rmSync(path.join(path.dirname(segments(dir)[0]!), "segments.json"));
    for (const range of cases) {
      assert.deepEqual(await seqs(dir, range), expected(240, range));
    }
  });

  test("readRecords until skips segments the index dates after it, unread", async () => {
    const dir = await hourly(24);
    const files = segments(dir);
    // Every segment but the first few and the last (which has no entry).
    for (const file of files.slice(6, -1)) damage(file);
    const until = T0 + 2 * HOUR;
    assert.deepEqual(await seqs(dir, { until }), expected(480, { until }));
  });
});

describe("catRecords --json", () => {
  test("formatRecordJson keeps a line exactly and safe for a terminal", () => {
    const cases: { line: Uint8Array; text: string; raw?: string }[] = [
      { line: te.encode("plain"), text: "plain" },
      { line: te.encode("é \u{1f600}"), text: "é \u{1f600}" },
      {
        line: te.encode("\x1b[2J\u202e\u0085\x7f"),
        text: "\x1b[2J\u202e\u0085\x7f",
      },
      {
        line: Uint8Array.of(0x61, 0xff, 0xc3),
        text: "a\ufffd\ufffd",
        raw: "Yf/D",
      },
    ];
    for (const { line, text, raw } of cases) {
      const json = formatRecordJson({
        peer: "10.0.0.5",
        identity: "token:web",
        name: "app",
        seq: 3,
        ts: 10,
        recvTs: 20,
        line,
        partial: true,
      });
      // Nothing a terminal acts on, and no raw line break.
      // deno-lint-ignore no-control-regex -- matching controls is the point
      assert.doesNotMatch(json, /[\x00-\x1f\x7f-\x9f\u202e\n]/);
      assert.deepEqual(JSON.parse(json), {
        source: "10.0.0.5[token:web]/app",
        peer: "10.0.0.5",
        identity: "token:web",
        name: "app",
        seq: 3,
        ts: 10,
        recvTs: 20,
        line: text,
        ...(raw !== undefined && { lineBase64: raw }),
        partial: true,
      });
    }
  });

  test("catRecords json writes one object per record, in merge order", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const db = { peer: "10.0.0.2", name: "db" };
    await vault.append(WEB, [{ seq: 1, ts: 1, line: te.encode("a") }], {
      recvTs: 100,
    });
    await vault.append(db, [{ seq: 1, ts: 2, line: te.encode("b\nc") }], {
      recvTs: 150,
    });
    await vault.append(WEB, [{ seq: 2, ts: 3, line: te.encode("d") }], {
      recvTs: 200,
    });
    await vault.close();
    let text = "";
    for await (const chunk of catRecords(dir, { json: true })) {
      text += td.decode(chunk);
    }
    const objects = text.trimEnd().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(
      objects.map((o) => [o.source, o.seq, o.recvTs, o.line]),
      [
        ["10.0.0.1/web", 1, 100, "a"],
        ["10.0.0.2/db", 1, 150, "b\nc"],
        ["10.0.0.1/web", 2, 200, "d"],
      ],
    );
  });
});

describe("catRecords --follow", () => {
  test("catRecords follow prints what arrives later, from new sources too, until aborted", async () => {
    const dir = freshDir();
    const vault = await openVault(dir, { segmentBytes: 4096 });
    try {
      await vault.append(WEB, [{ seq: 1, ts: 1, line: te.encode("first") }]);
      const stop = new AbortController();
      const out = catRecords(dir, {
        source: "web",
        follow: true,
        pollMs: 10,
        signal: stop.signal,
      })[Symbol.asyncIterator]();
      const next = async () => {
        const step = await out.next();
        assert.equal(step.done, false);
        return td.decode(step.value);
      };
      // Following labels every line: more sources may match later.
      assert.equal(await next(), "10.0.0.1/web\tfirst\n");
      // Enough to start new segments while it follows.
      const records = Array.from({ length: 120 }, (_, i) => ({
        seq: i + 2,
        ts: 1,
        line: te.encode(`more ${i + 2} ${"m".repeat(60)}`),
      }));
      await vault.append(WEB, records);
      let got = "";
      while (!got.includes("more 121 ")) got += await next();
      assert.equal(got.split("\n").length - 1, 120);
      const other = { peer: "10.0.0.9", name: "web" };
      await vault.append(other, [{ seq: 1, ts: 1, line: te.encode("new") }]);
      assert.equal(await next(), "10.0.0.9/web\tnew\n");
      stop.abort();
      assert.equal((await out.next()).done, true);
    } finally {
      await vault.close();
    }
  });

  test("catRecords refuses to follow up to an end time", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await vault.close();
    await assert.rejects(
      catRecords(dir, { follow: true, until: 5 }).next(),
      RangeError,
    );
  });

  test("matchSources names the sources a filter picks, and none for a stranger", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await vault.append(WEB, [{ seq: 1, ts: 1, line: te.encode("x") }]);
    await vault.append({ peer: "10.0.0.2", name: "web" }, [{
      seq: 1,
      ts: 1,
      line: te.encode("y"),
    }]);
    await vault.close();
    assert.deepEqual(await matchSources(dir, "web"), [
      "10.0.0.1/web",
      "10.0.0.2/web",
    ]);
    assert.deepEqual(await matchSources(dir, "10.0.0.2/web"), [
      "10.0.0.2/web",
    ]);
    assert.deepEqual(await matchSources(dir, "nope"), []);
  });
});
