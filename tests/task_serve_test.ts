/**
 * `deno task serve` from a checkout: the task starts moat serve under Deno
 * with narrowed permissions on port 4320, and a get works against it.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import process from "node:process";
import * as fs from "node:fs";
import * as path from "node:path";
import { runMoat, tempDir } from "./_e2e.ts";

const REPO = path.resolve(import.meta.dirname!, "..");
const DENO = path.join(REPO, "node_modules/.bin/deno");
const AUDIT = path.join(REPO, "moat-audit.log");

test("deno task serve serves the checkout on 127.0.0.1:4320 and logs to moat-audit.log", async (t) => {
  if (!fs.existsSync(DENO)) {
    t.skip("no node_modules/.bin/deno: run npm ci");
    return;
  }
  const hadAudit = fs.existsSync(AUDIT);
  const before = hadAudit ? fs.statSync(AUDIT).size : 0;
  using out = tempDir();
  const child = spawn(DENO, ["task", "serve"], {
    cwd: REPO,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) =>
    child.on("exit", (code) => resolve(code))
  );
  try {
    // Listening once the audit log says so (bounded: 600 checks, 50 ms apart).
    let listening = false;
    for (let i = 0; i < 600 && !listening && child.exitCode === null; i++) {
      await new Promise((r) => setTimeout(r, 50));
      if (fs.existsSync(AUDIT)) {
        const text = fs.readFileSync(AUDIT, "utf8").slice(before);
        listening = text.includes('"event":"listening"');
      }
    }
    assert.ok(listening, `the task did not start: ${stderr}`);
    const got = path.join(out.dir, "deno.json");
    const r = await runMoat([
      "get",
      "FILE:deno.json",
      "--server",
      "127.0.0.1:4320",
      "-o",
      got,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      fs.readFileSync(got, "utf8"),
      fs.readFileSync(path.join(REPO, "deno.json"), "utf8"),
    );
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid!, "SIGTERM");
      } catch {
        // Gone between the check and the kill.
      }
    }
    await exited;
    if (!hadAudit) fs.rmSync(AUDIT, { force: true });
  }
});
