import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openSpool } from "../lib/ship/spool.ts";
import type {
  OpenSpoolOptions,
  Spool,
  SpoolEvent,
  SpoolLine,
  SpoolRecord,
} from "../lib/ship/spool.ts";
import {
  defaultStatePath,
  readShipState,
  writeShipState,
} from "../lib/ship/state.ts";
import { _internals } from "../lib/segment/log.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-spool-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

let counter = 0;
function freshState(): string {
  return path.join(base, `s${counter++}`, "ship.json");
}

const te = new TextEncoder();
const td = new TextDecoder();

/** Lines `from`..`to` of a fake file: "line N\n" is 5 + digits + 1 bytes. */
function lines(from: number, to: number, ino = 7): SpoolLine[] {
  const out: SpoolLine[] = [];
  for (let n = from; n <= to; n++) {
    out.push({
      line: te.encode(`line ${n}`),
      dev: 1,
      ino,
      offset: n * 100,
      ts: 1000 + n,
    });
  }
  return out;
}

async function drain(spool: Spool, from: number): Promise<SpoolRecord[]> {
  return (await Array.fromAsync(spool.records(from))).flat();
}

function segments(stateFile: string): string[] {
  return fs.readdirSync(`${stateFile}.spool`).filter((n) => n.endsWith(".seg"))
    .sort();
}

function open(
  stateFile: string,
  options: Partial<OpenSpoolOptions> = {},
): Promise<Spool> {
  return openSpool(stateFile, { source: "web1", checkpointMs: 10, ...options });
}

describe("openSpool", () => {
  test("openSpool creates the state file with a new stream id", async () => {
    const file = freshState();
    const spool = await open(file);
    const state = await readShipState(file);
    assert.equal(state?.source, "web1");
    assert.match(state!.stream, /^[0-9a-f]{32}$/);
    assert.equal(spool.stream, state!.stream);
    assert.equal(spool.lastSeq, 0);
    assert.equal(spool.ackedSeq, 0);
    await spool.close();
    const other = await open(freshState());
    assert.notEqual(other.stream, spool.stream);
    await other.close();
  });

  test("openSpool refuses a state file of another source", async () => {
    const file = freshState();
    await (await open(file)).close();
    await assert.rejects(open(file, { source: "db1" }), {
      code: "ERR_STATE_MISMATCH",
      message: `State file "${file}" belongs to source "web1", not "db1"`,
    });
  });

  test("openSpool refuses a state another live shipper holds", async () => {
    const file = freshState();
    const spool = await open(file);
    await assert.rejects(open(file), { code: "ERR_LOCKED" });
    await spool.close();
    await (await open(file)).close();
  });

  test("openSpool refuses a spool whose state file is gone", async () => {
    const file = freshState();
    const spool = await open(file);
    const input = await spool.input("/var/log/a.log");
    await spool.append(input.id, lines(1, 2));
    await spool.close();
    fs.unlinkSync(file);
    await assert.rejects(open(file), { code: "ERR_CORRUPT" });
  });

  test("openSpool removes a temporary state file left by a crash", async () => {
    const file = freshState();
    await (await open(file)).close();
    const temp = path.join(path.dirname(file), ".ship.json.tmp-123-abc");
    fs.writeFileSync(temp, "{half");
    await (await open(file)).close();
    assert.equal(fs.existsSync(temp), false);
  });

  test("openSpool refuses a malformed state file", async () => {
    const file = freshState();
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, '{"version":1,"source":"web1"}');
    await assert.rejects(open(file), { code: "ERR_CORRUPT" });
  });
});

