/**
 * In-process tests of `lib/server/listener.ts` through a real `Server`: the
 * allowlist guard, the connection limit, refusals and their drain deadline,
 * the idle timeout (on a fake clock, swept by hand) and shutdown.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { compileAllowlist } from "../lib/allowlist.ts";
import { Server } from "../lib/server/mod.ts";
import { AuditLog } from "../lib/audit.ts";
import { createJail } from "../lib/jail.ts";
import { AddressInUseError } from "../lib/errors.ts";
import { Kind } from "../lib/protocol.ts";
import type { Net } from "../lib/net/types.ts";
import { type MemoryConn, type MemoryNet, memoryNet } from "./_memory_conn.ts";
import { testVault } from "./_vault_test_utils.ts";
import {
  bytes,
  openFramed,
  readAll,
  readText,
  startMemoryServer,
  within,
} from "./_server.ts";

test("Server refuses an address outside the allowlist with one ERR ACCESS_DENIED line and never accepts it", async () => {
  await using t = await startMemoryServer({
    allowlist: compileAllowlist({ allow: ["127.0.0.2"] }),
  });
  for (const input of ["hello\n", "FILE:notes.txt\n", ""]) {
    const conn = await t.connect("127.0.0.1");
    if (input !== "") await conn.write(bytes(input));
    await conn.closeWrite();
    assert.equal(
      await readText(conn),
      "ERR ACCESS_DENIED access refused by server\n",
    );
  }
  const refused = await t.audit.waitCount(
    (e) => e.event === "refused",
    3,
    "refused",
  );
  for (const e of refused) {
    assert.match(String(e.peer), /^127\.0\.0\.1:\d+$/);
    assert.equal(e.reason, "access refused by server");
  }
  assert.ok(
    !t.audit.events.some((e) => e.event === "accepted" || e.event === "chat"),
  );
});

test("Server refuses a denied address even when a wider rule allows it, and serves its neighbour", async () => {
  await using t = await startMemoryServer({
    allowlist: compileAllowlist({
      allow: ["127.0.0.0/8"],
      deny: ["127.0.0.1"],
    }),
  });
  const denied = await t.connect("127.0.0.1");
  assert.equal(
    await readText(denied),
    "ERR ACCESS_DENIED access refused by server\n",
  );
  const allowed = await openFramed(t, "chat", { from: "127.0.0.2" });
  assert.match(allowed.welcome.peer, /^127\.0\.0\.2:\d+$/);
});

test("Server sees IPv4-mapped IPv6 peers as IPv4 in the guard", async () => {
  await using t = await startMemoryServer({
    allowlist: compileAllowlist({ allow: ["10.0.0.5"] }),
  });
  const mapped = await openFramed(t, "chat", { from: "::ffff:10.0.0.5" });
  assert.equal(mapped.welcome.name, "c1");
  const other = await t.connect("::ffff:10.0.0.6");
  assert.equal(
    await readText(other),
    "ERR ACCESS_DENIED access refused by server\n",
  );
});

test("Server refuses connections over maxConns with BUSY and serves again once one closes", async () => {
  await using t = await startMemoryServer({ maxConns: 1 });
  const first = await openFramed(t, "chat");
  const second = await t.connect();
  assert.equal(
    await readText(second),
    "ERR BUSY server busy: too many connections\n",
  );
  const refused = await t.audit.waitFor(
    (e) => e.event === "refused" && /max-conns|too many/.test(String(e.reason)),
    "busy refusal",
  );
  assert.match(String(refused.peer), /^127\.0\.0\.1:\d+$/);
  first.conn.close();
  await t.audit.waitFor((e) => e.event === "closed", "the first to close");
  const third = await openFramed(t, "chat");
  assert.equal(third.welcome.name, "c2");
});

test("Server refuses a peer over maxConnsPerPeer with BUSY while another address is still served", async () => {
  await using t = await startMemoryServer({
    maxConns: 10,
    maxConnsPerPeer: 2,
    allowlist: compileAllowlist({ allow: ["127.0.0.1", "127.0.0.2"] }),
  });
  const a1 = await openFramed(t, "chat");
  // The peer's second connection, mapped from IPv6, counts as the same address.
  const a2 = await t.connect("::ffff:127.0.0.1");
  await t.audit.waitFor(
    (e) => e.event === "accepted" && e.name === "c2",
    "the second accepted",
  );
  const a3 = await t.connect("127.0.0.1");
  assert.equal(
    await readText(a3),
    "ERR BUSY server busy: too many connections from this address\n",
  );
  const refused = await t.audit.waitFor(
    (e) => e.event === "refused" && /from this address/.test(String(e.reason)),
    "per-peer busy refusal",
  );
  assert.equal(refused.code, "ERR_BUSY");
  assert.equal(t.audit.named("listening")[0]!.maxConnsPerPeer, 2);
  // Another address still gets in: one peer cannot take every slot.
  const b = await t.connect("127.0.0.2");
  await t.audit.waitFor(
    (e) => e.event === "accepted" && String(e.peer).startsWith("127.0.0.2:"),
    "the other address accepted",
  );
  // A slot given back is taken again.
  a1.conn.close();
  await t.audit.waitFor(
    (e) => e.event === "closed" && e.name === "c1",
    "the first to close",
  );
  const a4 = await openFramed(t, "chat");
  assert.match(a4.welcome.name, /^c\d+$/);
  a2.close();
  b.close();
});

test("Server closes a refused connection that keeps its input open once the drain deadline passes", async () => {
  await using t = await startMemoryServer({
    allowlist: compileAllowlist({ allow: ["127.0.0.2"] }),
  });
  const conn = await t.connect("127.0.0.1");
  await conn.write(bytes("still talking"));
  // The notice and the half-close come at once; the drain then waits.
  assert.equal(
    await readText(conn),
    "ERR ACCESS_DENIED access refused by server\n",
  );
  await within(conn.drained(), "the drain to read the input");
  t.server.sweep();
  assert.equal(conn.peer.isClosed, false, "closed before the deadline");
  t.clock.advance(1000);
  t.server.sweep();
  assert.equal(conn.peer.isClosed, true, "still open after the deadline");
});

test("Server closes an idle connection after idleTimeoutMs, not before", async () => {
  await using t = await startMemoryServer({ idleTimeoutMs: 1000 });
  const conn = await t.connect();
  await t.audit.waitFor((e) => e.event === "accepted", "accepted");
  t.clock.advance(1000);
  t.server.sweep();
  assert.equal(conn.peer.isClosed, false, "closed before the timeout");
  t.clock.advance(1);
  t.server.sweep();
  assert.equal(conn.peer.isClosed, true, "still open after the timeout");
  assert.equal(await readText(conn), "");
  const closed = await t.audit.waitFor(
    (e) => e.event === "closed" && e.reason === "idle timeout",
    "idle close",
  );
  assert.equal(closed.name, "c1");
});

test("Server counts reads as activity for the idle timeout", async () => {
  await using t = await startMemoryServer({ idleTimeoutMs: 1000 });
  const client = await openFramed(t, "chat");
  t.clock.advance(900);
  await client.send(Kind.Chat, bytes("still here"));
  await t.audit.waitFor((e) => e.event === "chat", "chat");
  t.clock.advance(900);
  t.server.sweep();
  assert.equal(client.conn.peer.isClosed, false);
  t.clock.advance(101);
  t.server.sweep();
  assert.equal(client.conn.peer.isClosed, true);
});

test("Server.close closes every connection, logs why, and ends with a shutdown line", async () => {
  const t = await startMemoryServer();
  const a = await openFramed(t, "chat");
  const b = await t.connect();
  await b.write(bytes("plain\n"));
  await t.audit.waitFor((e) => e.event === "chat", "the plain line");
  await t.server.close();
  assert.equal(t.server.connections, 0);
  // The framed member heard the plain line, then the close.
  const heard = await readAll(a.conn);
  assert.equal(heard[0], Kind.Chat);
  assert.equal(await readText(b), "");
  const closed = t.audit.named("closed");
  assert.deepEqual(closed.map((e) => e.reason), [
    "server shutting down",
    "server shutting down",
  ]);
  assert.equal(t.audit.events.at(-1)!.event, "shutdown");
  assert.equal(t.net.listeners.size, 0);
  await t[Symbol.asyncDispose]();
});

test("Server.listen shares the port of the first host with port 0 and closes all on a taken port", async () => {
  const net = memoryNet();
  const lines: string[] = [];
  const options = {
    net,
    hosts: ["127.0.0.1", "::1"],
    port: 0,
    allowlist: compileAllowlist({}),
    jail: await createJail("."),
    audit: new AuditLog((l) => lines.push(l)),
    version: "0.0.0-test",
  };
  const server = new Server(options);
  const addrs = await server.listen();
  assert.equal(addrs.length, 2);
  assert.equal(addrs[0]!.port, addrs[1]!.port);
  const listening = JSON.parse(lines[0]!);
  assert.equal(listening.event, "listening");
  assert.deepEqual(listening.addrs, [
    `127.0.0.1:${addrs[0]!.port}`,
    `[::1]:${addrs[0]!.port}`,
  ]);
  assert.equal(listening.allow, compileAllowlist({}).describe());
  // The second server gets 127.0.0.1 on another port but not ::1 on it.
  await net.listen({ hostname: "::1", port: 40001 });
  const taken = new Server(options);
  await assert.rejects(taken.listen(), AddressInUseError);
  assert.deepEqual(
    [...net.listeners.keys()].sort(),
    [
      `127.0.0.1:${addrs[0]!.port}`,
      "::1:40001",
      `::1:${addrs[0]!.port}`,
    ].sort(),
  );
  await server.close();
});

test("Server refuses syslog options without a vault", () => {
  assert.throws(
    () =>
      new Server({
        net: memoryNet(),
        hosts: ["127.0.0.1"],
        allowlist: compileAllowlist({}),
        jail: { root: ".", open: () => Promise.reject(new Error("unused")) },
        audit: new AuditLog(() => {}),
        version: "0.0.0-test",
        syslog: { port: 0 },
      }),
    {
      name: "TypeError",
      message: "Invalid server options: syslog needs a vault",
    },
  );
});

/**
 * Gives every connection the server accepts a TLS handshake that the test
 * settles by hand (`handshakes`, in arrival order), and that fails when the
 * connection is closed first, as the runtimes' handshakes do.
 */
