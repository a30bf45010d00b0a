/**
 * Smoke test of the linux-arm64 release binary: it runs natively on an arm64
 * Linux host, or under qemu user-mode emulation on an x64 one.
 *
 * Under qemu the binary needs two things besides qemu itself
 * (`apt-get install qemu-user-static`): it is a dynamically linked glibc
 * program (interpreter `/lib/ld-linux-aarch64.so.1`, needing libc.so.6,
 * libpthread, libdl, libm), so qemu also needs an aarch64 glibc, either
 * multiarch (`libc6:arm64`) or the cross package (`libc6-arm64-cross`, found
 * through `QEMU_LD_PREFIX=/usr/aarch64-linux-gnu`). Without it qemu stops
 * with "Could not open '/lib/ld-linux-aarch64.so.1'".
 *
 * The arm64 binary is the same whatever runtime runs the tests, so these run
 * once, with the binary suite (MOAT_BIN set, as `npm test` does), not again
 * under Deno and Bun.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { moatFlavor } from "./_e2e.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const BIN = path.join(ROOT, "dist", "moat-linux-arm64");
const CROSS_PREFIX = "/usr/aarch64-linux-gnu";
const LOADER = "lib/ld-linux-aarch64.so.1";

/** How to run the arm64 binary here, or why it cannot run. */
function runner(): { argv: string[]; env: Record<string, string> } | string {
  if (moatFlavor() !== "binary") {
    return "skipped: runs with the binary suite (MOAT_BIN=dist/moat-linux-x64)";
  }
  if (process.platform !== "linux") return "skipped: not a Linux host";
  if (!fs.existsSync(BIN)) {
    return "skipped: dist/moat-linux-arm64 is not built (npm run build)";
  }
  if (process.arch === "arm64") return { argv: [BIN], env: {} };
  if (process.arch !== "x64") {
    return `skipped: no qemu plan for a ${process.arch} host`;
  }
  const dirs = (process.env.PATH ?? "").split(":").filter((d) => d !== "");
  const qemu = ["qemu-aarch64-static", "qemu-aarch64"]
    .flatMap((name) => dirs.map((d) => path.join(d, name)))
    .find((p) => fs.existsSync(p));
  if (qemu === undefined) {
    return "skipped: qemu-aarch64 not found (apt-get install qemu-user-static)";
  }
  if (fs.existsSync(`/${LOADER}`)) return { argv: [qemu, BIN], env: {} };
  if (fs.existsSync(`${CROSS_PREFIX}/${LOADER}`)) {
    return { argv: [qemu, BIN], env: { QEMU_LD_PREFIX: CROSS_PREFIX } };
  }
  return "skipped: no aarch64 glibc for qemu; the binary is dynamically linked " +
    "(apt-get install libc6-arm64-cross)";
}

const run = runner();
const skip = typeof run === "string" ? run : false;

function start(args: string[], cwd: string): ChildProcess {
  if (typeof run === "string") throw new Error(run);
  const [cmd, ...pre] = run.argv;
  return spawn(cmd!, [...pre, ...args], {
    cwd,
    env: { ...process.env, NO_COLOR: "1", ...run.env },
    stdio: ["pipe", "pipe", "pipe"],
  });
}

function finish(
  child: ChildProcess,
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`no exit within ${timeoutMs} ms; stderr: ${stderr}`));
    }, timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

test("moat-linux-arm64 --version names its target", { skip }, async () => {
  const child = start(["--version"], ROOT);
  child.stdin!.end();
  const r = await finish(child, 60_000);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /^moat \d+\.\d+\.\d+ \(bun \d+\.\d+\.\d+; linux-arm64\)\n$/,
  );
});

test(
  "moat-linux-arm64 serves and fetches a file over loopback",
  { skip },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-arm64-"));
    const server = start(
      ["serve", "--host", "127.0.0.1", "--port", "0", "--root", "share"],
      dir,
    );
    try {
      fs.mkdirSync(path.join(dir, "share"));
      const data = new Uint8Array(1 << 20).map((_, i) =>
        (i * 2654435761) >>> 24
      );
      fs.writeFileSync(path.join(dir, "share", "f.bin"), data);
      server.stdin!.end();
      const exited = finish(server, 120_000);
      let log = "";
      const port = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no "listening" in 60 s: ${log}`)),
          60_000,
        );
        server.stderr!.on("data", (d: string) => {
          log += d;
          const m = /"event":"listening","addrs":\["127\.0\.0\.1:(\d+)"/.exec(
            log,
          );
          if (m) {
            clearTimeout(timer);
            resolve(Number(m[1]));
          }
        });
        exited.then((r) => {
          clearTimeout(timer);
          reject(new Error(`server exited early with ${r.code}: ${log}`));
        }, reject);
      });
      const get = start(
        ["get", "FILE:f.bin", "--server", `127.0.0.1:${port}`, "-o", "out.bin"],
        dir,
      );
      get.stdin!.end();
      const r = await finish(get, 60_000);
      assert.equal(r.code, 0, r.stderr);
      const digest = (p: string) =>
        createHash("sha256").update(fs.readFileSync(p)).digest("hex");
      assert.equal(
        digest(path.join(dir, "out.bin")),
        digest(path.join(dir, "share", "f.bin")),
      );
      assert.match(r.stderr, /saved out\.bin \(1048576 bytes/);
      process.kill(server.pid!, "SIGTERM");
      assert.equal((await exited).code, 0);
    } finally {
      if (server.exitCode === null && server.signalCode === null) {
        server.kill("SIGKILL");
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