describe("Spool", () => {
  test("Spool.input registers inputs once and saves them", async () => {
    const file = freshState();
    const spool = await open(file);
    const a = await spool.input("/var/log/a.log");
    const b = await spool.input("-");
    const again = await spool.input("/var/log/../log/a.log");
    assert.deepEqual([a.id, b.id, again.id], [0, 1, 0]);
    assert.equal(a.position, undefined);
    assert.equal(b.path, "-");
    const state = await readShipState(file);
    assert.deepEqual(state!.inputs.map((i) => i.path), ["/var/log/a.log", "-"]);
    await spool.close();
  });

  test("Spool.append numbers lines across calls and inputs, in call order", async () => {
    const file = freshState();
    const spool = await open(file);
    const a = await spool.input("/a");
    const b = await spool.input("/b");
    const results = await Promise.all([
      spool.append(a.id, lines(1, 3)),
      spool.append(b.id, lines(10, 11, 9)),
      spool.append(a.id, lines(4, 4)),
    ]);
    assert.deepEqual(results, [3, 5, 6]);
    assert.equal(spool.lastSeq, 6);
    const got = await drain(spool, 1);
    assert.deepEqual(got.map((r) => [r.seq, td.decode(r.line), r.ts]), [
      [1, "line 1", 1001],
      [2, "line 2", 1002],
      [3, "line 3", 1003],
      [4, "line 10", 1010],
      [5, "line 11", 1011],
      [6, "line 4", 1004],
    ]);
    assert.deepEqual((await drain(spool, 5)).map((r) => r.seq), [5, 6]);
    assert.deepEqual(await drain(spool, 7), []);
    await spool.close();
  });

  test("Spool.append keeps the partial flag and stamps a missing ts", async () => {
    const spool = await open(freshState());
    const input = await spool.input("/a");
    const before = Date.now();
    await spool.append(input.id, [
      { line: te.encode("piece"), dev: 1, ino: 1, offset: 5, partial: true },
      { line: te.encode("end"), dev: 1, ino: 1, offset: 9 },
    ]);
    const got = await drain(spool, 1);
    assert.deepEqual(got.map((r) => r.partial), [true, false]);
    assert.ok(got.every((r) => r.ts >= before && r.ts <= Date.now()));
    await spool.close();
  });

  const badLines: [string, () => [number, SpoolLine[]]][] = [
    ["an unknown input", () => [5, lines(1, 1)]],
    [
      "a negative offset",
      () => [0, [{ line: te.encode("x"), dev: 1, ino: 1, offset: -1 }]],
    ],
    [
      "an overlong line",
      () => [0, [{ line: new Uint8Array(2000), dev: 1, ino: 1, offset: 1 }]],
    ],
  ];
  for (const [label, make] of badLines) {
    test(`Spool.append rejects ${label}`, async () => {
      const spool = await open(freshState(), { maxLineBytes: 1000 });
      await spool.input("/a");
      const [id, batch] = make();
      await assert.rejects(spool.append(id, batch), RangeError);
      assert.equal(spool.lastSeq, 0);
      await spool.close();
    });
  }

  test("Spool.records refuses trimmed and unknown sequence numbers", async () => {
    const file = freshState();
    const spool = await open(file, { segmentBytes: 4096 });
    const input = await spool.input("/a");
    for (let i = 0; i < 10; i++) {
      await spool.append(input.id, lines(i * 20 + 1, i * 20 + 20));
    }
    spool.ack(150);
    await spool.checkpoint();
    await assert.rejects(drain(spool, 1), { code: "ERR_TRIMMED" });
    await assert.rejects(drain(spool, 202), { code: "ERR_SEQ_AHEAD" });
    const kept = await drain(spool, 151);
    assert.deepEqual(
      kept.map((r) => r.seq),
      lines(151, 200).map((_, i) => 151 + i),
    );
    await spool.close();
  });

  test("Spool.records follows new records until aborted", async () => {
    const spool = await open(freshState(), { segmentBytes: 4096 });
    const input = await spool.input("/a");
    const ac = new AbortController();
    const seen: number[] = [];
    const reader = (async () => {
      for await (
        const batch of spool.records(1, {
          follow: true,
          signal: ac.signal,
          maxBatchBytes: 500,
        })
      ) {
        seen.push(...batch.map((r) => r.seq));
      }
    })();
    for (let i = 0; i < 30; i++) {
      await spool.append(input.id, lines(i * 10 + 1, i * 10 + 10));
      if (i % 5 === 0) await new Promise((r) => setTimeout(r, 5));
    }
    const deadline = Date.now() + 5000;
    while (seen.length < 300 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5));
    }
    ac.abort();
    await reader;
    assert.deepEqual(seen, Array.from({ length: 300 }, (_, i) => i + 1));
    assert.ok(segments(spool.stateFile).length > 3);
    await spool.close();
  });

  test("Spool.ack trims whole segments after the checkpoint delay", async () => {
    const file = freshState();
    const spool = await open(file, { segmentBytes: 4096, checkpointMs: 30 });
    const input = await spool.input("/a");
    for (let i = 0; i < 10; i++) {
      await spool.append(input.id, lines(i * 20 + 1, i * 20 + 20));
    }
    const before = segments(file).length;
    const used = spool.usedBytes;
    spool.ack(200);
    assert.equal((await readShipState(file))!.acked, 0);
    await new Promise((r) => setTimeout(r, 150));
    assert.equal((await readShipState(file))!.acked, 200);
    assert.ok(before > 3);
    assert.deepEqual(segments(file), []);
    assert.ok(spool.usedBytes < used);
    assert.equal(spool.usedBytes, 0);
    // The next record opens a new segment named after it.
    await spool.append(input.id, lines(201, 201));
    assert.deepEqual(segments(file), ["00000000000000000201.seg"]);
    await spool.close();
  });

  test("Spool.ack rejects a sequence number never spooled", async () => {
    const spool = await open(freshState());
    const input = await spool.input("/a");
    await spool.append(input.id, lines(1, 2));
    assert.throws(() => spool.ack(3), RangeError);
    assert.throws(() => spool.ack(1.5), RangeError);
    spool.ack(2);
    spool.ack(1); // older acknowledgements are ignored
    assert.equal(spool.ackedSeq, 2);
    await spool.close();
  });

  test("Spool.append waits while the spool is full and says so once", async () => {
    const file = freshState();
    const events: SpoolEvent[] = [];
    const spool = await open(file, {
      maxBytes: 65536,
      segmentBytes: 8192,
      onEvent: (e) => events.push(e),
    });
    const input = await spool.input("/a");
    const big = (
      n: number,
    ): SpoolLine[] => [{
      line: new Uint8Array(1000).fill(65 + (n % 26)),
      dev: 1,
      ino: 1,
      offset: n * 1001,
    }];
    let n = 0;
    while (!spool.full && n < 200) {
      await Promise.race([
        spool.append(input.id, big(++n)),
        new Promise((r) => setTimeout(r, 50)),
      ]);
    }
    assert.ok(spool.full, `full after ${n}`);
    assert.ok(spool.usedBytes <= 65536);
    let resolved = 0;
    const waiting = [
      spool.append(input.id, big(++n)),
      spool.append(input.id, big(++n)),
    ];
    waiting.forEach((p) => p.then(() => resolved++));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(resolved, 0);
    assert.deepEqual(events.map((e) => e.type), ["full"]);
    // Acknowledge what was sent: appends resume in order.
    spool.ack(spool.lastSeq);
    const seqs = await Promise.all(waiting);
    assert.deepEqual(seqs, [n - 1, n]);
    assert.equal(spool.full, false);
    assert.deepEqual(events.map((e) => e.type), ["full", "resumed"]);
    await spool.close();
  });

  test("Spool.append rolls back on a write error and gives the same numbers again", async () => {
    const spool = await open(freshState());
    const input = await spool.input("/a");
    await spool.append(input.id, lines(1, 2));
    _internals.fault = (step) => {
      if (step === "sync") {
        throw Object.assign(new Error("No space left on device"), {
          code: "ENOSPC",
        });
      }
    };
    try {
      await assert.rejects(spool.append(input.id, lines(3, 5)), {
        code: "ENOSPC",
      });
    } finally {
      _internals.fault = undefined;
    }
    assert.equal(spool.lastSeq, 2);
    assert.equal(await spool.append(input.id, lines(3, 5)), 5);
    assert.deepEqual(
      (await drain(spool, 1)).map((r) => td.decode(r.line)),
      lines(1, 5).map((l) => td.decode(l.line)),
    );
    await spool.close();
  });
});

