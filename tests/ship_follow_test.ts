import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { follow, readLines } from "../lib/ship/follow.ts";
import type {
  FilePosition,
  FollowedLine,
  FollowEvent,
  FollowOptions,
} from "../lib/ship/follow.ts";
import { everySplit } from "./_test_utils.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-follow-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

let counter = 0;
function freshFile(): string {
  const dir = path.join(base, `d${counter++}`);
  fs.mkdirSync(dir);
  return path.join(dir, "app.log");
}

const td = new TextDecoder();
const te = new TextEncoder();
const POLL = 20;

/** Runs a follower in the background, collecting lines and events. */
function start(file: string, options: FollowOptions = {}) {
  const ac = new AbortController();
  const lines: FollowedLine[] = [];
  const events: FollowEvent[] = [];
  const done = (async () => {
    for await (
      const batch of follow(file, {
        pollMs: POLL,
        ...options,
        signal: ac.signal,
        onEvent: (e) => events.push(e),
      })
    ) {
      assert.ok(batch.length > 0);
      lines.push(...batch);
    }
  })();
  return {
    lines,
    events,
    texts: () => lines.map((l) => td.decode(l.line)),
    types: () => events.map((e) => e.type),
    async stop(): Promise<void> {
      ac.abort();
      await done;
    },
    async until(what: string, predicate: () => boolean): Promise<void> {
      const deadline = Date.now() + 5_000;
      while (!predicate()) {
        if (Date.now() > deadline) {
          throw new Error(
            `Timed out waiting for ${what}: ${JSON.stringify(this.texts())}`,
          );
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    },
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function identity(file: string): { dev: number; ino: number } {
  const st = fs.statSync(file);
  return { dev: st.dev, ino: st.ino };
}

describe("follow", () => {
  test("follow yields lines with identity and offsets, holding a partial line", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "one\ntwo\r\nthr");
    const f = start(file);
    await f.until("two lines", () => f.lines.length === 2);
    await sleep(POLL * 3);
    assert.deepEqual(f.texts(), ["one", "two\r"]);
    fs.appendFileSync(file, "ee\n\nfour\n");
    await f.until("five lines", () => f.lines.length === 5);
    await f.stop();
    assert.deepEqual(f.texts(), ["one", "two\r", "three", "", "four"]);
    assert.deepEqual(f.lines.map((l) => l.offset), [4, 9, 15, 16, 21]);
    const id = identity(file);
    assert.ok(
      f.lines.every((l) => l.dev === id.dev && l.ino === id.ino && !l.partial),
    );
    assert.deepEqual(f.types(), ["opened"]);
  });

  test("follow switches to the new file after a rename, reading the old one to its end", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "a1\na2\n");
    const f = start(file);
    await f.until("a2", () => f.lines.length === 2);
    const old = identity(file);
    fs.renameSync(file, `${file}.1`);
    fs.writeFileSync(file, "b1\n");
    // The writer has not reopened yet: it still writes to the old file.
    fs.appendFileSync(`${file}.1`, "a3\na4-without-newline");
    await f.until("b1", () => f.texts().includes("b1"));
    fs.appendFileSync(file, "b2\n");
    await f.until("b2", () => f.texts().includes("b2"));
    await f.stop();
    assert.deepEqual(f.texts(), [
      "a1",
      "a2",
      "a3",
      "a4-without-newline",
      "b1",
      "b2",
    ]);
    assert.deepEqual(
      f.lines.slice(0, 4).map((l) => l.ino),
      Array(4).fill(old.ino),
    );
    assert.equal(f.lines[3]!.offset, fs.statSync(`${file}.1`).size);
    assert.deepEqual(
      f.lines.slice(4).map((l) => l.ino),
      Array(2).fill(identity(file).ino),
    );
    assert.deepEqual(f.lines.slice(4).map((l) => l.offset), [3, 6]);
    assert.deepEqual(f.types(), ["opened", "rotated", "opened"]);
  });

  test("follow reports a file rotated away before it was reached", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "a1\n");
    const f = start(file);
    await f.until("a1", () => f.lines.length === 1);
    await sleep(5);
    // Two rotations within one poll interval: the middle file is never opened.
    fs.renameSync(file, `${file}.1`);
    fs.writeFileSync(file, "b1\n");
    fs.renameSync(file, `${file}.2`);
    fs.writeFileSync(file, "c1\n");
    await f.until("c1", () => f.texts().includes("c1"));
    await f.stop();
    assert.deepEqual(f.texts(), ["a1", "c1"]);
    assert.deepEqual(f.types(), ["opened", "rotated", "skipped", "opened"]);
    assert.deepEqual((f.events[2] as { files: string[] }).files, [`${file}.2`]);
  });

  test("follow reports nothing skipped after one rotation with older rotations around", async () => {
    const file = freshFile();
    fs.writeFileSync(`${file}.2.gz`, "older, compressed");
    fs.writeFileSync(`${file}.3`, "older");
    await sleep(5);
    fs.writeFileSync(file, "a1\n");
    const f = start(file);
    await f.until("a1", () => f.lines.length === 1);
    fs.renameSync(file, `${file}.1`);
    fs.writeFileSync(file, "b1\n");
    await f.until("b1", () => f.texts().includes("b1"));
    await f.stop();
    assert.deepEqual(f.types(), ["opened", "rotated", "opened"]);
  });

  test("follow restarts at 0 after copytruncate", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "old 1\nold 2\n");
    const f = start(file);
    await f.until("old 2", () => f.lines.length === 2);
    fs.truncateSync(file, 0);
    await sleep(POLL * 3);
    fs.appendFileSync(file, "new 1\n");
    await f.until("new 1", () => f.texts().includes("new 1"));
    await f.stop();
    assert.deepEqual(f.texts(), ["old 1", "old 2", "new 1"]);
    assert.equal(f.lines[2]!.offset, 6);
    assert.deepEqual(f.types(), ["opened", "truncated"]);
  });

  test("follow yields held bytes as a line when the file is truncated", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "whole\nhalf");
    const f = start(file);
    await f.until("whole", () => f.lines.length === 1);
    await sleep(POLL * 2);
    fs.writeFileSync(file, "x\n"); // shorter than what was read
    await f.until("x", () => f.texts().includes("x"));
    await f.stop();
    assert.deepEqual(f.texts(), ["whole", "half", "x"]);
  });

  test("follow waits for a file that appears later", async () => {
    const file = freshFile();
    const f = start(file);
    await f.until("waiting", () => f.types().includes("waiting"));
    await sleep(POLL * 3);
    assert.deepEqual(f.types(), ["waiting"]);
    fs.writeFileSync(file, "late 1\nlate 2\n");
    await f.until("late 2", () => f.lines.length === 2);
    await f.stop();
    assert.deepEqual(f.texts(), ["late 1", "late 2"]);
    assert.deepEqual(f.types(), ["waiting", "opened"]);
  });

  test("follow reads a deleted file to its end and waits for the path to return", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "a\n");
    const f = start(file);
    await f.until("a", () => f.lines.length === 1);
    fs.unlinkSync(file);
    await sleep(POLL * 3);
    fs.writeFileSync(file, "b\n");
    await f.until("b", () => f.texts().includes("b"));
    await f.stop();
    assert.deepEqual(f.texts(), ["a", "b"]);
  });

  test("follow splits a line longer than maxLineBytes into pieces", async () => {
    const file = freshFile();
    const long = "0123456789abcdefghijklmno"; // 25 bytes
    fs.writeFileSync(file, `${long}\nshort\n0123456789\n`);
    const f = start(file, { maxLineBytes: 10, readBytes: 7 });
    await f.until("all", () => f.lines.length === 5);
    await f.stop();
    assert.deepEqual(f.texts(), [
      "0123456789",
      "abcdefghij",
      "klmno",
      "short",
      "0123456789",
    ]);
    assert.deepEqual(f.lines.map((l) => l.partial), [
      true,
      true,
      false,
      false,
      false,
    ]);
    assert.deepEqual(f.lines.map((l) => l.offset), [10, 20, 26, 32, 43]);
    assert.deepEqual(
      f.events.filter((e) => e.type === "split").map((e) =>
        (e as { bytes: number }).bytes
      ),
      [10, 10],
    );
  });

  test("follow with fromEnd starts after the last complete line", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "old\nolder\npart");
    const f = start(file, { fromEnd: true });
    await f.until("opened", () => f.types().includes("opened"));
    fs.appendFileSync(file, "ial\nnew\n");
    await f.until("new", () => f.lines.length === 2);
    await f.stop();
    assert.deepEqual(f.texts(), ["partial", "new"]);
  });

  test("follow returns promptly when aborted while waiting", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "x\n");
    const ac = new AbortController();
    const it = follow(file, { pollMs: 1000, signal: ac.signal });
    assert.equal((await it.next()).done, false);
    const t0 = Date.now();
    setTimeout(() => ac.abort(), 20);
    assert.equal((await it.next()).done, true);
    assert.ok(Date.now() - t0 < 500);
  });

  const bad: [string, FollowOptions][] = [
    ["pollMs 0", { pollMs: 0 }],
    ["pollMs 5000", { pollMs: 5000 }],
    ["maxLineBytes 0", { maxLineBytes: 0 }],
    ["readBytes 1.5", { readBytes: 1.5 }],
  ];
  for (const [label, options] of bad) {
    test(`follow rejects ${label}`, async () => {
      await assert.rejects(follow("/nonexistent", options).next(), RangeError);
    });
  }
});

