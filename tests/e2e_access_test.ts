import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { runMoat, startServer, tempDir } from "./_e2e.ts";

test("moat serve refuses a peer outside --allow, the client says so, and the audit log shows it", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "a.txt"), "a");
  await using server = await startServer([
    "--allow",
    "127.0.0.2",
    "--root",
    root.dir,
  ]);
  const r = await runMoat([
    "get",
    "FILE:a.txt",
    "--server",
    `127.0.0.1:${server.port}`,
  ], { cwd: out.dir });
  assert.equal(r.code, 3, r.stderr);
  assert.equal(r.stderr, "moat: Access refused by server\n");
  const refused = await server.waitEvent(
    (e) => e.event === "refused",
    "refused",
  );
  assert.match(String(refused.peer), /^127\.0\.0\.1:\d+$/);
  assert.equal(fs.existsSync(path.join(out.dir, "a.txt")), false);
  assert.ok(!server.events().some((e) => e.event === "accepted"));
});

test("moat serve refuses a denied peer even when a wider rule allows it", async () => {
  await using server = await startServer([
    "--allow",
    "127.0.0.0/8",
    "--deny",
    "127.0.0.1",
  ]);
  const r = await runMoat(["chat", "--server", `127.0.0.1:${server.port}`]);
  assert.equal(r.code, 3);
  assert.match(r.stderr, /Access refused by server/);
});

test("moat serve lets loopback in by default, listens on loopback only, and says so in the start-up log", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "a.txt"), "loopback\n");
  // No --host and no --allow: moat picks its own hosts.
  await using server = await startServer(["--root", root.dir], {
    defaultHost: true,
  });
  const listening = server.events().find((e) => e.event === "listening")!;
  assert.match(String(listening.allow), /loopback only/);
  // 127.0.0.1 and ::1 (127.0.0.1 alone on a host without IPv6), never a wildcard.
  const addrs = listening.addrs as string[];
  assert.equal(addrs[0], `127.0.0.1:${server.port}`);
  assert.ok(addrs.length <= 2, JSON.stringify(addrs));
  for (const addr of addrs) {
    assert.match(addr, /^(127\.0\.0\.1|\[::1\]):\d+$/);
  }
  for (const [i, addr] of addrs.entries()) {
    const r = await runMoat([
      "get",
      "FILE:a.txt",
      "-o",
      `a${i}.txt`,
      "--server",
      addr,
    ], { cwd: out.dir });
    assert.equal(r.code, 0, `${addr}: ${r.stderr}`);
    assert.equal(
      fs.readFileSync(path.join(out.dir, `a${i}.txt`), "utf8"),
      "loopback\n",
    );
  }
  const accepted = server.events().filter((e) => e.event === "accepted");
  assert.deepEqual(
    accepted.map((e) => String(e.peer).replace(/:\d+$/, "")),
    addrs.map((a) => a.replace(/:\d+$/, "")),
  );
  assert.ok(!server.events().some((e) => e.event === "refused"));
});

