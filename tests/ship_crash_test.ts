import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import { listSources, readRecords } from "../lib/vault/read.ts";
import { seededRandom } from "./_test_utils.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-crash-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

const SPOOL_URL = new URL("../lib/ship/spool.ts", import.meta.url).href;
const FOLLOW_URL = new URL("../lib/ship/follow.ts", import.meta.url).href;
const STORE_URL = new URL("../lib/vault/store.ts", import.meta.url).href;

/**
 * The whole shipping path in one process: follow → spool → (wire) → vault →
 * ack. Small segments so that rotation, trimming and checkpoints happen often.
 */
const CHILD = `
import { openSpool } from ${JSON.stringify(SPOOL_URL)};
import { follow } from ${JSON.stringify(FOLLOW_URL)};
import { openVault } from ${JSON.stringify(STORE_URL)};
const [stateFile, vaultDir, logFile] = JSON.parse(process.env.MOAT_CRASH_ARGS);
const spool = await openSpool(stateFile, {
  source: "crash", maxBytes: 65536, segmentBytes: 4096, checkpointMs: 5,
});
const vault = await openVault(vaultDir, { segmentBytes: 8192 });
const key = { peer: "127.0.0.1", name: "crash" };
const input = await spool.input(logFile);
const sender = (async () => {
  const from = vault.source(key).lastSeq + 1;
  for await (const batch of spool.records(from, { follow: true, maxBatchBytes: 2000 })) {
    const acked = await vault.append(key, batch);
    spool.ack(acked);
  }
})();
process.stdout.write("ready\\n");
const start = input.position;
const onEvent = (e) => {
  if (e.type === "lost" || e.type === "skipped") process.stderr.write(\`follow \${JSON.stringify(e)}\\n\`);
};
for await (const batch of follow(logFile, { pollMs: 10, readBytes: 1500, onEvent, ...(start ? { start } : {}) })) {
  await spool.append(input.id, batch);
}
await sender;
`;

interface Child {
  ready: Promise<void>;
  exited: Promise<number | null>;
  kill(): void;
  stderr(): string;
}

function startChild(script: string, args: string[]): Child {
  const isDeno = navigator.userAgent.startsWith("Deno");
  const child = spawn(
    process.execPath,
    isDeno ? ["run", "-A", script] : [script],
    {
      env: { ...process.env, MOAT_CRASH_ARGS: JSON.stringify(args) },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stdout = "";
  let stderr = "";
  let onReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  child.stdout!.setEncoding("utf8");
  child.stderr!.setEncoding("utf8");
  child.stdout!.on("data", (chunk: string) => {
    stdout += chunk;
    if (stdout.includes("ready")) onReady();
  });
  child.stderr!.on("data", (chunk: string) => (stderr += chunk));
  const exited = new Promise<number | null>((resolve) => {
    child.on("close", (status) => {
      onReady();
      resolve(status);
    });
  });
  return {
    ready,
    exited,
    kill: () => child.kill("SIGKILL"),
    stderr: () => stderr,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function vaultLines(dir: string): Promise<string[]> {
  if (!fs.existsSync(path.join(dir, "VAULT"))) return [];
  const td = new TextDecoder();
  const out: string[] = [];
  for await (const r of readRecords(dir)) {
    out.push(`${r.seq}:${td.decode(r.line)}`);
  }
  return out;
}

describe("spool crash safety", () => {
  test("spool, follower and vault lose and repeat nothing when killed at random points", async () => {
    const dir = path.join(base, "run");
    fs.mkdirSync(dir);
    const script = path.join(dir, "child.ts");
    fs.writeFileSync(script, CHILD);
    const stateFile = path.join(dir, "state", "ship.json");
    const vaultDir = path.join(dir, "vault");
    const logFile = path.join(dir, "app.log");
    const args = [stateFile, vaultDir, logFile];
    const random = seededRandom(
      Number(process.env.MOAT_CRASH_SEED ?? 20250601),
    );
    let written = 0;
    function writeLines(n: number): void {
      let text = "";
      for (let i = 0; i < n; i++) {
        written++;
        text += `line-${written} ${"x".repeat(random(60))}\n`;
      }
      fs.appendFileSync(logFile, text);
    }
    let rotations = 0;
    function rotate(): void {
      rotations++;
      fs.renameSync(logFile, `${logFile}.${rotations}`);
    }
    /**
     * Rotating twice before the shipper opened the newest file would skip a
     * file (documented follower limit), so a rotation waits until the vault
     * held every line at some point since the previous rotation.
     */
    let mayRotate = false;
    async function checkCaughtUp(): Promise<boolean> {
      try {
        if ((await listSources(vaultDir))[0]?.records === written) {
          mayRotate = true;
        }
      } catch {
        // No vault yet.
      }
      return mayRotate;
    }
    function rotateIfSafe(): void {
      if (!mayRotate) return;
      rotate();
      mayRotate = false;
    }
    writeLines(1000);
    const deadline = Date.now() + 40_000;
    const cycles = 14;
    let kills = 0;
    for (let cycle = 0; cycle < cycles && Date.now() < deadline; cycle++) {
      const child = startChild(script, args);
      await child.ready;
      const lifetime = 50 + random(350);
      const until = Date.now() + lifetime;
      while (Date.now() < until) {
        writeLines(1 + random(80));
        await sleep(random(15));
        if (random(3) === 0) {
          // A quiet spell: the shipper catches up, however long a busy
          // machine makes that take (a spell cut at the child's lifetime
          // left a slow run without any rotation); the kill may come next.
          while (Date.now() < deadline && !(await checkCaughtUp())) {
            await sleep(5);
          }
          if (random(2) === 0) rotateIfSafe();
        }
      }
      child.kill();
      const status = await child.exited;
      assert.notEqual(status, 0, child.stderr());
      assert.equal(child.stderr(), "");
      kills++;
      // Sometimes rotate while no shipper runs, with unread lines in the old file.
      if (mayRotate) {
        writeLines(50);
        rotateIfSafe();
        writeLines(20);
      }
    }
    // A last run ships everything.
    const last = startChild(script, args);
    await last.ready;
    let got: string[] = [];
    while (Date.now() < deadline + 20_000) {
      got = await vaultLines(vaultDir);
      if (got.length >= written) break;
      await sleep(100);
    }
    last.kill();
    await last.exited;
    assert.equal(last.stderr(), "");
    got = await vaultLines(vaultDir);
    assert.ok(kills >= 8, `only ${kills} kills in time`);
    assert.ok(
      rotations >= 3,
      `only ${rotations} rotations (${kills} kills, ${written} lines)`,
    );
    assert.equal(got.length, written, "every line stored exactly once");
    for (let i = 0; i < got.length; i++) {
      const expected = `${i + 1}:line-${i + 1} `;
      if (!got[i]!.startsWith(expected)) {
        assert.fail(
          `record ${i + 1} is ${JSON.stringify(got[i])}, expected ${expected}…`,
        );
      }
    }
  });
});