describe("Spool restart", () => {
  test("Spool restart resumes numbers and positions after the last spooled line", async () => {
    const file = freshState();
    const first = await open(file, { segmentBytes: 4096 });
    const a = await first.input("/a");
    const b = await first.input("/b");
    for (let i = 0; i < 8; i++) {
      await first.append(a.id, lines(i * 20 + 1, i * 20 + 20));
    }
    await first.append(b.id, lines(7, 7, 99));
    first.ack(100);
    await first.checkpoint();
    await first.close();
    const again = await open(file, { segmentBytes: 4096 });
    assert.equal(again.lastSeq, 161);
    assert.equal(again.ackedSeq, 100);
    assert.deepEqual((await again.input("/a")).position, {
      dev: 1,
      ino: 7,
      offset: 16000,
    });
    assert.deepEqual((await again.input("/b")).position, {
      dev: 1,
      ino: 99,
      offset: 700,
    });
    assert.equal((await drain(again, 101))[0]!.seq, 101);
    assert.equal(await again.append(a.id, lines(161, 161)), 162);
    await again.close();
  });

  test("Spool restart takes positions from the state once everything was trimmed", async () => {
    const file = freshState();
    const first = await open(file, { segmentBytes: 4096 });
    const a = await first.input("/a");
    await first.append(a.id, lines(1, 50));
    first.ack(50);
    await first.close();
    assert.deepEqual(segments(file), []);
    const state = await readShipState(file);
    assert.deepEqual(state!.inputs[0]!.position, {
      dev: 1,
      ino: 7,
      offset: 5000,
    });
    const again = await open(file);
    assert.equal(again.lastSeq, 50);
    assert.equal(again.ackedSeq, 50);
    assert.deepEqual((await again.input("/a")).position, {
      dev: 1,
      ino: 7,
      offset: 5000,
    });
    assert.equal(await again.append(a.id, lines(51, 51)), 51);
    await again.close();
  });

  test("Spool restart cuts a torn last record at every byte and resumes before it", async () => {
    const file = freshState();
    const first = await open(file);
    const a = await first.input("/a");
    await first.append(a.id, lines(1, 2));
    await first.append(a.id, lines(3, 3));
    await first.close();
    const [seg] = segments(file);
    const segPath = path.join(`${file}.spool`, seg!);
    const full = fs.readFileSync(segPath);
    const lastLength = 56 + "line 3".length;
    for (let cut = full.length - lastLength; cut < full.length; cut++) {
      fs.writeFileSync(segPath, full.subarray(0, cut));
      const events: SpoolEvent[] = [];
      const spool = await open(file, { onEvent: (e) => events.push(e) });
      assert.equal(spool.lastSeq, 2, `cut ${cut}`);
      assert.deepEqual((await spool.input("/a")).position, {
        dev: 1,
        ino: 7,
        offset: 200,
      });
      const cutBytes = cut - (full.length - lastLength);
      assert.deepEqual(
        events.map((e) => e.type),
        cutBytes > 0 ? ["truncated"] : [],
      );
      // The same line gets the same number again.
      assert.equal(await spool.append(a.id, lines(3, 3)), 3);
      await spool.close();
      assert.deepEqual(fs.readFileSync(segPath), full);
    }
  });

  test("Spool restart ignores acknowledged records left by a crash before trimming", async () => {
    const file = freshState();
    const first = await open(file, { segmentBytes: 4096 });
    const a = await first.input("/a");
    for (let i = 0; i < 6; i++) {
      await first.append(a.id, lines(i * 20 + 1, i * 20 + 20));
    }
    await first.close();
    // As if the shipper died after saving acked=120 but before deleting segments.
    const state = (await readShipState(file))!;
    await writeShipState(file, { ...state, acked: 120 });
    const again = await open(file, { segmentBytes: 4096 });
    assert.deepEqual(segments(file), []);
    assert.equal(again.lastSeq, 120);
    assert.deepEqual((await again.input("/a")).position, {
      dev: 1,
      ino: 7,
      offset: 12000,
    });
    await again.close();
  });
});

