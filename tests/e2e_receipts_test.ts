/**
 * Receipts with real processes: a `moat ship` following a file catches a
 * vault that was put back to an older copy while it was away, and exits 5
 * with one loud line naming both checkpoints, its spool and state intact;
 * run as README.md's "Receipts" section shows it, whose output it must
 * print.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { openSpool } from "../lib/ship/spool.ts";
import { defaultStatePath, readShipState } from "../lib/ship/state.ts";
import { LineWatcher, spawnMoat, startServer, tempDir } from "./_e2e.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function lines(from: number, to: number): string {
  let s = "";
  for (let i = from; i <= to; i++) s += `line ${i} ${"x".repeat(i % 40)}\n`;
  return s;
}

/** The tree size of the checkpoint a state file holds (0 if none). */
function heldSize(state: string): number {
  try {
    const saved = JSON.parse(fs.readFileSync(state, "utf8"));
    return typeof saved.checkpoint === "string"
      ? Number(saved.checkpoint.split("\n")[1])
      : 0;
  } catch {
    return 0;
  }
}

/** Polls until the state holds a checkpoint of `size` (saved each second). */
async function waitHeld(state: string, size: number, what: string) {
  for (let i = 0; i < 300; i++) {
    if (heldSize(state) >= size) return;
    await sleep(100);
  }
  assert.fail(`timed out waiting for ${what}: state holds ${heldSize(state)}`);
}

/**
 * The README's receipts transcript: the command after `$ `, and the lines
 * moat prints (`moat: …`, where `…` stands for anything).
 */
function readmeTranscript(): { command: string; said: string[] } {
  const readme = fs.readFileSync(
    path.join(import.meta.dirname ?? ".", "..", "README.md"),
    "utf8",
  );
  const start = readme.indexOf("### Receipts: every shipper is a witness");
  const block = /```text\n([\s\S]*?)```/.exec(readme.slice(start));
  assert.ok(start >= 0 && block, "README shows a shipper catching a rollback");
  const lines = block[1]!.split("\n");
  return {
    command: lines[0]!.replace(/^\$ /, ""),
    said: lines.filter((l) => l.startsWith("moat: ")),
  };
}

/** A README line as a pattern: `…` matches anything, names mapped. */
function pattern(line: string, map: (text: string) => string): RegExp {
  const parts = map(line).split("…").map((p) =>
    p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
  );
  return new RegExp(`^${parts.join(".*")}$`);
}

test("moat ship exits 5 when its vault is put back to an older copy, naming both checkpoints, its spool intact, as the README shows", async () => {
  using dir = tempDir();
  const root = dir.dir;
  const { command, said } = readmeTranscript();
  assert.match(
    command,
    /^moat ship \/var\/log\/auth\.log --server loghost:4320$/,
  );
  const log = path.join(root, "var", "log", "auth.log");
  const vault = path.join(dir.dir, "vault");
  const copy = path.join(dir.dir, "vault-copy");
  fs.mkdirSync(path.dirname(log), { recursive: true });
  fs.writeFileSync(log, lines(1, 10_000));
  let server = await startServer(["--vault", vault]);
  const port = server.port;
  const env = { HOME: root, XDG_STATE_HOME: "" };
  const state = defaultStatePath({
    source: "auth",
    server: `127.0.0.1:${port}`,
    env,
  });
  const map = (text: string) =>
    text.replaceAll("loghost:4320", `127.0.0.1:${port}`)
      .replaceAll("/var/log/", `${root}/var/log/`)
      .replaceAll("10.0.0.7", "127.0.0.1")
      .replaceAll('"/root/', `"${root}/`);
  const serverArgs = ["--vault", vault, "--port", String(port)];
  const shipper = spawnMoat(map(command).split(" ").slice(1), {
    cwd: root,
    env,
  });
  const err = new LineWatcher(shipper.stderr!);
  const exited = new Promise<number | null>((r) =>
    shipper.on("close", (c) => r(c))
  );
  try {
    await err.waitFor((l) => l.includes("pinned the vault's checkpoint key"));
    await waitHeld(state, 10_000, "the first 10,000 lines");
    await server.stop();
    fs.cpSync(vault, copy, { recursive: true });
    server = await startServer(serverArgs);
    fs.appendFileSync(log, lines(10_001, 20_000));
    await waitHeld(state, 20_000, "20,000 lines");
    await server.stop();
    // The intruder puts the older vault back, and the server comes back.
    fs.rmSync(vault, { recursive: true });
    fs.renameSync(copy, vault);
    fs.appendFileSync(log, lines(20_001, 20_100));
    server = await startServer(serverArgs);
    assert.equal(await exited, 5, err.lines.join("\n"));
  } finally {
    if (shipper.exitCode === null) process.kill(shipper.pid!, "SIGTERM");
    await exited;
    await server.stop();
  }
  // What the README shows, in its order, among what moat said.
  let at = 0;
  for (const line of said) {
    const want = pattern(line, map);
    while (at < err.lines.length && !want.test(err.lines[at]!)) at++;
    assert.ok(
      at < err.lines.length,
      `README line not printed: ${line}\n${err.lines.join("\n")}`,
    );
  }
  const loud = err.lines.filter((l) => l.includes("ROLLBACK"));
  assert.equal(loud.length, 1, err.lines.join("\n"));
  assert.match(
    loud[0]!,
    /^moat: ROLLBACK OR FORK: the vault at 127\.0\.0\.1:\d+ showed checkpoint "moat\/[0-9a-f]{32}\/[0-9a-f]{64}" size 10000 root [A-Za-z0-9+/]{43}=, which does not extend the checkpoint this shipper holds, "moat\/[0-9a-f]{32}\/[0-9a-f]{64}" size 20000 root [A-Za-z0-9+/]{43}= \(a smaller tree\); stopped sending to this vault; the spool and the state ".*\.json" are kept$/,
  );
  // Nothing forgotten, nothing lost: acknowledged and signed up to 20,000;
  // what came after is in the spool or still in the file.
  const saved = await readShipState(state);
  assert.equal(saved?.acked, 20_000);
  assert.equal(heldSize(state), 20_000);
  const spool = await openSpool(state, { source: "auth" });
  let after = "";
  try {
    for await (const batch of spool.records(20_001)) {
      for (const r of batch) after += new TextDecoder().decode(r.line) + "\n";
    }
  } finally {
    await spool.close();
  }
  // Records leave the spool a segment at a time: the state's position is at
  // or before the end of line 20,000.
  const position = saved!.inputs[0]!.position?.offset ?? 0;
  assert.ok(position <= Buffer.byteLength(lines(1, 20_000)), String(position));
  assert.equal(
    after + fs.readFileSync(log, "utf8").slice(
      Buffer.byteLength(lines(1, 20_000)) + Buffer.byteLength(after),
    ),
    lines(20_001, 20_100),
  );
});
