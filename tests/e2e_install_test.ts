/**
 * The README's set-up puts a real `moat` on PATH: its `install` line, run as
 * written with only the destination folder changed, installs the linux-x64
 * binary (built here unless dist/ holds one newer than the sources), and the
 * installed `moat` runs from PATH.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { finished, type RunResult, tempDir } from "./_e2e.ts";
import { VERSION } from "../lib/version.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const BINARY = path.join(ROOT, "dist", "moat-linux-x64");
/** Where the README installs moat; the test swaps in its own folder. */
const README_DEST = "/usr/local/bin/";

const skip = process.platform === "linux" && process.arch === "x64"
  ? false
  : `skipped: the README's install line is for linux-x64, this is ${process.platform}-${process.arch}`;

/** The lines of the sh blocks in README.md's `## heading` section, comments cut. */
function readmeLines(heading: string): string[] {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
  const start = readme.indexOf(`\n## ${heading}\n`);
  assert.ok(start >= 0, `README has a "${heading}" section`);
  const rest = readme.slice(start + heading.length + 5);
  const end = rest.search(/\n## /);
  const section = end < 0 ? rest : rest.slice(0, end);
  const lines: string[] = [];
  for (const [, block] of section.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const raw of block!.split("\n")) lines.push(raw.trim());
  }
  return lines;
}

/** The newest modification time among the files the binary is built from. */
function newestSource(): number {
  let newest = fs.statSync(path.join(ROOT, "package.json")).mtimeMs;
  const files = [path.join(ROOT, "main.ts")];
  for (const dir of ["cli", "lib"]) {
    for (
      const name of fs.readdirSync(path.join(ROOT, dir), { recursive: true })
    ) {
      if (String(name).endsWith(".ts")) {
        files.push(path.join(ROOT, dir, String(name)));
      }
    }
  }
  for (const file of files) {
    newest = Math.max(newest, fs.statSync(file).mtimeMs);
  }
  return newest;
}

/** Runs `script` in bash, in `cwd`, with `env` added; killed after `timeoutMs`. */
function bash(
  script: string,
  options: { cwd: string; env?: Record<string, string>; timeoutMs?: number },
): Promise<RunResult> {
  const child = spawn("bash", ["-c", script], {
    cwd: options.cwd,
    env: { ...process.env, NO_COLOR: "1", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return finished(child, options.timeoutMs ?? 60_000);
}

/** dist/moat-linux-x64, built first unless it is newer than every source. */
async function freshBinary(): Promise<string> {
  if (fs.existsSync(BINARY) && fs.statSync(BINARY).mtimeMs > newestSource()) {
    return BINARY;
  }
  const r = await bash("bash scripts/build.sh linux-x64", {
    cwd: ROOT,
    timeoutMs: 150_000,
  });
  assert.equal(r.code, 0, `scripts/build.sh linux-x64 failed: ${r.stderr}`);
  return BINARY;
}

test(
  "README set-up install line puts a moat on PATH that runs --version and serve --help",
  {
    skip,
    timeout: 170_000,
  },
  async () => {
    const lines = readmeLines("Set-up");
    const install = lines.filter((l) => l.startsWith("install "));
    assert.equal(install.length, 1, `one install line in Set-up: ${install}`);
    const line = install[0]!.replace(/\s+#\s.*$/, "");
    assert.ok(
      line.includes(README_DEST),
      `"${line}" installs into ${README_DEST}`,
    );
    const shown = lines.find((l) => /^moat --version\s+#\s/.test(l));
    assert.ok(shown, "Set-up shows what moat --version prints");

    const binary = await freshBinary();
    using prefix = tempDir("moat-install-");
    const bin = path.join(prefix.dir, "bin");
    fs.mkdirSync(bin);
    const ran = await bash(line.replaceAll(README_DEST, `${bin}/`), {
      cwd: ROOT,
    });
    assert.equal(ran.code, 0, `${line}: ${ran.stderr}`);
    const installed = path.join(bin, "moat");
    assert.equal(fs.statSync(installed).mode & 0o777, 0o755);
    assert.ok(
      fs.readFileSync(installed).equals(fs.readFileSync(binary)),
      "the installed file is the build",
    );

    // Only the test's folder and the system's on PATH: no other moat can answer.
    const env = { PATH: `${bin}:/usr/bin:/bin` };
    const which = await bash("command -v moat", { cwd: prefix.dir, env });
    assert.equal(which.stdout.trim(), installed);
    const version = await bash("moat --version", { cwd: prefix.dir, env });
    assert.equal(version.code, 0, version.stderr);
    assert.match(
      version.stdout,
      new RegExp(
        `^moat ${
          VERSION.replaceAll(".", "\\.")
        } \\(bun [0-9.]+; linux-x64\\)\\n$`,
      ),
    );
    assert.equal(
      version.stdout.trim(),
      shown.replace(/^moat --version\s+#\s+/, ""),
      "README shows what moat --version prints",
    );
    const help = await bash("moat serve --help", { cwd: prefix.dir, env });
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^Usage: moat serve \[options\]\n/);
    assert.match(help.stdout, /--allow RULE/);
  },
);
