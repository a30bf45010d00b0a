import { test } from "node:test";
import assert from "node:assert/strict";
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function lines(from: number, to: number, tag = "line"): string {
  let s = "";
  for (let i = from; i <= to; i++) s += `${tag} ${i} ${"x".repeat(i % 50)}\n`;
  return s;
}

async function vaultCount(dir: string): Promise<number> {
  const r = await runMoat(["vault", "ls", dir]);
  if (r.code !== 0) return -1;
  return r.stdout.trim().split("\n").slice(1).reduce(
    (n, row) => n + Number(row.split("\t")[2]),
    0,
  );
}

async function waitCount(
  dir: string,
  want: number,
  timeoutMs: number,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let n = -1;
  while (Date.now() < deadline) {
    n = await vaultCount(dir);
    if (n >= want) return n;
    await sleep(200);
  }
  return n;
}

function startShipper(args: string[], cwd: string) {
  const child = spawnMoat(["ship", ...args], { cwd });
  const err = new LineWatcher(child.stderr!);
  const exited = new Promise<number | null>((r) =>
    child.on("close", (c) => r(c))
  );
  return { child, err, exited };
}

test("moat ship: 100,000 lines survive 5 server and 5 shipper SIGKILLs, stored exactly once, in order", async () => {
  using dir = tempDir();
  const log = path.join(dir.dir, "app.log");
  const vault = path.join(dir.dir, "vault");
  const state = path.join(dir.dir, "ship.json");
  fs.writeFileSync(log, "");
  const first = await startServer(["--vault", vault]);
  const port = first.port;
  let server: {
    child: import("node:child_process").ChildProcess;
    stop(): Promise<number | null>;
  } = first;
  const serverArgs = ["--vault", vault, "--port", String(port)];
  const shipArgs = [
    log,
    "--server",
    `127.0.0.1:${port}`,
    "--state",
    state,
    "--source",
    "app",
  ];
  let shipper = startShipper(shipArgs, dir.dir);

  // Append 100,000 lines in 20 bursts while killing a side after every other burst.
  const total = 100_000;
  const burst = total / 20;
  const kills = { server: 0, shipper: 0 };
  let stopped: number | null = null;
  try {
    for (let b = 0; b < 20; b++) {
      fs.appendFileSync(log, lines(b * burst + 1, (b + 1) * burst));
      await sleep(150 + Math.floor(Math.random() * 150));
      if (b % 2 === 1) {
        if (kills.server <= kills.shipper && kills.server < 5) {
          server.child.kill("SIGKILL");
          await server.stop();
          kills.server++;
          await sleep(100);
          // The stale LOCK of the killed server is taken over; the port is reused.
          server = await startFixed(serverArgs);
        } else if (kills.shipper < 5) {
          shipper.child.kill("SIGKILL");
          await shipper.exited;
          kills.shipper++;
          shipper = startShipper(shipArgs, dir.dir);
        }
      }
    }
    assert.deepEqual(kills, { server: 5, shipper: 5 });
    const n = await waitCount(vault, total, 60_000);
    assert.equal(
      n,
      total,
      `every line stored, none twice; shipper's last lines: ${
        shipper.err.lines.slice(-5).join(" | ")
      }`,
    );
  } finally {
    process.kill(shipper.child.pid!, "SIGTERM");
    // Bounded: a shipper that ignores SIGTERM fails the test below, not the run.
    const killer = setTimeout(() => shipper.child.kill("SIGKILL"), 20_000);
    stopped = await shipper.exited;
    clearTimeout(killer);
    await server.stop();
  }
  assert.equal(
    stopped,
    0,
    `shipper did not stop on SIGTERM; its last lines: ${
      shipper.err.lines.slice(-5).join(" | ")
    }`,
  );
  const cat = await runMoat(["vault", "cat", vault], { timeoutMs: 60_000 });
  assert.equal(cat.code, 0, cat.stderr);
  assert.equal(cat.stdout, fs.readFileSync(log, "utf8"));
});

/** Starts `moat serve` on a fixed port (after a crash, the same address). */
async function startFixed(args: string[]) {
  const { LineWatcher } = await import("./_e2e.ts");
  const child = spawnMoat(["serve", "--host", "127.0.0.1", ...args]);
  const audit = new LineWatcher(child.stderr!);
  const exited = new Promise<number | null>((r) =>
    child.on("close", (c) => r(c))
  );
  await Promise.race([
    audit.waitFor((l) => l.includes('"listening"'), 20_000, "listening"),
    exited.then((c) => {
      throw new Error(`serve exited ${c}: ${audit.lines.join("\n")}`);
    }),
  ]);
  return {
    child,
    port: Number(args[args.indexOf("--port") + 1]),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid!, "SIGTERM");
      }
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const c = await exited;
      clearTimeout(t);
      return c;
    },
  };
}