function manualHandshakes() {
  const handshakes: {
    resolve(): void;
    reject(err: Error): void;
    conn: MemoryConn;
  }[] = [];
  const wrap = (inner: MemoryNet): Net => ({
    ...inner,
    async listen(options) {
      const l = await inner.listen(options);
      return {
        addr: l.addr,
        close: () => l.close(),
        async *[Symbol.asyncIterator]() {
          for await (const conn of l) {
            conn.handshake = () =>
              new Promise<void>((resolve, reject) => {
                const close = conn.close.bind(conn);
                conn.close = () => {
                  reject(new Error("closed during the TLS handshake"));
                  close();
                };
                handshakes.push({ resolve, reject, conn: conn as MemoryConn });
              });
            yield conn;
          }
        },
      };
    },
  });
  return { wrap, handshakes };
}

test("Server gives a peer's slot back whatever ends its TLS handshake: failure, timeout, the peer's close, a refused certificate", async () => {
  const h = manualHandshakes();
  await using t = await startMemoryServer({
    maxConnsPerPeer: 1,
    handshakeTimeoutMs: 1000,
    wrapNet: h.wrap,
  });
  const waitHandshakes = async (n: number) => {
    for (let i = 0; i < 1000 && h.handshakes.length < n; i++) {
      await new Promise((r) => setTimeout(r, 0));
    }
    assert.equal(h.handshakes.length, n, "handshakes started");
  };
  const busy = async () => {
    const extra = await t.connect("127.0.0.1");
    assert.match(await readText(extra), /from this address/);
  };
  // 1. The handshake fails.
  await t.connect("127.0.0.1");
  await waitHandshakes(1);
  await busy();
  h.handshakes[0]!.reject(new Error("bad record"));
  await t.audit.waitCount((e) => e.code === "TLS_HANDSHAKE", 1, "failure");
  // 2. It times out: the sweep closes it.
  await t.connect("127.0.0.1");
  await waitHandshakes(2);
  await busy();
  t.clock.advance(1001);
  t.server.sweep();
  await t.audit.waitCount((e) => e.code === "TLS_HANDSHAKE", 2, "timeout");
  // 3. The peer closes while it runs.
  const third = await t.connect("127.0.0.1");
  await waitHandshakes(3);
  third.close();
  h.handshakes[2]!.conn.close();
  await t.audit.waitCount((e) => e.code === "TLS_HANDSHAKE", 3, "the close");
  // Then a fourth still gets its handshake.
  await t.connect("127.0.0.1");
  await waitHandshakes(4);
  // 4. It succeeds, then the certificate check refuses it (no certificate
  // where one is required: the memory conn's `tls` is undefined).
  await t.server.close();
  const cert = manualHandshakes();
  await using c = await startMemoryServer({
    maxConnsPerPeer: 1,
    wrapNet: cert.wrap,
    auth: { certs: { allowed: new Set() } },
  });
  for (let i = 0; i < 3; i++) {
    const conn = await c.connect("127.0.0.1");
    for (let j = 0; j < 1000 && cert.handshakes.length <= i; j++) {
      await new Promise((r) => setTimeout(r, 0));
    }
    cert.handshakes[i]!.resolve();
    assert.match(await readText(conn), /^ERR CERT_/);
  }
  // Not one of those three holds a slot: a fourth gets its handshake.
  await c.connect("127.0.0.1");
  for (let j = 0; j < 1000 && cert.handshakes.length < 4; j++) {
    await new Promise((r) => setTimeout(r, 0));
  }
  assert.equal(cert.handshakes.length, 4);
});

