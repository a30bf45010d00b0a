import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import * as zlib from "node:zlib";
import { Buffer } from "node:buffer";
import {
  finished,
  runMoat,
  sha256File,
  spawnMoat,
  startServer,
  tempDir,
  writeRandomFile,
} from "./_e2e.ts";
import { concat, fakeServer, fileFrames, WELCOME } from "./_fake_server.ts";
import { holdingRelay } from "./_relay.ts";

function vmHwmKiB(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+)/.exec(status)![1]);
}

test("moat get fetches a small file, verified, and the audit log records it", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "notes.txt"), "hello moat\n");
  await using server = await startServer(["--root", root.dir]);
  const r = await runMoat([
    "get",
    "FILE:notes.txt",
    "--server",
    `127.0.0.1:${server.port}`,
  ], { cwd: out.dir });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    fs.readFileSync(path.join(out.dir, "notes.txt"), "utf8"),
    "hello moat\n",
  );
  assert.match(r.stderr, /saved notes\.txt \(11 bytes/);
  // 11 bytes are not "0.00 GiB/s": the rate comes in a unit that suits it.
  assert.match(r.stderr, / in \d+\.\d\d s, \d+(\.\d+)? (B|KiB|MiB)\/s\n$/);
  assert.equal(r.stdout, "");
  const done = await server.waitEvent(
    (e) => e.event === "get_finished",
    "get_finished",
  );
  assert.equal(done.path, "notes.txt");
  assert.equal(done.bytes, 11);
  const crc = zlib.crc32(fs.readFileSync(path.join(root.dir, "notes.txt")))
    .toString(16).padStart(8, "0");
  assert.equal(done.crc32, crc, "the default digest is CRC-32");
  assert.match(r.stderr, new RegExp(`crc32 ${crc}\\)`));
  assert.ok(
    server.events().some((e) =>
      e.event === "accepted" && String(e.peer).startsWith("127.0.0.1:")
    ),
  );
});

test("moat get --digest sha256 checks and reports SHA-256, and an unknown digest is a usage error", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "notes.txt"), "hello sha\n");
  await using server = await startServer(["--root", root.dir]);
  const srv = `127.0.0.1:${server.port}`;
  const r = await runMoat([
    "get",
    "FILE:notes.txt",
    "--digest",
    "sha256",
    "--server",
    srv,
  ], { cwd: out.dir });
  assert.equal(r.code, 0, r.stderr);
  const sha = await sha256File(path.join(root.dir, "notes.txt"));
  assert.match(r.stderr, new RegExp(`sha256 ${sha}\\)`));
  const done = await server.waitEvent(
    (e) => e.event === "get_finished",
    "get_finished",
  );
  assert.equal(done.sha256, sha);
  assert.equal(done.crc32, undefined);
  const bad = await runMoat([
    "get",
    "FILE:notes.txt",
    "--digest",
    "md5",
    "--force",
    "--server",
    srv,
  ], { cwd: out.dir });
  assert.equal(bad.code, 2);
  assert.equal(
    bad.stderr,
    'moat: Unknown --digest "md5": use crc32 or sha256\n',
  );
});

test("moat get accepts a bare path, -o, and an empty file", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.mkdirSync(path.join(root.dir, "logs"));
  fs.writeFileSync(path.join(root.dir, "logs", "empty.log"), "");
  await using server = await startServer(["--root", root.dir]);
  const r = await runMoat([
    "get",
    "logs/empty.log",
    "-o",
    "copy.log",
    "--server",
    `127.0.0.1:${server.port}`,
  ], { cwd: out.dir });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(fs.readFileSync(path.join(out.dir, "copy.log"), "utf8"), "");
  assert.equal(fs.existsSync(path.join(out.dir, "copy.log.moat-part")), false);
});

test("moat get refuses to overwrite without --force, and replaces with it", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "a.txt"), "new");
  fs.writeFileSync(path.join(out.dir, "a.txt"), "old");
  await using server = await startServer(["--root", root.dir]);
  const srv = `127.0.0.1:${server.port}`;
  const r1 = await runMoat(["get", "FILE:a.txt", "--server", srv], {
    cwd: out.dir,
  });
  assert.equal(r1.code, 7);
  assert.match(
    r1.stderr,
    /^moat: Refusing to overwrite "a\.txt": it exists \(use --force\)\n$/,
  );
  assert.equal(fs.readFileSync(path.join(out.dir, "a.txt"), "utf8"), "old");
  const r2 = await runMoat(["get", "FILE:a.txt", "--force", "--server", srv], {
    cwd: out.dir,
  });
  assert.equal(r2.code, 0, r2.stderr);
  assert.equal(fs.readFileSync(path.join(out.dir, "a.txt"), "utf8"), "new");
});

