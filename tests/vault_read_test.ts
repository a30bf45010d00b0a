import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openVault } from "../lib/vault/store.ts";
import type { AppendRecord } from "../lib/vault/store.ts";
import { listSources, readRecords } from "../lib/vault/read.ts";
import type { VaultRecord } from "../lib/vault/read.ts";
import { sourceDirName } from "../lib/vault/_key.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-vault-read-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

let counter = 0;
function freshDir(): string {
  return path.join(base, `v${counter++}`);
}

const te = new TextEncoder();
const td = new TextDecoder();

function records(from: number, to: number, prefix: string): AppendRecord[] {
  const out: AppendRecord[] = [];
  for (let seq = from; seq <= to; seq++) {
    out.push({ seq, ts: 500 + seq, line: te.encode(`${prefix} ${seq}`) });
  }
  return out;
}

function show(r: VaultRecord): string {
  return `${r.peer}/${r.name}#${r.seq}@${r.recvTs}:${td.decode(r.line)}`;
}

const A = { peer: "10.0.0.1", name: "web" };
const B = { peer: "10.0.0.2", name: "web" };
const C = { peer: "10.0.0.1", name: "db" };

/** A vault with three sources whose receive times interleave. */
async function threeSources(
  options: { segmentBytes?: number } = {},
): Promise<string> {
  const dir = freshDir();
  const vault = await openVault(dir, options);
  await vault.append(A, records(1, 2, "a"), { recvTs: 100 });
  await vault.append(B, records(1, 1, "b"), { recvTs: 150 });
  await vault.append(C, records(1, 1, "c"), { recvTs: 150 });
  await vault.append(A, records(3, 3, "a"), { recvTs: 200 });
  await vault.append(B, records(2, 3, "b"), { recvTs: 90 }); // server clock stepped back
  await vault.close();
  return dir;
}

describe("readRecords", () => {
  test("readRecords merges sources by receive time and keeps each source in order", async () => {
    const dir = await threeSources();
    const got = (await Array.fromAsync(readRecords(dir))).map(show);
    assert.deepEqual(got, [
      "10.0.0.1/web#1@100:a 1",
      "10.0.0.1/web#2@100:a 2",
      "10.0.0.1/db#1@150:c 1",
      "10.0.0.2/web#1@150:b 1",
      "10.0.0.2/web#2@90:b 2",
      "10.0.0.2/web#3@90:b 3",
      "10.0.0.1/web#3@200:a 3",
    ]);
  });

  const filters: {
    label: string;
    options: { source?: string; since?: number };
    expected: string[];
  }[] = [
    {
      label: "a name matches every peer's source of that name",
      options: { source: "web" },
      expected: [
        "10.0.0.1/web#1",
        "10.0.0.1/web#2",
        "10.0.0.2/web#1",
        "10.0.0.2/web#2",
        "10.0.0.2/web#3",
        "10.0.0.1/web#3",
      ],
    },
    {
      label: "a peer/name label matches one source",
      options: { source: "10.0.0.2/web" },
      expected: ["10.0.0.2/web#1", "10.0.0.2/web#2", "10.0.0.2/web#3"],
    },
    {
      label: "an unknown source matches nothing",
      options: { source: "nope" },
      expected: [],
    },
    {
      label: "since keeps records received at or after it",
      options: { since: 150 },
      expected: ["10.0.0.1/db#1", "10.0.0.2/web#1", "10.0.0.1/web#3"],
    },
    {
      label: "since and source combine",
      options: { since: 100, source: "10.0.0.1/web" },
      expected: ["10.0.0.1/web#1", "10.0.0.1/web#2", "10.0.0.1/web#3"],
    },
  ];
  for (const { label, options, expected } of filters) {
    test(`readRecords filters: ${label}`, async () => {
      const dir = await threeSources();
      const got = (await Array.fromAsync(readRecords(dir, options))).map((r) =>
        `${r.peer}/${r.name}#${r.seq}`
      );
      assert.deepEqual(got, expected);
    });
  }

  test("readRecords stops when its signal aborts", async () => {
    const dir = await threeSources();
    const ac = new AbortController();
    const got: number[] = [];
    for await (const r of readRecords(dir, { signal: ac.signal })) {
      got.push(r.seq);
      if (got.length === 2) ac.abort();
    }
    assert.deepEqual(got, [1, 2]);
  });

  test("readRecords reads an empty vault as nothing", async () => {
    const dir = freshDir();
    await (await openVault(dir)).close();
    assert.deepEqual(await Array.fromAsync(readRecords(dir)), []);
    assert.deepEqual(await listSources(dir), []);
  });

  test("readRecords refuses a directory that is not a vault", async () => {
    const dir = freshDir();
    fs.mkdirSync(dir);
    await assert.rejects(Array.fromAsync(readRecords(dir)), {
      code: "ERR_NOT_VAULT",
    });
    await assert.rejects(listSources(path.join(dir, "missing")), {
      code: "ERR_NOT_VAULT",
    });
  });

  test("readRecords reports damage in a segment that is not the last", async () => {
    const dir = await threeSources({ segmentBytes: 4096 });
    const vault = await openVault(dir, { segmentBytes: 4096 });
    for (let i = 0; i < 20; i++) {
      await vault.append(A, records(4 + i * 20, 23 + i * 20, "more"));
    }
    await vault.close();
    const sdir = path.join(dir, "sources", sourceDirName(A));
    const first = path.join(sdir, "00000000000000000001.seg");
    assert.ok(
      fs.readdirSync(sdir).filter((n) => n.endsWith(".seg")).length > 1,
    );
    const buf = fs.readFileSync(first);
    buf[buf.length - 3]! ^= 0xff;
    fs.writeFileSync(first, buf);
    await assert.rejects(
      Array.fromAsync(readRecords(dir, { source: "10.0.0.1/web" })),
      {
        code: "ERR_CORRUPT",
        message: /record checksum does not match/,
      },
    );
  });

  test("readRecords never returns a record a concurrent writer has not finished", async () => {
    const dir = freshDir();
    const vault = await openVault(dir, { segmentBytes: 8192 });
    const key = { peer: "127.0.0.1", name: "busy" };
    let written = 0;
    const writer = (async () => {
      for (let i = 0; i < 60; i++) {
        written = await vault.append(
          key,
          records(i * 10 + 1, i * 10 + 10, "w"),
        );
      }
    })();
    let reads = 0;
    const deadline = Date.now() + 10_000;
    while (written < 600 && Date.now() < deadline) {
      const got = await Array.fromAsync(readRecords(dir));
      got.forEach((r, i) => {
        assert.equal(r.seq, i + 1);
        assert.equal(td.decode(r.line), `w ${i + 1}`);
      });
      reads++;
    }
    await writer;
    await vault.close();
    assert.ok(reads > 0);
    assert.equal((await Array.fromAsync(readRecords(dir))).length, 600);
  });
});