describe("follow resume", () => {
  async function firstRun(file: string, n: number): Promise<FilePosition> {
    const f = start(file);
    await f.until(`${n} lines`, () => f.lines.length === n);
    await f.stop();
    const last = f.lines.at(-1)!;
    return { dev: last.dev, ino: last.ino, offset: last.offset };
  }

  test("follow resumes exactly after the saved offset", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "1\n2\n3\n");
    const saved = await firstRun(file, 3);
    fs.appendFileSync(file, "4\n5\n");
    const f = start(file, { start: saved });
    await f.until("5", () => f.lines.length === 2);
    await f.stop();
    assert.deepEqual(f.texts(), ["4", "5"]);
  });

  test("follow resumes mid-file from a position saved earlier", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "1\n2\n3\n4\n");
    const id = identity(file);
    const f = start(file, { start: { ...id, offset: 4 } });
    await f.until("4", () => f.lines.length === 2);
    await f.stop();
    assert.deepEqual(f.texts(), ["3", "4"]);
  });

  test("follow finds the file rotated while it was stopped and drains it first", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "a1\na2\n");
    const saved = await firstRun(file, 2);
    fs.appendFileSync(file, "a3\n");
    fs.renameSync(file, `${file}.1`);
    fs.writeFileSync(file, "b1\n");
    const f = start(file, { start: saved });
    await f.until("b1", () => f.texts().includes("b1"));
    await f.stop();
    assert.deepEqual(f.texts(), ["a3", "b1"]);
    assert.deepEqual(f.types(), ["found", "opened", "rotated", "opened"]);
    const found = f.events[0] as { file: string };
    assert.equal(found.file, `${file}.1`);
  });

  test("follow finds the rotated file even when the path is not back yet", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "a1\n");
    const saved = await firstRun(file, 1);
    fs.appendFileSync(file, "a2\n");
    fs.renameSync(file, `${file}.old`);
    const f = start(file, { start: saved });
    await f.until("a2", () => f.texts().includes("a2"));
    fs.writeFileSync(file, "b1\n");
    await f.until("b1", () => f.texts().includes("b1"));
    await f.stop();
    assert.deepEqual(f.texts(), ["a2", "b1"]);
  });

  test("follow reports a saved file that is gone and reads the new one from 0", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "a1\n");
    const saved = await firstRun(file, 1);
    // The old inode lives on under a name that is not a rotation of the
    // path (and cannot be reused by the new file): it must not be read.
    fs.appendFileSync(file, "a2\n");
    fs.renameSync(file, path.join(path.dirname(file), "unrelated.txt"));
    fs.writeFileSync(file, "b1\nb2\n");
    const f = start(file, { start: saved });
    await f.until("b2", () => f.lines.length === 2);
    await f.stop();
    assert.deepEqual(f.texts(), ["b1", "b2"]);
    assert.deepEqual(f.types(), ["lost", "opened"]);
  });

  test("follow reports a saved file that is gone and waits for the path", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "a1\n");
    const saved = await firstRun(file, 1);
    fs.unlinkSync(file);
    const f = start(file, { start: saved });
    await f.until("waiting", () => f.types().includes("waiting"));
    fs.writeFileSync(file, "b1\n");
    await f.until("b1", () => f.lines.length === 1);
    await f.stop();
    assert.deepEqual(f.texts(), ["b1"]);
    assert.deepEqual(f.types(), ["lost", "waiting", "opened"]);
  });

  test("follow restarts at 0 when the saved file is now shorter", async () => {
    const file = freshFile();
    fs.writeFileSync(file, "long line one\nlong line two\n");
    const saved = await firstRun(file, 2);
    fs.truncateSync(file, 0);
    fs.appendFileSync(file, "n1\n");
    const f = start(file, { start: saved });
    await f.until("n1", () => f.lines.length === 1);
    await f.stop();
    assert.deepEqual(f.texts(), ["n1"]);
    assert.deepEqual(f.types(), ["truncated", "opened"]);
  });
});

describe("readLines", () => {
  const input = te.encode("alpha\nbe\r\nta\n\ngam");
  for (const { label, chunks } of everySplit(input)) {
    test(`readLines splits lines the same way when chunks are ${label}`, async () => {
      const lines = (await Array.fromAsync(readLines(chunks))).flat();
      assert.deepEqual(lines.map((l) => td.decode(l.line)), [
        "alpha",
        "be\r",
        "ta",
        "",
        "gam",
      ]);
      assert.deepEqual(lines.map((l) => l.offset), [6, 10, 13, 14, 17]);
      assert.ok(lines.every((l) => l.dev === 0 && l.ino === 0 && !l.partial));
    });
  }

  test("readLines copies chunks, so a reused buffer does not change lines", async () => {
    const buf = te.encode("ab\ncd");
    async function* reuse() {
      yield buf;
      buf.set(te.encode("XX\nYY"));
      yield te.encode("\n");
    }
    const lines = (await Array.fromAsync(readLines(reuse()))).flat();
    assert.deepEqual(lines.map((l) => td.decode(l.line)), ["ab", "cd"]);
  });
});