test("moat get is refused traversal, absolute, backslash and outside-symlink paths", async () => {
  using root = tempDir();
  using out = tempDir();
  using outside = tempDir();
  fs.writeFileSync(path.join(outside.dir, "secret"), "secret");
  fs.symlinkSync(path.join(outside.dir, "secret"), path.join(root.dir, "link"));
  fs.mkdirSync(path.join(root.dir, "sub"));
  await using server = await startServer(["--root", root.dir]);
  const srv = `127.0.0.1:${server.port}`;
  const cases: [string, RegExp][] = [
    ["FILE:../../etc/passwd", /outside|Refused/i],
    ["FILE:/etc/passwd", /absolute|Refused/i],
    ["FILE:sub\\..\\..\\x", /backslash|Refused/i],
    ["FILE:link", /outside|Refused/i],
    ["FILE:sub", /not a regular file|Refused/i],
    ["FILE:missing.txt", /not found|No such|Refused/i],
  ];
  for (const [req, re] of cases) {
    const r = await runMoat(["get", req, "-o", "x", "--server", srv], {
      cwd: out.dir,
    });
    assert.equal(r.code, 4, `${req}: ${r.stderr}`);
    assert.match(r.stderr, re, req);
    assert.equal(
      r.stderr.trim().split("\n").length,
      1,
      `one line for ${req}: ${r.stderr}`,
    );
    assert.doesNotMatch(r.stderr, /at .*\.ts:\d+/);
  }
  assert.deepEqual(fs.readdirSync(out.dir), []);
  const errors = server.events().filter((e) => e.event === "error");
  assert.ok(errors.length >= cases.length);
});

test("moat get of a 256 MiB file arrives intact while the server's memory stays flat", async () => {
  using root = tempDir();
  using out = tempDir();
  writeRandomFile(path.join(root.dir, "small.bin"), 1 << 20, 7);
  writeRandomFile(path.join(root.dir, "big.bin"), 256 << 20, 9);
  await using server = await startServer(["--root", root.dir]);
  const srv = `127.0.0.1:${server.port}`;
  const r1 = await runMoat(["get", "FILE:small.bin", "--server", srv], {
    cwd: out.dir,
  });
  assert.equal(r1.code, 0, r1.stderr);
  const before = vmHwmKiB(server.child.pid!);
  const r2 = await runMoat(["get", "FILE:big.bin", "--server", srv], {
    cwd: out.dir,
    timeoutMs: 120_000,
  });
  assert.equal(r2.code, 0, r2.stderr);
  assert.equal(
    await sha256File(path.join(out.dir, "big.bin")),
    await sha256File(path.join(root.dir, "big.bin")),
  );
  const after = vmHwmKiB(server.child.pid!);
  // Constant memory: a 256 MiB file may not add more than 32 MiB to the peak.
  assert.ok(
    after - before < 32 * 1024,
    `server peak RSS grew ${before} → ${after} KiB`,
  );
});

test("moat get killed mid-transfer by a dying server leaves no complete-looking file, and --resume finishes it", async () => {
  using root = tempDir();
  using out = tempDir();
  const size = 256 << 20;
  writeRandomFile(path.join(root.dir, "big.bin"), size, 3);
  const server = await startServer(["--root", root.dir]);
  const child = spawnMoat([
    "get",
    "FILE:big.bin",
    "--server",
    `127.0.0.1:${server.port}`,
    "--max-frame",
    "65536",
  ], { cwd: out.dir });
  const done = finished(child, 60_000);
  const part = path.join(out.dir, "big.bin.moat-part");
  const deadline = Date.now() + 20_000;
  while (
    !(fs.existsSync(part) && fs.statSync(part).size > 0) &&
    Date.now() < deadline
  ) {
    await new Promise((r) => setTimeout(r, 5));
  }
  server.child.kill("SIGKILL");
  await server.stop();
  const r = await done;
  if (r.code === 0) {
    // The whole file made it before the kill landed: it must then be complete.
    assert.equal(
      await sha256File(path.join(out.dir, "big.bin")),
      await sha256File(path.join(root.dir, "big.bin")),
    );
    return;
  }
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /--resume/);
  assert.equal(
    fs.existsSync(path.join(out.dir, "big.bin")),
    false,
    "no complete-looking file",
  );
  assert.ok(fs.statSync(part).size < size);

  await using again = await startServer(["--root", root.dir]);
  const r2 = await runMoat([
    "get",
    "FILE:big.bin",
    "--resume",
    "--server",
    `127.0.0.1:${again.port}`,
  ], { cwd: out.dir, timeoutMs: 120_000 });
  assert.equal(r2.code, 0, r2.stderr);
  assert.match(r2.stderr, /resumed at \d+/);
  assert.equal(
    await sha256File(path.join(out.dir, "big.bin")),
    await sha256File(path.join(root.dir, "big.bin")),
  );
  assert.equal(fs.existsSync(part), false);
});