describe("listSources", () => {
  test("listSources summarises each source", async () => {
    const dir = await threeSources();
    const listed = await listSources(dir);
    assert.deepEqual(
      listed.map((s) => ({ ...s, id: undefined, bytes: undefined })),
      [
        {
          peer: "10.0.0.1",
          name: "db",
          records: 1,
          firstSeq: 1,
          lastSeq: 1,
          firstTs: 501,
          lastTs: 501,
          firstRecvTs: 150,
          lastRecvTs: 150,
          segments: 1,
          id: undefined,
          bytes: undefined,
        },
        {
          peer: "10.0.0.1",
          name: "web",
          records: 3,
          firstSeq: 1,
          lastSeq: 3,
          firstTs: 501,
          lastTs: 503,
          firstRecvTs: 100,
          lastRecvTs: 200,
          segments: 1,
          id: undefined,
          bytes: undefined,
        },
        {
          peer: "10.0.0.2",
          name: "web",
          records: 3,
          firstSeq: 1,
          lastSeq: 3,
          firstTs: 501,
          lastTs: 503,
          firstRecvTs: 150,
          lastRecvTs: 90,
          segments: 1,
          id: undefined,
          bytes: undefined,
        },
      ],
    );
    for (const s of listed) {
      const sdir = path.join(dir, "sources", s.id);
      const size = fs.readdirSync(sdir).filter((n) => n.endsWith(".seg"))
        .reduce((sum, n) => sum + fs.statSync(path.join(sdir, n)).size, 0);
      assert.equal(s.bytes, size);
    }
  });

  test("listSources counts records across segments", async () => {
    const dir = freshDir();
    const vault = await openVault(dir, { segmentBytes: 4096 });
    for (let i = 0; i < 10; i++) {
      await vault.append(A, records(i * 50 + 1, i * 50 + 50, "x"), {
        recvTs: 1000 + i,
      });
    }
    await vault.close();
    const [info] = await listSources(dir);
    assert.ok(info!.segments > 2);
    assert.equal(info!.records, 500);
    assert.equal(info!.firstRecvTs, 1000);
    assert.equal(info!.lastRecvTs, 1009);
    assert.equal(info!.lastTs, 1000);
  });
});
