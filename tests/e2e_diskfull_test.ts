import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import {
  LineWatcher,
  runMoat,
  spawnMoat,
  startServer,
  tempDir,
} from "./_e2e.ts";

/** Mounts a small tmpfs, or says why it cannot. */
function smallTmpfs(dir: string): string | undefined {
  if (process.getuid?.() !== 0) return "skipped: mounting a tmpfs needs root";
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir], {
      stdio: "pipe",
    });
    return undefined;
  } catch (err) {
    return `skipped: cannot mount a tmpfs here (${
      String((err as Error).message).split("\n")[0]
    })`;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("a full disk under the vault: the server refuses to acknowledge, says so, and recovers without losing a line", async (t) => {
  using dir = tempDir();
  const mnt = path.join(dir.dir, "disk");
  fs.mkdirSync(mnt);
  const why = smallTmpfs(mnt);
  if (why) return void t.skip(why);
  try {
    const vault = path.join(mnt, "vault");
    await using server = await startServer(["--vault", vault]);
    // 40,000 lines of ~100 bytes: about 4 MiB of records, four times the disk.
    let text = "";
    for (let i = 1; i <= 40_000; i++) text += `line ${i} ${"y".repeat(90)}\n`;
    const log = path.join(dir.dir, "app.log");
    fs.writeFileSync(log, text);
    const child = spawnMoat([
      "ship",
      log,
      "--server",
      `127.0.0.1:${server.port}`,
      "--state",
      path.join(dir.dir, "s.json"),
      "--source",
      "app",
    ]);
    const err = new LineWatcher(child.stderr!);
    const exited = new Promise<number | null>((r) =>
      child.on("close", (c) => r(c))
    );
    try {
      // The server says so in its audit log, and the shipper hears a refusal.
      const e = await server.waitEvent(
        (ev) => ev.event === "error" && ev.during === "ship",
        "vault write error",
        30_000,
      );
      assert.match(String(e.message), /ENOSPC|space|full/i);
      await err.waitFor(
        (l) => /retrying/.test(l),
        30_000,
        "shipper retry notice",
      );
      // Space returns.
      execFileSync("mount", ["-o", "remount,size=64m", mnt]);
      const deadline = Date.now() + 60_000;
      let n = 0;
      while (Date.now() < deadline) {
        const ls = await runMoat(["vault", "ls", vault]);
        n = ls.stdout.trim().split("\n").slice(1).reduce(
          (s, row) => s + Number(row.split("\t")[2] ?? 0),
          0,
        );
        if (n >= 40_000) break;
        await sleep(250);
      }
      assert.equal(n, 40_000);
    } finally {
      process.kill(child.pid!, "SIGTERM");
      await exited;
    }
    await server.stop();
    const cat = await runMoat(["vault", "cat", vault], { timeoutMs: 60_000 });
    assert.equal(cat.stdout, text, "every line exactly once, in order");
  } finally {
    execFileSync("umount", ["-l", mnt]);
  }
});