test("moat get --resume detects a file that changed on the server and keeps nothing", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "f.txt"), "abcdefghij");
  fs.writeFileSync(path.join(out.dir, "f.txt.moat-part"), "XYZ");
  await using server = await startServer(["--root", root.dir]);
  const r = await runMoat([
    "get",
    "FILE:f.txt",
    "--resume",
    "--server",
    `127.0.0.1:${server.port}`,
  ], { cwd: out.dir });
  assert.equal(r.code, 5, r.stderr);
  assert.match(r.stderr, /crc32 mismatch/);
  assert.equal(fs.existsSync(path.join(out.dir, "f.txt")), false);
  assert.equal(fs.existsSync(path.join(out.dir, "f.txt.moat-part")), false);
});

test("moat get of a file rewritten on the server mid-transfer exits 1 with ERR_FILE_CHANGED and saves nothing", async () => {
  using root = tempDir();
  using out = tempDir();
  const file = path.join(root.dir, "big.bin");
  const size = 64 << 20;
  writeRandomFile(file, size, 11);
  // Dated a day back, so the rewrite shows in the mtime at any resolution.
  const day = Date.now() / 1000 - 86_400;
  fs.utimesSync(file, day, day);
  await using server = await startServer(["--root", root.dir]);
  await using relay = await holdingRelay(server.port, 1 << 20);
  const child = spawnMoat([
    "get",
    "FILE:big.bin",
    "--server",
    `127.0.0.1:${relay.port}`,
  ], { cwd: out.dir });
  const done = finished(child, 120_000);
  await relay.held;
  // The server has read at most its socket buffers' worth: rewrite, in
  // place and at the same size, the first MiB (sent already) and one near
  // the end (not read yet), so what it sends is neither version.
  const fd = fs.openSync(file, "r+");
  for (const at of [0, size - (4 << 20)]) {
    fs.writeSync(fd, new Uint8Array(1 << 20).fill(0x5a), 0, 1 << 20, at);
  }
  fs.closeSync(fd);
  relay.release();
  const r = await done;
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    /^moat: Server error: File "big\.bin" changed while being sent; get it again\n$/,
  );
  assert.deepEqual(fs.readdirSync(out.dir), [], "no file, no part file");
  const error = await server.waitEvent(
    (e) => e.event === "error" && e.during === "transfer",
    "transfer error",
  );
  assert.equal(error.code, "ERR_FILE_CHANGED");
  assert.equal(
    server.events().some((e) => e.event === "get_finished"),
    false,
  );
});

test("moat get after a same-size rewrite that puts the mtime back gets the new content", async () => {
  using root = tempDir();
  using out = tempDir();
  const file = path.join(root.dir, "notes.txt");
  // Whole seconds, so utimes puts the mtime back exactly on every runtime.
  const when = 1_600_000_000;
  await using server = await startServer(["--root", root.dir]);
  const srv = `127.0.0.1:${server.port}`;
  for (const digest of ["crc32", "sha256"]) {
    for (const text of ["version one\n", "version two\n"]) {
      fs.writeFileSync(file, text);
      fs.utimesSync(file, when, when);
      const r = await runMoat([
        "get",
        "FILE:notes.txt",
        "--force",
        "--digest",
        digest,
        "--server",
        srv,
      ], { cwd: out.dir });
      assert.equal(r.code, 0, `${digest} ${text}: ${r.stderr}`);
      assert.equal(
        fs.readFileSync(path.join(out.dir, "notes.txt"), "utf8"),
        text,
      );
    }
  }
});

/** Waits (bounded) until `file` holds bytes. */
async function untilHolds(file: string): Promise<number> {
  const deadline = Date.now() + 20_000;
  for (let i = 0; i < 10_000 && Date.now() < deadline; i++) {
    const size = fs.existsSync(file) ? fs.statSync(file).size : 0;
    if (size > 0) return size;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`${file} stayed empty`);
}

