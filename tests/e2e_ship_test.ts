import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import {
  LineWatcher,
  runMoat,
  spawnMoat,
  startServer,
  tempDir,
  vaultCount,
  waitVaultCount,
} from "./_e2e.ts";
import { defaultStatePath } from "../lib/ship/state.ts";
import { quietPort } from "./_test_utils.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function lines(from: number, to: number, tag = "line"): string {
  let s = "";
  for (let i = from; i <= to; i++) s += `${tag} ${i} ${"x".repeat(i % 50)}\n`;
  return s;
}

/**
 * Waits until the shipper states in `dir` have acknowledged `want` lines
 * (in any order); returns what they hold then, largest first.
 */
async function waitStatesAcked(
  dir: string,
  want: number[],
  timeoutMs = 30_000,
): Promise<number[]> {
  const sorted = [...want].sort((a, b) => b - a);
  const deadline = Date.now() + timeoutMs;
  let acked: number[] = [];
  while (Date.now() < deadline) {
    acked = fs.readdirSync(dir).filter((f) => /^ship-.*\.json$/.test(f))
      .map((f) => {
        try {
          return JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")).acked;
        } catch {
          return -1; // being replaced: read again
        }
      }).sort((a, b) => b - a);
    if (JSON.stringify(acked) === JSON.stringify(sorted)) return acked;
    await sleep(100);
  }
  return acked;
}

