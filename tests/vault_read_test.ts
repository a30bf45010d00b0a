import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openVault } from "../lib/vault/store.ts";
import type { AppendRecord } from "../lib/vault/store.ts";
import { catRecords, listSources, readRecords } from "../lib/vault/read.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import { openFds, writeLegacySource } from "./_vault_test_utils.ts";
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

describe("readRecords attribution", () => {
  test("readRecords: a label filter never matches another host's source literally named so", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await vault.append(
      { peer: "127.0.0.5", name: "auth" },
      records(1, 1, "real"),
    );
    await vault.close();
    // Only an earlier version could store a name holding "/".
    writeLegacySource(dir, { peer: "10.0.0.9", name: "127.0.0.5/auth" }, [
      { line: "forged" },
    ]);
    const pick = async (source: string) =>
      (await Array.fromAsync(readRecords(dir, { source }))).map((r) =>
        `${r.peer}/${r.name}:${td.decode(r.line)}`
      );
    assert.deepEqual(await pick("127.0.0.5/auth"), ["127.0.0.5/auth:real 1"]);
    assert.deepEqual(await pick("10.0.0.9/127.0.0.5/auth"), [
      "10.0.0.9/127.0.0.5/auth:forged",
    ]);
    assert.deepEqual(await pick("auth"), ["127.0.0.5/auth:real 1"]);
    const report = await verifyVault(dir, { source: "127.0.0.5/auth" });
    assert.deepEqual(report.sources.map((s) => s.label), ["127.0.0.5/auth"]);
  });

  test("readRecords follows a partial record with its own source's next, never another's", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const line = (text: string) => te.encode(text);
    await vault.append(
      A,
      [{ seq: 1, ts: 1, line: line("AAA"), partial: true }],
      {
        recvTs: 100,
      },
    );
    await vault.append(B, [{ seq: 1, ts: 1, line: line("BBB") }], {
      recvTs: 150,
    });
    await vault.append(A, [{ seq: 2, ts: 1, line: line("aaa") }], {
      recvTs: 200,
    });
    await vault.close();
    const got = (await Array.fromAsync(readRecords(dir))).map(show);
    assert.deepEqual(got, [
      "10.0.0.1/web#1@100:AAA",
      "10.0.0.1/web#2@200:aaa",
      "10.0.0.2/web#1@150:BBB",
    ]);
    assert.equal(
      await cat(dir),
      "10.0.0.1/web\tAAAaaa\n10.0.0.2/web\tBBB\n",
    );
  });
});

async function cat(
  dir: string,
  options: { source?: string; terminal?: boolean } = {},
): Promise<string> {
  let out = "";
  for await (const chunk of catRecords(dir, options)) out += td.decode(chunk);
  return out;
}

describe("catRecords", () => {
  test("catRecords labels every line when more than one source matches, and none otherwise", async () => {
    const dir = await threeSources();
    assert.equal(
      await cat(dir, { source: "web" }),
      [
        "10.0.0.1/web\ta 1",
        "10.0.0.1/web\ta 2",
        "10.0.0.2/web\tb 1",
        "10.0.0.2/web\tb 2",
        "10.0.0.2/web\tb 3",
        "10.0.0.1/web\ta 3",
        "",
      ].join("\n"),
    );
    assert.equal(
      await cat(dir, { source: "10.0.0.2/web" }),
      "b 1\nb 2\nb 3\n",
    );
  });

  test("catRecords ends a line left partial before another source's line", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await vault.append(A, [{
      seq: 1,
      ts: 1,
      line: te.encode("cut"),
      partial: true,
    }], {
      recvTs: 100,
    });
    await vault.append(B, [{ seq: 1, ts: 1, line: te.encode("next") }], {
      recvTs: 150,
    });
    await vault.close();
    assert.equal(await cat(dir), "10.0.0.1/web\tcut\n10.0.0.2/web\tnext\n");
    assert.equal(await cat(dir, { source: "10.0.0.1/web" }), "cut\n");
  });

  test("catRecords writes a line feed inside a record as \\n, so a record is one line", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    const forged = te.encode("hello\n10.0.0.1/web\tinjected\r\x1b[2J");
    await vault.append(B, [{ seq: 1, ts: 1, line: forged }], { recvTs: 100 });
    await vault.append(A, records(1, 1, "a"), { recvTs: 200 });
    await vault.close();
    const raw = await cat(dir);
    assert.equal(
      raw,
      "10.0.0.2/web\thello\\n10.0.0.1/web\tinjected\r\x1b[2J\n10.0.0.1/web\ta 1\n",
    );
    assert.equal(raw.split("\n").length, 3);
    assert.equal(
      await cat(dir, { terminal: true }),
      "10.0.0.2/web\thello\\n10.0.0.1/web\\tinjected\\r\\e[2J\n10.0.0.1/web\ta 1\n",
    );
    assert.equal(
      await cat(dir, { source: "10.0.0.2/web" }),
      "hello\\n10.0.0.1/web\tinjected\r\x1b[2J\n",
    );
    // Stored as sent: the reader gets the bytes back.
    const [stored] = await Array.fromAsync(
      readRecords(dir, { source: "10.0.0.2/web" }),
    );
    assert.deepEqual(stored!.line, forged);
  });

  test("catRecords escapes a hostile label on a terminal", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await vault.append(
      {
        peer: "10.0.0.1",
        identity: "token:a",
        name: "\u202eweb",
      },
      records(1, 1, "x"),
      { recvTs: 100 },
    );
    await vault.append(A, records(1, 1, "y"), { recvTs: 200 });
    await vault.close();
    assert.equal(
      await cat(dir, { terminal: true }),
      "10.0.0.1[token:a]/\\u{202e}web\tx 1\n10.0.0.1/web\ty 1\n",
    );
  });
});

describe("readRecords descriptors", () => {
  test(
    "readRecords holds no segment open between batches while merging 300 sources",
    { skip: openFds() === undefined ? "needs /proc/self/fd" : false },
    async () => {
      const dir = freshDir();
      const vault = await openVault(dir, { maxSourcesPerPeer: 300 });
      for (let i = 0; i < 300; i++) {
        await vault.append(
          { peer: "10.0.0.1", name: `s${i}` },
          records(1, 3, `s${i}`),
          {
            recvTs: 1000 + i,
          },
        );
      }
      await vault.close();
      let n = 0;
      let most = 0;
      for await (const _ of readRecords(dir)) {
        n++;
        if (n % 50 === 0) most = Math.max(most, openFds(dir)!);
      }
      assert.equal(n, 900);
      assert.equal(most, 0, `${most} files open while merging`);
    },
  );
});