test("moat get stopped by Ctrl-C keeps the part and says how to resume; a get without --resume refuses that part, --resume finishes it", async () => {
  using root = tempDir();
  using out = tempDir();
  writeRandomFile(path.join(root.dir, "big.bin"), 64 << 20, 13);
  await using server = await startServer(["--root", root.dir]);
  await using relay = await holdingRelay(server.port, 1 << 20);
  const child = spawnMoat([
    "get",
    "FILE:big.bin",
    "--server",
    `127.0.0.1:${relay.port}`,
  ], { cwd: out.dir });
  const done = finished(child, 60_000);
  await relay.held;
  const part = path.join(out.dir, "big.bin.moat-part");
  await untilHolds(part);
  // process.kill, not child.kill: Deno reports a child it signalled through
  // child.kill as killed by that signal, whatever it exited with.
  process.kill(child.pid!, "SIGINT");
  const r = await done;
  assert.equal(r.code, 130, r.stderr);
  assert.equal(
    r.stderr,
    "moat: interrupted; run the same command with --resume to continue\n",
  );
  assert.deepEqual(fs.readdirSync(out.dir), ["big.bin.moat-part"]);
  const kept = fs.statSync(part).size;
  assert.ok(kept > 0 && kept < 64 << 20, `part of ${kept} bytes`);

  const srv = `127.0.0.1:${server.port}`;
  const refused = await runMoat(["get", "FILE:big.bin", "--server", srv], {
    cwd: out.dir,
  });
  assert.equal(refused.code, 7, refused.stderr);
  assert.equal(
    refused.stderr,
    `moat: Refusing to discard "big.bin.moat-part": it holds ${kept} bytes of an interrupted get (use --resume to continue it, or --force to start again)\n`,
  );
  assert.equal(fs.statSync(part).size, kept, "the part is untouched");

  const resumed = await runMoat([
    "get",
    "FILE:big.bin",
    "--resume",
    "--server",
    srv,
  ], { cwd: out.dir, timeoutMs: 120_000 });
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stderr, new RegExp(`resumed at ${kept},`));
  assert.equal(
    await sha256File(path.join(out.dir, "big.bin")),
    await sha256File(path.join(root.dir, "big.bin")),
  );
  assert.deepEqual(fs.readdirSync(out.dir), ["big.bin"]);
});

test("moat get --force discards the part of an interrupted get and starts again", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "f.txt"), "the real content\n");
  fs.writeFileSync(path.join(out.dir, "f.txt.moat-part"), "stale bytes");
  await using server = await startServer(["--root", root.dir]);
  const r = await runMoat([
    "get",
    "FILE:f.txt",
    "--force",
    "--server",
    `127.0.0.1:${server.port}`,
  ], { cwd: out.dir });
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /resumed/);
  assert.deepEqual(fs.readdirSync(out.dir), ["f.txt"]);
  assert.equal(
    fs.readFileSync(path.join(out.dir, "f.txt"), "utf8"),
    "the real content\n",
  );
});

test("moat get -o - writes the verified file to stdout and nothing else there", async () => {
  using root = tempDir();
  using out = tempDir();
  writeRandomFile(path.join(root.dir, "big.bin"), 8 << 20, 17);
  await using server = await startServer(["--root", root.dir]);
  const srv = `127.0.0.1:${server.port}`;
  const child = spawnMoat(["get", "FILE:big.bin", "-o", "-", "--server", srv], {
    cwd: out.dir,
  });
  const chunks: Uint8Array[] = [];
  child.stdout!.on("data", (d: Uint8Array) => chunks.push(d));
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  child.stdin!.end();
  const code = await new Promise<number | null>((r) =>
    child.on("close", (c) => r(c))
  );
  assert.equal(code, 0, stderr);
  assert.deepEqual(
    Buffer.concat(chunks),
    fs.readFileSync(path.join(root.dir, "big.bin")),
  );
  const crc = zlib.crc32(fs.readFileSync(path.join(root.dir, "big.bin")))
    .toString(16).padStart(8, "0");
  assert.match(
    stderr,
    new RegExp(
      `^moat: wrote big\\.bin to stdout \\(8388608 bytes, crc32 ${crc}, verified\\) in `,
    ),
  );
  assert.deepEqual(fs.readdirSync(out.dir), [], "no file, no part");

  const resume = await runMoat(
    ["get", "FILE:big.bin", "-o", "-", "--resume", "--server", srv],
    { cwd: out.dir },
  );
  assert.equal(resume.code, 2);
  assert.equal(
    resume.stderr,
    "moat: --resume needs a file: a get to stdout (-o -) starts from the beginning\n",
  );
});

test("moat get -o - exits 5 on a digest mismatch and says the bytes on stdout are not the file", async () => {
  const content = new TextEncoder().encode("not what was sent\n");
  await using fake = await fakeServer(
    concat(WELCOME, fileFrames(content, { crc: 0x12345678 })),
  );
  const r = await runMoat([
    "get",
    "FILE:f",
    "-o",
    "-",
    "--server",
    `127.0.0.1:${fake.port}`,
  ]);
  assert.equal(r.code, 5, r.stderr);
  assert.equal(r.stdout, "not what was sent\n");
  const crc = zlib.crc32(content).toString(16).padStart(8, "0");
  assert.equal(
    r.stderr,
    `moat: crc32 mismatch: server sent 12345678, file hashes to ${crc}; the 18 bytes written to stdout are not the file\n`,
  );
});