test("moat serve refuses a malformed or non-canonical rule at start-up with one line naming it", async () => {
  for (
    const rule of [
      "010.0.0.5",
      "127.1",
      "0x7f.0.0.1",
      "2130706433",
      "10.0.0.0/33",
      "nonsense",
    ]
  ) {
    const r = await runMoat(["serve", "--port", "0", "--allow", rule]);
    assert.equal(r.code, 2, `${rule}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.ok(r.stderr.includes(`"${rule}"`), r.stderr);
  }
});

test("moat serve reads --allow-file with comments and blank lines", async () => {
  using dir = tempDir();
  const file = path.join(dir.dir, "allow.txt");
  fs.writeFileSync(file, "# trusted hosts\n\n127.0.0.2  # other\n10.0.0.0/8\n");
  await using server = await startServer(["--allow-file", file]);
  const r = await runMoat(["chat", "--server", `127.0.0.1:${server.port}`]);
  assert.equal(r.code, 3);
  const listening = server.events().find((e) => e.event === "listening")!;
  assert.match(String(listening.allow), /127\.0\.0\.2\/32/);
});

test("moat serve enforces --max-conns with a busy refusal", async () => {
  await using server = await startServer(["--max-conns", "1"]);
  const first = net.connect(server.port, "127.0.0.1");
  await new Promise<void>((r) => first.on("connect", () => r()));
  await server.waitEvent((e) => e.event === "accepted", "accepted");
  const r = await runMoat(["chat", "--server", `127.0.0.1:${server.port}`]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /busy/i);
  first.destroy();
  await server.waitEvent(
    (e) => e.event === "refused" && /max-conns|too many/.test(String(e.reason)),
    "busy refusal",
  );
});

test("moat serve --max-conns-per-peer refuses one address's extra connection with BUSY and still takes another address", async () => {
  await using server = await startServer(["--max-conns-per-peer", "2"]);
  const held: net.Socket[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const s = net.connect(server.port, "127.0.0.1");
      held.push(s);
      await new Promise<void>((r) => s.on("connect", () => r()));
    }
    await server.waitEvent(
      () => server.events().filter((e) => e.event === "accepted").length >= 2,
      "two accepted",
    );
    const r = await runMoat(["chat", "--server", `127.0.0.1:${server.port}`]);
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, /too many connections from this address/);
    await server.waitEvent(
      (e) =>
        e.event === "refused" && /from this address/.test(String(e.reason)),
      "per-peer busy refusal",
    );
    // Another loopback address is its own peer.
    const other = net.connect({
      port: server.port,
      host: "127.0.0.1",
      localAddress: "127.0.0.2",
    });
    held.push(other);
    await server.waitEvent(
      (e) => e.event === "accepted" && String(e.peer).startsWith("127.0.0.2:"),
      "the other address accepted",
    );
  } finally {
    for (const s of held) s.destroy();
  }
});

test("moat serve refuses a missing, zero, negative, non-numeric or huge --max-conns-per-peer in one line", async () => {
  for (const v of ["", "0", "-1", "abc", "99999999999999999999"]) {
    const r = await runMoat([
      "serve",
      "--port",
      "0",
      "--max-conns-per-peer",
      v,
    ]);
    assert.equal(r.code, 2, `${JSON.stringify(v)}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, /Invalid --max-conns-per-peer/);
  }
});

test("moat serve shuts down cleanly on SIGTERM", async () => {
  const server = await startServer([]);
  const code = await server.stop();
  assert.equal(code, 0);
  assert.ok(server.events().some((e) => e.event === "shutdown"));
});

test("moat serve listens on IPv6 loopback with --host ::1", async () => {
  const { spawnMoat, LineWatcher } = await import("./_e2e.ts");
  const child = spawnMoat(["serve", "--host", "::1", "--port", "0"]);
  const audit = new LineWatcher(child.stderr!);
  const line = await audit.waitFor((l) =>
    l.includes('"listening"') || l.startsWith("moat:")
  );
  try {
    if (line.startsWith("moat:")) {
      // No IPv6 on this host: the error must still be one clean line.
      assert.equal(line.split("\n").length, 1);
      return;
    }
    const addr = JSON.parse(line).addrs[0] as string;
    assert.match(addr, /^\[::1\]:\d+$/);
    const port = addr.slice(addr.lastIndexOf(":") + 1);
    using out = tempDir();
    const r = await runMoat(["get", "FILE:nope", "--server", `[::1]:${port}`], {
      cwd: out.dir,
    });
    assert.equal(r.code, 4, r.stderr);
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => child.on("close", r));
  }
});

test("moat exits with a one-line error for unknown commands and options, and --help works everywhere", async () => {
  const bad = await runMoat(["frobnicate"]);
  assert.equal(bad.code, 2);
  assert.equal(
    bad.stderr,
    'moat: Unknown command "frobnicate" (see moat help)\n',
  );
  const opt = await runMoat(["get", "--bogus", "x"]);
  assert.equal(opt.code, 2);
  assert.equal(opt.stderr.trim().split("\n").length, 1);
  for (const cmd of ["serve", "get", "chat"]) {
    const h = await runMoat([cmd, "--help"]);
    assert.equal(h.code, 0);
    assert.match(h.stdout, new RegExp(`Usage: moat ${cmd}`));
  }
  const main = await runMoat(["help"]);
  assert.match(main.stdout, /Commands:/);
  const v = await runMoat(["--version"]);
  assert.match(
    v.stdout,
    /^moat \d+\.\d+\.\d+ \((deno|bun) [\d.]+; [\w-]+\)\n$/,
  );
});

test("moat get reports a server that is not listening as a connection error", async () => {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  using out = tempDir();
  const r = await runMoat(["get", "FILE:x", "--server", `127.0.0.1:${port}`], {
    cwd: out.dir,
  });
  assert.equal(r.code, 6, r.stderr);
  assert.deepEqual(fs.readdirSync(out.dir), [], "no part file left behind");
  assert.equal(r.stderr.trim().split("\n").length, 1);
  assert.match(r.stderr, /connect/i);
});
