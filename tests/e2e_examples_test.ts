/**
 * The README's `moat get` and `moat chat` examples run as written: each line
 * of its `sh` blocks that runs one of them is run by bash against a local
 * server (its `10.0.0.1:4320` swapped for the server's address, and
 * `$MOAT_SERVER` set for the lines that name none), with `moat` being the
 * moat under test. A README line this test has no case for fails it, so an
 * example cannot change without being run.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import * as zlib from "node:zlib";
import {
  finished,
  moatCommand,
  type RunResult,
  sha256File,
  startServer,
  tempDir,
  writeRandomFile,
} from "./_e2e.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");

/** The `moat get` / `moat chat` lines of the README's sh blocks, comments cut. */
function readmeExamples(): string[] {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
  const lines: string[] = [];
  for (const [, block] of readme.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const raw of block!.split("\n")) {
      const line = raw.replace(/\s+#\s.*$/, "").trim();
      if (/(^|\| )moat (get|chat)\b/.test(line)) lines.push(line);
    }
  }
  return lines;
}

/** Quotes `word` for bash. */
function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Runs one README line in bash in `cwd`, `moat` being the moat under test. */
function runExample(
  line: string,
  options: { cwd: string; server: string; input?: string },
): Promise<RunResult> {
  const moat = moatCommand().map(shellQuote).join(" ");
  const script = `set -o pipefail\nmoat() { ${moat} "$@"; }\n${
    line.replaceAll("10.0.0.1:4320", options.server)
  }\n`;
  const child = spawn("bash", ["-c", script], {
    cwd: options.cwd,
    env: { ...process.env, NO_COLOR: "1", MOAT_SERVER: options.server },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const done = finished(child, 60_000);
  child.stdin!.end(options.input ?? "");
  return done;
}

/** What one example needs before it runs, and what it must have done. */
interface Example {
  /** Puts the folder in the state the example's comment describes. */
  before?: (dir: string) => void;
  /** Piped to the example's stdin. */
  input?: string;
  check: (r: RunResult, dir: string) => Promise<void>;
}

test("the README's moat get and moat chat examples run as written against a local server", async () => {
  using root = tempDir();
  fs.mkdirSync(path.join(root.dir, "logs"));
  const log = "INFO start\nERROR disk full\nINFO stop\n".repeat(1000);
  fs.writeFileSync(path.join(root.dir, "logs", "app.log"), log);
  const iso = path.join(root.dir, "big.iso");
  writeRandomFile(iso, 16 << 20, 21);
  const isoSha = await sha256File(iso);
  await using server = await startServer([
    "--root",
    root.dir,
    "--reply",
    "PONG",
  ]);
  const read = (dir: string, name: string) =>
    fs.readFileSync(path.join(dir, name), "utf8");
  const savedAppLog = (r: RunResult, dir: string) => {
    assert.equal(read(dir, "app.log"), log);
    assert.match(r.stderr, /moat: saved app\.log \(/);
    return Promise.resolve();
  };
  const pong = (r: RunResult) => {
    assert.equal(r.stdout, "[server] PONG\n");
    return Promise.resolve();
  };
  const examples: Record<string, Example> = {
    "moat get FILE:logs/app.log --server 10.0.0.1:4320": { check: savedAppLog },
    "moat get FILE:logs/app.log": { check: savedAppLog },
    "moat get logs/app.log -o app-copy.log": {
      check: (_r, dir) => {
        assert.equal(read(dir, "app-copy.log"), log);
        return Promise.resolve();
      },
    },
    "moat get FILE:big.iso --resume": {
      // As an interrupted get leaves it: the first 5 MiB.
      before: (dir) => {
        const head = fs.readFileSync(iso).subarray(0, 5 << 20);
        fs.writeFileSync(path.join(dir, "big.iso.moat-part"), head);
      },
      check: async (r, dir) => {
        assert.match(r.stderr, /resumed at 5242880,/);
        assert.equal(await sha256File(path.join(dir, "big.iso")), isoSha);
      },
    },
    "moat get FILE:big.iso --digest sha256": {
      check: async (r, dir) => {
        assert.match(r.stderr, new RegExp(`sha256 ${isoSha}\\)`));
        assert.equal(await sha256File(path.join(dir, "big.iso")), isoSha);
      },
    },
    "moat get FILE:logs/app.log -o - | gzip > app.log.gz": {
      check: (r, dir) => {
        const gz = fs.readFileSync(path.join(dir, "app.log.gz"));
        assert.equal(zlib.gunzipSync(gz).toString("utf8"), log);
        assert.match(r.stderr, /moat: wrote logs\/app\.log to stdout \(/);
        assert.deepEqual(fs.readdirSync(dir), ["app.log.gz"]);
        return Promise.resolve();
      },
    },
    "moat chat --server 10.0.0.1:4320": { input: "hello\n", check: pong },
    "echo hello | moat chat --server 10.0.0.1:4320": { check: pong },
  };
  const lines = readmeExamples();
  const unknown = lines.filter((l) => !Object.hasOwn(examples, l));
  assert.deepEqual(unknown, [], "README examples this test has no case for");
  assert.deepEqual(
    Object.keys(examples).filter((l) => !lines.includes(l)),
    [],
    "cases no longer in the README",
  );
  for (const line of lines) {
    using dir = tempDir();
    const example = examples[line]!;
    example.before?.(dir.dir);
    const r = await runExample(line, {
      cwd: dir.dir,
      server: `127.0.0.1:${server.port}`,
      ...(example.input !== undefined && { input: example.input }),
    });
    assert.equal(r.code, 0, `${line}: ${r.stderr}`);
    await example.check(r, dir.dir);
  }
});