function startShipper(
  args: string[],
  cwd: string,
  env?: Record<string, string>,
) {
  const child = spawnMoat(["ship", ...args], { cwd, ...(env && { env }) });
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
  // A port no other socket is handed while the server is down.
  const port = await quietPort();
  const serverArgs = ["--vault", vault, "--port", String(port)];
  const first = await startFixed(serverArgs);
  let server: {
    child: import("node:child_process").ChildProcess;
    stop(): Promise<number | null>;
  } = first;
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
    const n = await waitVaultCount(vault, total, 60_000);
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
    assert.equal(await waitVaultCount(vault, 1000, 20_000), 1000);
    fs.appendFileSync(log, lines(1001, 1500, "a"));
    fs.renameSync(log, log + ".1");
    fs.writeFileSync(log, lines(1, 1000, "b"));
    assert.equal(await waitVaultCount(vault, 2500, 20_000), 2500);
    fs.truncateSync(log, 0);
    await sleep(600);
    fs.appendFileSync(log, lines(1, 700, "c"));
    assert.equal(await waitVaultCount(vault, 3200, 20_000), 3200);
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

/** The fenced blocks of README.md's `moat ship` section, in order. */
function readmeShipBlocks(): string[] {
  const readme = fs.readFileSync(
    path.join(import.meta.dirname ?? ".", "..", "README.md"),
    "utf8",
  );
  const start = readme.indexOf("### `moat ship` and the vault");
  const end = readme.indexOf("\n### ", start + 1);
  assert.ok(start >= 0 && end > start, "README has the moat ship section");
  const section = readme.slice(start, end);
  return [...section.matchAll(/```[a-z]*\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

test("README's moat ship examples run as written, against a local server", async () => {
  using dir = tempDir();
  const root = dir.dir;
  const blocks = readmeShipBlocks();
  // The README's paths, moved under the test's folder.
  const map = (word: string, port: number) =>
    word
      .replace(/^(loghost|10\.0\.0\.1):4320$/, `127.0.0.1:${port}`)
      .replace(/^10\.0\.0\.0\/24$/, "127.0.0.0/8")
      .replace(/^\/(var|etc)\//, `${root}/$1/`);
  const commands = blocks.filter((b) => b.includes("moat ")).flatMap((b) =>
    b.split("\n")
  ).map((l) => l.replace(/\s+#.*$/, "").trim()).filter((l) => l !== "");
  const config = blocks.find((b) => b.startsWith("# /etc/moat/ship.conf\n"));
  assert.ok(config, "README shows a ship.conf");
  for (const c of commands) {
    assert.doesNotMatch(c, /["'\\$`;&]/, `plain words only: ${c}`);
  }
  const serve = commands.find((c) => c.startsWith("moat serve "))!;
  const shipFiles = commands.filter((c) =>
    c.startsWith("moat ship /var/log/") && !c.includes("--print-systemd-unit")
  );
  const shipStdin = commands.find((c) => c.includes("| moat ship -"))!;
  const shipConfig = commands.find((c) => c.includes("moat ship --config"))!;
  const unit = commands.find((c) => c.includes("--print-systemd-unit"))!;
  const ls = commands.find((c) => c.startsWith("moat vault ls"))!;
  const cat = commands.find((c) =>
    c.startsWith("moat vault cat") && !c.includes("--follow")
  )!;
  // `vault cat --follow` never ends by itself: tests/e2e_vault_test.ts runs it.
  const follow = commands.find((c) =>
    c.includes("moat vault cat") && c.includes("--follow")
  );
  assert.ok(serve && shipFiles.length === 1 && shipStdin && shipConfig);
  assert.ok(unit && ls && cat && follow);
  assert.equal(
    commands.length,
    8,
    `every example is covered: ${commands.join(" | ")}`,
  );

  // The files the examples name, with lines to ship.
  fs.mkdirSync(path.join(root, "var", "log", "nginx"), { recursive: true });
  fs.mkdirSync(path.join(root, "etc", "moat"), { recursive: true });
  fs.writeFileSync(
    path.join(root, "etc", "moat", "ship.conf"),
    config.replace(/^\/var\//gm, `${root}/var/`),
  );
  const content: Record<string, string> = {
    "auth.log": lines(1, 300, "auth"),
    "syslog": lines(1, 200, "sys"),
    "nginx/access.log": lines(1, 100, "access"),
    "nginx/error.log": lines(1, 50, "error"),
  };
  for (const [name, text] of Object.entries(content)) {
    fs.writeFileSync(path.join(root, "var", "log", name), text);
  }
  const env = { HOME: root, XDG_STATE_HOME: path.join(root, "state") };
  const words = (c: string, port: number) =>
    c.split(/\s+/).slice(1).map((w) => map(w, port));

  const serveArgs = words(serve, 0).slice(1);
  assert.deepEqual(serveArgs.slice(0, 2), ["--allow", "127.0.0.0/8"]);
  await using server = await startServer(serveArgs);
  const vault = serveArgs[serveArgs.indexOf("--vault") + 1]!;
  assert.ok(vault.startsWith(root));

  // moat ship FILE FILE=NAME: runs until stopped.
  for (const c of [...shipFiles, shipConfig]) {
    const args = words(c, server.port).slice(1);
    // Counted before the shipper starts: a quick one would be counted too.
    const before = await vaultCount(vault);
    const shipper = spawnMoat(["ship", ...args], { cwd: root, env });
    const err = new LineWatcher(shipper.stderr!);
    const exited = new Promise<number | null>((r) =>
      shipper.on("close", (code) => r(code))
    );
    try {
      const want = c.includes("--config") ? 150 : 500;
      assert.equal(
        await waitVaultCount(vault, before + want, 30_000),
        before + want,
        err.lines.join("\n"),
      );
    } finally {
      process.kill(shipper.pid!, "SIGTERM");
    }
    assert.equal(await exited, 0, err.lines.join("\n"));
    const text = err.lines.join("\n");
    // Not a terminal: notices only, no status line.
    // deno-lint-ignore no-control-regex
    assert.doesNotMatch(text, /[\r\x1b]/);
    assert.match(text, /records acknowledged by the server/);
  }

  // journalctl -f | moat ship - --source journal: ends once acknowledged.
  const stdinArgs = words(
    shipStdin.slice(shipStdin.indexOf("| ") + 2),
    server.port,
  )
    .slice(1);
  const journal = lines(1, 40, "journal");
  const r = await runMoat(["ship", ...stdinArgs], {
    input: journal,
    cwd: root,
    env,
  });
  assert.equal(r.code, 0, r.stderr);

  const listed = await runMoat(words(ls, server.port), { env });
  assert.equal(listed.code, 0, listed.stderr);
  const rows = listed.stdout.trim().split("\n").slice(1).map((row) =>
    row.split("\t").slice(0, 3).join(" ")
  ).sort();
  assert.deepEqual(rows, [
    "127.0.0.1 auth 300",
    "127.0.0.1 journal 40",
    "127.0.0.1 nginx-access 100",
    "127.0.0.1 nginx-error 50",
    "127.0.0.1 system 200",
  ]);
  const shown = await runMoat(words(cat, server.port), { env });
  assert.equal(shown.code, 0, shown.stderr);
  assert.equal(shown.stdout, content["auth.log"]);

  // The unit example: `> FILE` is the shell's; the unit goes to stdout.
  const unitWords = words(unit.slice(0, unit.indexOf(" >")), server.port);
  const printed = await runMoat(unitWords, { cwd: root, env });
  assert.equal(printed.code, 0, printed.stderr);
  assert.match(printed.stdout, /^ExecStart=.* ship .*auth\.log .*=system /m);
  assert.match(printed.stdout, /^IPAddressAllow=127\.0\.0\.1$/m);
  assert.match(printed.stdout, /^StateDirectory=moat-ship$/m);
});