test("Server counts a TLS handshake on the syslog port against the syslog port's limits, never the main port's", async () => {
  await using v = await testVault("moat-listener-test-");
  const h = manualHandshakes();
  await using t = await startMemoryServer({
    maxConns: 1,
    handshakeTimeoutMs: 1000,
    vault: v.vault,
    syslog: { port: 0, maxConns: 1 },
    wrapNet: h.wrap,
  });
  const listening = t.audit.named("listening")[0]!;
  const addr = (listening.syslog as string[])[0]!;
  const syslogPort = Number(addr.slice(addr.lastIndexOf(":") + 1));
  const connectSyslog = (from: string) =>
    t.net.connect({
      hostname: "127.0.0.1",
      port: syslogPort,
      from: { hostname: from, port: 0 },
    });
  // A silent TLS sender on the syslog port, its handshake pending.
  await connectSyslog("127.0.0.2");
  for (let i = 0; i < 1000 && h.handshakes.length < 1; i++) {
    await new Promise((r) => setTimeout(r, 0));
  }
  assert.equal(h.handshakes.length, 1);
  // The syslog port is full: another sender is BUSY there...
  const second = await connectSyslog("127.0.0.3");
  assert.match(await readText(second), /^ERR BUSY server busy: too many/);
  // ...and the main port still has its slot.
  const main = await t.connect("127.0.0.1");
  for (let i = 0; i < 1000 && h.handshakes.length < 2; i++) {
    await new Promise((r) => setTimeout(r, 0));
  }
  h.handshakes[1]!.resolve();
  await t.audit.waitFor(
    (e) => e.event === "accepted" && String(e.peer).startsWith("127.0.0.1:"),
    "the main port's client accepted",
  );
  // The pending handshake still has its deadline.
  t.clock.advance(1001);
  t.server.sweep();
  await t.audit.waitFor(
    (e) => e.code === "TLS_HANDSHAKE" && e.listener === "syslog",
    "the syslog handshake timed out",
  );
  assert.equal(h.handshakes[0]!.conn.isClosed, true);
  main.close();
});

test("Server closes a connection whose guard throws (no guard should): fail closed, never an open socket nobody serves", async () => {
  const real = compileAllowlist({});
  const allowlist: typeof real = Object.create(real, {
    check: {
      value: (hostname: string) => {
        if (hostname === "127.0.0.9") throw new Error("a bug in a guard");
        return real.check(hostname);
      },
    },
  });
  await using t = await startMemoryServer({ allowlist, maxConnsPerPeer: 1 });
  const conn = await t.connect("127.0.0.9");
  assert.equal(await readText(conn), "");
  const error = await t.audit.waitFor((e) => e.event === "error", "error");
  assert.equal(error.message, "a bug in a guard");
  assert.match(String(error.peer), /^127\.0\.0\.9:\d+$/);
  // And the server still serves the others.
  const other = await openFramed(t, "chat");
  assert.match(other.welcome.name, /^c\d+$/);
  other.conn.close();
});
