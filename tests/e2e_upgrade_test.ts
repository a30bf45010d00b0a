/**
 * Upgrading as the README's "Upgrading" section says: its `install` line puts
 * a new file over the moat that is running, the server is stopped with
 * SIGTERM and started again from the new file, and a shipper following a
 * file meanwhile loses no line and stores none twice.
 *
 * The file installed is the moat under test: the binary named by MOAT_BIN,
 * or, under Deno and Bun, a shell script that execs the runtime on main.ts.
 * The same file is installed twice, so the upgrade brings a new inode, not
 * new code.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { Buffer } from "node:buffer";
import {
  finished,
  LineWatcher,
  moatCommand,
  moatFlavor,
  runMoat,
  spawnMoat,
  tempDir,
} from "./_e2e.ts";
import { quietPort } from "./_test_utils.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
/** The README's source file and destination folder; the test swaps in its own. */
const README_SOURCE = "dist/moat-linux-x64";
const README_DEST = "/usr/local/bin/";

/** The `install` line of the README's "Upgrading" section, comment cut. */
function readmeInstallLine(): string {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
  const start = readme.indexOf("\n## Upgrading\n");
  assert.ok(start >= 0, 'README has an "Upgrading" section');
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(start))?.[1] ?? "";
  const lines = block.split("\n").filter((l) => l.startsWith("install "));
  assert.equal(lines.length, 1, "one install line in Upgrading");
  const line = lines[0]!.replace(/\s+#\s.*$/, "");
  assert.ok(
    line.includes(README_SOURCE) && line.includes(README_DEST),
    `"${line}" installs ${README_SOURCE} into ${README_DEST}`,
  );
  return line;
}

/** Quotes `word` for sh. */
function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/**
 * The file a user would install: the binary under test, or a script that
 * runs main.ts on this runtime.
 */
function buildOutput(dir: string): string {
  if (moatFlavor() === "binary") return moatCommand()[0]!;
  const script = path.join(dir, "moat-build");
  fs.writeFileSync(
    script,
    `#!/bin/sh\nexec ${moatCommand().map(shellQuote).join(" ")} "$@"\n`,
  );
  return script;
}

/** Runs the README's install line with `from` and `bin` swapped in. */
async function installAs(line: string, from: string, bin: string) {
  const script = line.replace(README_SOURCE, shellQuote(from))
    .replace(README_DEST, `${shellQuote(bin)}/`);
  const child = spawn("bash", ["-c", script], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const r = await finished(child, 30_000);
  assert.equal(r.code, 0, `${script}: ${r.stderr}`);
}

function parseEvent(line: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(line);
    return typeof v === "object" && v !== null ? v : undefined;
  } catch {
    return undefined;
  }
}

/** A `moat serve` started from an installed file. */
interface Served {
  child: ChildProcess;
  port: number;
  audit: LineWatcher;
  waitEvent(
    pred: (e: Record<string, unknown>) => boolean,
    what: string,
  ): Promise<Record<string, unknown>>;
  /** SIGTERM (as `systemctl restart` sends), then the exit code. */
  stop(): Promise<number | null>;
}

/** Starts `exe serve --host 127.0.0.1 …` and waits for "listening". */
async function serveFrom(
  exe: string,
  args: string[],
  cwd: string,
): Promise<Served> {
  const child = spawn(exe, ["serve", "--host", "127.0.0.1", ...args], {
    cwd,
    env: { ...process.env, NO_COLOR: "1" },
    stdio: ["pipe", "ignore", "pipe"],
  });
  const audit = new LineWatcher(child.stderr!);
  const exited = new Promise<number | null>((resolve) =>
    child.on("close", (code) => resolve(code))
  );
  const waitEvent = async (
    pred: (e: Record<string, unknown>) => boolean,
    what: string,
  ) => {
    const line = await Promise.race([
      audit.waitFor(
        (l) => {
          const e = parseEvent(l);
          return e !== undefined && pred(e);
        },
        30_000,
        what,
      ),
      exited.then((code) => {
        throw new Error(`moat serve exited with ${code} before ${what}`);
      }),
    ]);
    return parseEvent(line)!;
  };
  let listening;
  try {
    listening = await waitEvent((e) => e.event === "listening", "listening");
  } catch (err) {
    child.kill("SIGKILL");
    throw new Error(`${(err as Error).message}: ${audit.lines.join("\n")}`);
  }
  const addr = (listening.addrs as string[])[0]!;
  return {
    child,
    port: Number(addr.slice(addr.lastIndexOf(":") + 1)),
    audit,
    waitEvent,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid!, "SIGTERM");
      }
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

