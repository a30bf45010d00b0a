/**
 * In-process tests of `lib/server/plain.ts`: plain-text chat lines, the
 * quiet spell that completes a line without a newline, the line limit, and
 * `FILE:` (served raw, refused with one ERR line, never mixed with chat).
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { tempDir } from "./_e2e.ts";
import {
  bytes,
  readAll,
  readLine,
  readText,
  startMemoryServer,
  within,
} from "./_server.ts";

// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

test("servePlain answers FILE: with the raw bytes, then closes, and audits it", async () => {
  await using t = await startMemoryServer();
  const body = "plain notes\nline two\n";
  fs.writeFileSync(path.join(t.root, "notes.txt"), body);
  const conn = await t.connect();
  await conn.write(bytes("FILE:notes.txt\n"));
  assert.equal(await readText(conn), body);
  conn.close();
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "file sent");
  assert.deepEqual(
    t.audit.events.filter((e) => e.name === "c1").map((e) => e.event),
    ["accepted", "get_started", "get_finished", "closed"],
  );
  const started = t.audit.named("get_started")[0]!;
  assert.equal(started.mode, "plain");
  assert.equal(started.path, "notes.txt");
  assert.equal(t.audit.named("get_finished")[0]!.bytes, body.length);
});

test("servePlain serves FILE: without a newline to a client that waits for the close", async () => {
  await using t = await startMemoryServer();
  const body = "no newline needed\n".repeat(1000);
  fs.writeFileSync(path.join(t.root, "doc.txt"), body);
  const conn = await t.connect();
  await conn.write(bytes("FILE:doc.txt"));
  // The quiet spell completes the request; the close ends the file.
  assert.equal(await readText(conn), body);
});

test("servePlain refuses a hostile FILE: path with exactly one ERR line, then the close", async () => {
  using tmp = tempDir();
  const root = path.join(tmp.dir, "root");
  fs.mkdirSync(root);
  fs.writeFileSync(path.join(tmp.dir, "secret.txt"), "TOP SECRET\n");
  await using t = await startMemoryServer({ root });
  const rows: [string, RegExp][] = [
    [
      "../secret.txt",
      /^ERR OUTSIDE_ROOT Refused path: "\.\.\/secret\.txt" climbs above the root\n$/,
    ],
    ["a/../../secret.txt", /^ERR OUTSIDE_ROOT [^\n]+\n$/],
    [
      path.join(tmp.dir, "secret.txt"),
      /^ERR BAD_PATH [^\n]+ is absolute[^\n]*\n$/,
    ],
    ["missing.txt", /^ERR NOT_FOUND [^\n]+\n$/],
    [
      "evil\x1b[2J\r.txt",
      /^ERR BAD_PATH Invalid path: "evil\\u001b\[2J\\r\.txt" [^\n]+\n$/,
    ],
  ];
  for (const [request, want] of rows) {
    const conn = await t.connect();
    await conn.write(bytes(`FILE:${request}\n`));
    // One ERR line and the server's half-close, not an idle timeout.
    const text = await readText(conn);
    assert.match(text, want, request);
    assert.ok(!text.includes("TOP SECRET"));
    assert.ok(!CONTROL.test(text.slice(0, -1)), JSON.stringify(text));
    conn.close();
  }
  const refusals = await t.audit.waitCount(
    (e) => e.event === "closed",
    rows.length,
    "closed",
  );
  assert.ok(
    refusals.every((e) => String(e.reason).startsWith("refused path: ERR_")),
    JSON.stringify(refusals),
  );
  assert.equal(
    t.audit.events.filter((e) => e.event === "error" && e.path !== undefined)
      .length,
    rows.length,
  );
});

test("servePlain never mixes FILE: bytes with chat, even while the operator talks", async () => {
  await using t = await startMemoryServer();
  const body = "pure file bytes\n".repeat(4000);
  fs.writeFileSync(path.join(t.root, "doc.txt"), body);
  const listener = await t.connect();
  await listener.write(bytes("here\n"));
  await t.audit.waitFor((e) => e.event === "chat", "listener joined");
  let talking = true;
  const noise = (async () => {
    for (let i = 0; i < 2000 && talking; i++) {
      t.server.say(`noise ${i}`);
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  })();
  try {
    assert.match(await readLine(listener), /^\[operator\] noise \d+\n$/);
    for (let round = 0; round < 3; round++) {
      // The request arrives in two pieces, after the connection was detected as plain.
      const raw = await t.connect();
      await raw.write(bytes("FIL"));
      await within(raw.drained(), "the first piece to be read");
      t.server.say("between the pieces");
      await raw.write(bytes("E:doc.txt\n"));
      const got = await readAll(raw);
      assert.equal(got.length, body.length);
      assert.equal(new TextDecoder().decode(got), body);
      raw.close();
    }
  } finally {
    talking = false;
    await noise;
  }
});

test("servePlain completes a line without a newline after a quiet spell, and --reply answers each", async () => {
  await using t = await startMemoryServer({ reply: "PONG" });
  const conn = await t.connect();
  // A classic client: one write, no newline, then it waits for the answer.
  await conn.write(bytes("are you there?"));
  assert.equal(await readLine(conn), "[server] PONG\n");
  await conn.write(bytes("again\r\n"));
  assert.equal(await readLine(conn), "[server] PONG\n");
  await conn.closeWrite();
  assert.equal(await readText(conn), "");
  assert.deepEqual(t.audit.named("chat").map((e) => e.text), [
    "are you there?",
    "again",
  ]);
});

test("servePlain refuses a line over maxLine with one ERR line; one at the limit passes", async () => {
  await using t = await startMemoryServer({ maxLine: 64 });
  const atLimit = "a".repeat(64);
  const conn = await t.connect();
  await conn.write(
    bytes(`${atLimit}\n${"b".repeat(65)}\nnever relayed\n`),
  );
  assert.equal(
    await readText(conn),
    "ERR LINE_TOO_LONG Chat line exceeds the limit of 64 bytes\n",
  );
  conn.close();
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "chat line too long");
  assert.deepEqual(t.audit.named("chat").map((e) => e.text), [atLimit]);
});