describe("defaultStatePath", () => {
  const rows: {
    env: Record<string, string | undefined>;
    expected: RegExp | null;
  }[] = [
    {
      env: { XDG_STATE_HOME: "/x/state", HOME: "/home/a" },
      expected: /^\/x\/state\/moat\/ship-web_1-[0-9a-f]{12}\.json$/,
    },
    {
      env: { XDG_STATE_HOME: "relative", HOME: "/home/a" },
      expected:
        /^\/home\/a\/\.local\/state\/moat\/ship-web_1-[0-9a-f]{12}\.json$/,
    },
    {
      env: { HOME: "/home/a" },
      expected: /^\/home\/a\/\.local\/state\/moat\//,
    },
    { env: {}, expected: null },
  ];
  for (const { env, expected } of rows) {
    test(`defaultStatePath with ${JSON.stringify(env)}`, () => {
      if (expected === null) {
        assert.throws(() => defaultStatePath({ source: "web/1", env }), {
          code: "ERR_USAGE",
        });
      } else {
        assert.match(defaultStatePath({ source: "web/1", env }), expected);
      }
    });
  }

  test("defaultStatePath differs per source and per server", () => {
    const env = { HOME: "/h" };
    const paths = new Set([
      defaultStatePath({ source: "a", env }),
      defaultStatePath({ source: "b", env }),
      defaultStatePath({ source: "a", server: "h1:4320", env }),
      defaultStatePath({ source: "a", server: "h2:4320", env }),
    ]);
    assert.equal(paths.size, 4);
  });
});