test("moat ship follows rotation by rename and by truncation: nothing lost, nothing repeated", async () => {
  using dir = tempDir();
  const log = path.join(dir.dir, "app.log");
  const vault = path.join(dir.dir, "vault");
  await using server = await startServer(["--vault", vault]);
  fs.writeFileSync(log, lines(1, 1000, "a"));
  const shipper = startShipper([
    log,
    "--server",
    `127.0.0.1:${server.port}`,
    "--state",
    path.join(dir.dir, "s.json"),
    "--source",
    "app",
  ], dir.dir);
  try {
    assert.equal(await waitCount(vault, 1000, 20_000), 1000);
    fs.appendFileSync(log, lines(1001, 1500, "a"));
    fs.renameSync(log, log + ".1");
    fs.writeFileSync(log, lines(1, 1000, "b"));
    assert.equal(await waitCount(vault, 2500, 20_000), 2500);
    fs.truncateSync(log, 0);
    await sleep(600);
    fs.appendFileSync(log, lines(1, 700, "c"));
    assert.equal(await waitCount(vault, 3200, 20_000), 3200);
  } finally {
    process.kill(shipper.child.pid!, "SIGTERM");
    assert.equal(await shipper.exited, 0);
  }
  const cat = await runMoat(["vault", "cat", vault]);
  assert.equal(
    cat.stdout,
    lines(1, 1500, "a") + lines(1, 1000, "b") + lines(1, 700, "c"),
  );
});

test("moat ship - reads stdin, exits once every line is acknowledged, and vault cat filters by source and time", async () => {
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  await using server = await startServer(["--vault", vault]);
  const args = [
    "ship",
    "-",
    "--server",
    `127.0.0.1:${server.port}`,
    "--state",
    path.join(dir.dir, "s.json"),
    "--source",
    "journal",
  ];
  const r = await runMoat(args, { input: lines(1, 5000), cwd: dir.dir });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /5000 records acknowledged/);
  const ls = await runMoat(["vault", "ls", vault]);
  assert.match(ls.stdout, /127\.0\.0\.1\tjournal\t5000\t/);
  const cat = await runMoat(["vault", "cat", vault, "--source", "journal"]);
  assert.equal(cat.stdout, lines(1, 5000));
  const since = await runMoat(["vault", "cat", vault, "--since", "1h"]);
  assert.equal(since.stdout, lines(1, 5000));
  const future = await runMoat([
    "vault",
    "cat",
    vault,
    "--since",
    "2999-01-01",
  ]);
  assert.equal(future.stdout, "");
});

test("moat ship is refused by a server that does not allow its address, and stores nothing", async () => {
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  await using server = await startServer([
    "--vault",
    vault,
    "--allow",
    "127.0.0.2",
  ]);
  const r = await runMoat([
    "ship",
    "-",
    "--server",
    `127.0.0.1:${server.port}`,
    "--state",
    path.join(dir.dir, "s.json"),
  ], { input: "x\n" });
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /Access refused by server/);
  assert.equal(await vaultCount(vault), 0);
});

test("moat ship to a server without --vault fails with one clear line", async () => {
  await using server = await startServer([]);
  using dir = tempDir();
  const r = await runMoat([
    "ship",
    "-",
    "--server",
    `127.0.0.1:${server.port}`,
    "--state",
    path.join(dir.dir, "s.json"),
  ], { input: "x\n" });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /keeps no vault/);
  assert.ok(r.stderr.trim().split("\n").length <= 2, r.stderr);
});

test("moat ship with a token stores records under the address and the authenticated identity", async () => {
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  fs.writeFileSync(
    path.join(dir.dir, "server.tokens"),
    "alice s3cret-token-for-alice\n",
    { mode: 0o600 },
  );
  fs.writeFileSync(
    path.join(dir.dir, "alice.token"),
    "alice s3cret-token-for-alice\n",
    { mode: 0o600 },
  );
  fs.writeFileSync(
    path.join(dir.dir, "wrong.token"),
    "alice not-the-right-secret!!\n",
    { mode: 0o600 },
  );
  await using server = await startServer([
    "--vault",
    vault,
    "--token-file",
    path.join(dir.dir, "server.tokens"),
  ]);
  const base = [
    "ship",
    "-",
    "--server",
    `127.0.0.1:${server.port}`,
    "--source",
    "auth",
  ];
  const bad = await runMoat([
    ...base,
    "--state",
    path.join(dir.dir, "bad.json"),
    "--token-file",
    "wrong.token",
  ], { input: "nope\n", cwd: dir.dir });
  assert.notEqual(bad.code, 0);
  const r = await runMoat([
    ...base,
    "--state",
    path.join(dir.dir, "s.json"),
    "--token-file",
    "alice.token",
  ], { input: lines(1, 20), cwd: dir.dir });
  assert.equal(r.code, 0, r.stderr);
  const ls = await runMoat(["vault", "ls", vault]);
  assert.match(ls.stdout, /\n127\.0\.0\.1\[token:alice\]\tauth\t20\t/);
  assert.doesNotMatch(ls.stdout, /nope/);
});