test("moat ship keeps a single source's state where an earlier moat kept it", async () => {
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  await using server = await startServer(["--vault", vault]);
  const env = { HOME: dir.dir, XDG_STATE_HOME: "" };
  const args = [
    "ship",
    "-",
    "--server",
    `127.0.0.1:${server.port}`,
    "--source",
    "journal",
  ];
  const first = await runMoat(args, { input: lines(1, 10), env });
  assert.equal(first.code, 0, first.stderr);
  const state = defaultStatePath({
    source: "journal",
    server: `127.0.0.1:${server.port}`,
    env: { HOME: dir.dir },
  });
  assert.ok(fs.existsSync(state), `state at ${state}`);
  // The same state goes on: a lost state would make the server refuse.
  const second = await runMoat(args, { input: lines(11, 20), env });
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stderr, /server holds 10 records/);
  assert.match(second.stderr, /20 records acknowledged/);
  const cat = await runMoat(["vault", "cat", vault, "--source", "journal"]);
  assert.equal(cat.stdout, lines(1, 20));
});

test("moat ship continues files an earlier moat shipped as the host's source, losing and repeating nothing", async () => {
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  const log = path.join(dir.dir, "auth.log");
  fs.writeFileSync(log, lines(1, 200, "auth"));
  const env = { HOME: dir.dir, XDG_STATE_HOME: "" };
  // An earlier moat: every file in one source named after the host, with
  // its default state; the server was down, so it all waits in the spool.
  const host = os.hostname();
  const port = await quietPort();
  const down = await startFixed(["--vault", vault, "--port", String(port)]);
  await down.stop();
  const earlier = startShipper(
    [log, "--source", host, "--server", `127.0.0.1:${port}`],
    dir.dir,
    env,
  );
  await earlier.err.waitFor(
    (l) => /retrying .*; backlog 200 lines/.test(l),
    20_000,
    "200 lines spooled",
  );
  process.kill(earlier.child.pid!, "SIGTERM");
  assert.equal(await earlier.exited, 0);
  fs.appendFileSync(log, lines(201, 250, "auth"));

  const server = await startFixed(["--vault", vault, "--port", String(port)]);
  const now = startShipper(
    [log, "--server", `127.0.0.1:${port}`],
    dir.dir,
    env,
  );
  try {
    await now.err.waitFor(
      (l) => /continuing ".*auth\.log" where the state .* stopped$/.test(l),
      20_000,
      "the takeover notice",
    );
    await now.err.waitFor(
      (l) => /holds 200 unacknowledged lines: they are sent as/.test(l),
    );
    assert.equal(await waitVaultCount(vault, 250, 30_000), 250);
    // Stored is not yet acknowledged: a shipper stopped in between keeps
    // the lines to send again (and the next start would say so).
    assert.deepEqual(
      await waitStatesAcked(path.join(dir.dir, ".local", "state", "moat"), [
        200,
        50,
      ]),
      [200, 50],
    );
  } finally {
    process.kill(now.child.pid!, "SIGTERM");
  }
  assert.equal(await now.exited, 0, now.err.lines.join("\n"));
  // A later start continues its own state and says nothing of the earlier.
  fs.appendFileSync(log, lines(251, 260, "auth"));
  const again = startShipper(
    [log, "--server", `127.0.0.1:${port}`],
    dir.dir,
    env,
  );
  try {
    assert.equal(await waitVaultCount(vault, 260, 30_000), 260);
  } finally {
    process.kill(again.child.pid!, "SIGTERM");
  }
  assert.equal(await again.exited, 0, again.err.lines.join("\n"));
  assert.doesNotMatch(
    again.err.lines.join("\n"),
    /continuing|unacknowledged lines/,
  );
  await server.stop();
  const old = await runMoat(["vault", "cat", vault, "--source", host]);
  const moved = await runMoat(["vault", "cat", vault, "--source", "auth"]);
  assert.equal(old.stdout + moved.stdout, lines(1, 260, "auth"));
  assert.ok(old.stdout.length > 0 && moved.stdout.length > 0);
});

test("moat ship refuses ambiguous inputs with one line and exit 2", async () => {
  using dir = tempDir();
  fs.mkdirSync(path.join(dir.dir, "a"));
  fs.mkdirSync(path.join(dir.dir, "b"));
  const cases: [string[], RegExp][] = [
    [
      ["a/app.log", "b/app.log"],
      /"[^"]*a\/app\.log" and "[^"]*b\/app\.log" would both be source "app": name them as FILE=NAME/,
    ],
    [
      ["a/app.log", "b/x.log", "--source", "web"],
      /--source names one input, but 2 have no name/,
    ],
    [
      ["/var/log/syslog"],
      /would be source "syslog", which is reserved for the syslog port/,
    ],
    [
      ["a/app.log", "b/x.log", "--state", "s.json"],
      /--state names the state of one source, but 2 are shipped/,
    ],
    [["-", "-=x"], /standard input \("-"\) is given twice/],
    [
      ["x.log", "--config", "missing.conf"],
      /Cannot read --config "missing\.conf": no such file or directory/,
    ],
    [[], /ship needs FILE/],
  ];
  for (const [args, message] of cases) {
    const r = await runMoat(["ship", ...args, "--server", "127.0.0.1:1"], {
      cwd: dir.dir,
    });
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});