function logLines(from: number, to: number): string {
  let s = "";
  for (let i = from; i <= to; i++) s += `line ${i} ${"x".repeat(i % 50)}\n`;
  return s;
}

/** Records of `source` in the vault, per `moat vault ls`; -1 before it exists. */
async function vaultRecords(dir: string, source: string): Promise<number> {
  const r = await runMoat(["vault", "ls", dir]);
  if (r.code !== 0) return -1;
  const row = r.stdout.split("\n").map((l) => l.split("\t"))
    .find((cols) => cols[1] === source);
  return row === undefined ? -1 : Number(row[2]);
}

/** Polls `moat vault ls` until `source` holds `want` records (bounded). */
async function waitRecords(
  dir: string,
  source: string,
  want: number,
): Promise<number> {
  const deadline = Date.now() + 60_000;
  let n = -1;
  for (let i = 0; i < 300 && Date.now() < deadline; i++) {
    n = await vaultRecords(dir, source);
    if (n >= want) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return n;
}

/** The whole content of an open file, read from its start. */
function readAll(fd: number): Buffer {
  const size = fs.fstatSync(fd).size;
  const buf = Buffer.alloc(size);
  let at = 0;
  while (at < size) {
    const got = fs.readSync(fd, buf, at, size - at, at);
    if (got === 0) break;
    at += got;
  }
  return buf.subarray(0, at);
}

/** The inode a process runs from (Linux: /proc/PID/exe). */
function exeInode(pid: number): number {
  return fs.statSync(`/proc/${pid}/exe`).ino;
}

test(
  "README upgrade install over a running server and a restart lose no shipped line and store none twice",
  {
    timeout: 170_000,
  },
  async () => {
    const line = readmeInstallLine();
    using dir = tempDir("moat-upgrade-");
    const bin = path.join(dir.dir, "bin");
    fs.mkdirSync(bin);
    const moat = path.join(bin, "moat");
    const build = buildOutput(dir.dir);
    const built = fs.readFileSync(build);
    await installAs(line, build, bin);
    const before = fs.statSync(moat).ino;
    // The binary itself runs as the server; a runtime's script execs the runtime.
    const binary = moatFlavor() === "binary" && process.platform === "linux";

    const vault = path.join(dir.dir, "vault");
    const log = path.join(dir.dir, "app.log");
    fs.writeFileSync(log, "");
    // The restart below reuses the port: one no other socket is handed meanwhile.
    const first = await serveFrom(
      moat,
      ["--port", String(await quietPort()), "--vault", vault],
      dir.dir,
    );
    await first.waitEvent(
      (e) => e.event === "vault_unsealed",
      "vault_unsealed",
    );
    if (binary) assert.equal(exeInode(first.child.pid!), before);
    const port = first.port;
    const shipper = spawnMoat([
      "ship",
      log,
      "--server",
      `127.0.0.1:${port}`,
      "--state",
      path.join(dir.dir, "ship.json"),
      "--source",
      "app",
    ], { cwd: dir.dir });
    const shipErr = new LineWatcher(shipper.stderr!);
    const shipExit = new Promise<number | null>((resolve) =>
      shipper.on("close", (code) => resolve(code))
    );
    let second: Served | undefined;
    let shipCode: number | null;
    // n lines stored by the old server, k appended just before it stops
    // (read, spooled or sent, but mostly not acknowledged), m after.
    const n = 3000;
    const k = 2000;
    const m = 2000;
    const total = n + k + m;
    try {
      await first.waitEvent(
        (e) => e.event === "ship_started" && e.source === "app",
        "the shipper's connection",
      );
      fs.appendFileSync(log, logLines(1, n));
      assert.equal(await waitRecords(vault, "app", n), n);

      // Held open as a running binary holds it (a script's runtime does not),
      // so the old file must outlive its name, and its inode is not reused.
      const old = fs.openSync(moat, "r");
      try {
        await installAs(line, build, bin);
        assert.equal(
          fs.fstatSync(old).nlink,
          0,
          "install unlinked the old file",
        );
        assert.ok(readAll(old).equals(built), "and left it whole");
      } finally {
        fs.closeSync(old);
      }
      const after = fs.statSync(moat);
      assert.notEqual(after.ino, before, "install wrote a new file");
      assert.equal(after.mode & 0o777, 0o755);
      assert.ok(
        fs.readFileSync(moat).equals(built),
        "the new file is the build",
      );
      assert.equal(first.child.exitCode, null, "the old server still runs");
      if (binary) assert.equal(exeInode(first.child.pid!), before);

      fs.appendFileSync(log, logLines(n + 1, n + k));
      assert.equal(await first.stop(), 0);
      assert.ok(
        first.audit.lines.some((l) => parseEvent(l)?.event === "shutdown"),
      );
      second = await serveFrom(moat, [
        "--port",
        String(port),
        "--vault",
        vault,
      ], dir.dir);
      if (binary) assert.equal(exeInode(second.child.pid!), after.ino);
      const resumed = await second.waitEvent(
        (e) => e.event === "ship_started" && e.source === "app",
        "the shipper's reconnection",
      );
      assert.ok(
        shipErr.lines.some((l) => /connection lost|server unreachable/.test(l)),
        `the shipper saw the restart: ${shipErr.lines.join(" | ")}`,
      );
      // The shipper resumes where the old server stopped, not before.
      const resumedAt = Number(resumed.lastSeq);
      assert.ok(resumedAt >= n && resumedAt <= n + k, `lastSeq ${resumedAt}`);
      fs.appendFileSync(log, logLines(n + k + 1, total));

      assert.equal(
        await waitRecords(vault, "app", total),
        total,
        `every line stored once; shipper: ${
          shipErr.lines.slice(-5).join(" | ")
        }`,
      );
    } finally {
      if (shipper.exitCode === null && shipper.signalCode === null) {
        process.kill(shipper.pid!, "SIGTERM");
      }
      const killer = setTimeout(() => shipper.kill("SIGKILL"), 20_000);
      shipCode = await shipExit;
      clearTimeout(killer);
      await first.stop();
      await second?.stop();
    }
    assert.equal(
      shipCode,
      0,
      `shipper stops on SIGTERM: ${shipErr.lines.join(" | ")}`,
    );

    const cat = await runMoat(["vault", "cat", vault, "--source", "app"]);
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout, logLines(1, total), "every line once, in order");
    // Never `moat vault init`ed: chained but unsealed, and verify says so.
    const verify = await runMoat(["vault", "verify", vault]);
    assert.equal(verify.code, 0, verify.stdout + verify.stderr);
    assert.match(verify.stdout, /^vault [0-9a-f]+: 0 seal\(s\)\n/);
    assert.match(
      verify.stdout,
      new RegExp(
        `\\n  127\\.0\\.0\\.1/app: ${total} records, 0 sealed, unsealed tail \\(${total} records\\)\\n`,
      ),
    );
    assert.match(
      verify.stdout,
      /\nWARNING: no --key: checksums and hash chains checked, seals NOT verified\n/,
    );
    assert.match(verify.stdout, /\nOK: every record and chain is intact\n$/);
  },
);
