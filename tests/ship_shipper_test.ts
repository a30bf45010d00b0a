import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { compileAllowlist } from "../lib/allowlist.ts";
import { AuditLog } from "../lib/audit.ts";
import type { ClientOptions } from "../lib/client.ts";
import { createJail } from "../lib/jail.ts";
import { getNet } from "../lib/net/mod.ts";
import { Server } from "../lib/server/mod.ts";
import { ShipBacklog } from "../lib/ship/backlog.ts";
import {
  ship,
  type ShipOptions,
  type ShipperEvent,
  SPOOL_RECORD_OVERHEAD,
} from "../lib/ship/shipper.ts";
import { openSpool } from "../lib/ship/spool.ts";
import { readTakeover } from "../lib/ship/takeover.ts";
import { readRecords } from "../lib/vault/read.ts";
import { openVault, type Vault } from "../lib/vault/store.ts";
import { VERSION } from "../lib/version.ts";
import { quietPort } from "./_test_utils.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-shipper-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

let counter = 0;
function freshDir(): string {
  const dir = path.join(base, `t${counter++}`);
  fs.mkdirSync(dir);
  return dir;
}

const te = new TextEncoder();
const td = new TextDecoder();

/** "line N xxx…\n" lines from..to (about 30 bytes each). */
function lines(from: number, to: number, tag = "line"): string {
  let s = "";
  for (let i = from; i <= to; i++) {
    s += `${tag} ${i} ${"x".repeat(18 + (i % 7))}\n`;
  }
  return s;
}

/**
 * A moat server with a vault on a loopback port (0: any); `wrap` may change
 * what the server sees of the vault.
 */
async function startVaultServer(
  dir: string,
  port = 0,
  wrap: (vault: Vault) => Vault = (vault) => vault,
) {
  const vault = await openVault(path.join(dir, "vault"));
  const server = new Server({
    net: getNet(),
    hosts: ["127.0.0.1"],
    port,
    allowlist: compileAllowlist({}),
    jail: await createJail(dir),
    audit: new AuditLog(() => {}),
    version: VERSION,
    vault: wrap(vault),
  });
  const [addr] = await server.listen();
  return {
    port: addr!.port,
    async [Symbol.asyncDispose]() {
      await server.close();
      await vault.close();
    },
  };
}

function client(port: number): ClientOptions {
  return {
    net: getNet(),
    server: { hostname: "127.0.0.1", port },
    version: VERSION,
    timeoutMs: 10_000,
  };
}

/** Events as they come, with a way to wait for one. */
class Events {
  list: ShipperEvent[] = [];
  #waiters: { pred: (e: ShipperEvent) => boolean; resolve: () => void }[] = [];

  push = (e: ShipperEvent) => {
    this.list.push(e);
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.pred(e)) return true;
      w.resolve();
      return false;
    });
  };

  waitFor(pred: (e: ShipperEvent) => boolean): Promise<void> {
    if (this.list.some(pred)) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ pred, resolve }));
  }

  types(): string[] {
    return this.list.map((e) => e.type);
  }
}

/** Polls `cond` every 20 ms, at most 1000 times. */
async function until(cond: () => boolean | Promise<boolean>, what: string) {
  for (let i = 0; i < 1000; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.fail(`timed out waiting for ${what}`);
}

async function vaultLines(dir: string, name: string): Promise<string> {
  let out = "";
  const vault = path.join(dir, "vault");
  for await (const r of readRecords(vault, { source: name })) {
    out += td.decode(r.line) + "\n";
  }
  return out;
}

/** Chunks of text as stdin. */
async function* chunks(text: string, size: number) {
  const bytes = te.encode(text);
  for (let at = 0; at < bytes.length; at += size) {
    yield bytes.subarray(at, at + size);
  }
}

function options(
  dir: string,
  port: number,
  extra: Partial<ShipOptions> & Pick<ShipOptions, "signal" | "onEvent">,
): ShipOptions {
  return {
    client: client(port),
    inputs: ["-"],
    statePath: path.join(dir, "ship.json"),
    source: "app",
    ...extra,
  };
}

describe("ship spool pressure", () => {
  test("SPOOL_RECORD_OVERHEAD is what a spool record takes beyond its line", async () => {
    const dir = freshDir();
    const spool = await openSpool(path.join(dir, "s.json"), { source: "x" });
    try {
      const input = await spool.input(path.join(dir, "a.log"));
      const line = (n: number) => ({
        line: te.encode("y".repeat(n)),
        dev: 1,
        ino: 2,
        offset: n,
      });
      await spool.append(input.id, [line(10)]);
      const before = spool.usedBytes;
      await spool.append(input.id, [line(100), line(3)]);
      assert.equal(
        spool.usedBytes - before,
        2 * SPOOL_RECORD_OVERHEAD + 103,
      );
    } finally {
      await spool.close();
    }
  });

  test("ship reports a full spool with numbers that add up, and no room on shutdown", async () => {
    const dir = freshDir();
    const log = path.join(dir, "app.log");
    fs.writeFileSync(log, lines(1, 40_000));
    const events = new Events();
    const stop = new AbortController();
    const backlog = new ShipBacklog();
    const done = ship({
      client: client(await quietPort()),
      inputs: [log],
      statePath: path.join(dir, "ship.json"),
      source: "app",
      spoolBytes: 1 << 20,
      backlog,
      signal: stop.signal,
      onEvent: events.push,
    });
    await events.waitFor((e) => e.type === "full");
    const full = events.list.find((e) => e.type === "full")!;
    assert.ok(full.type === "full");
    assert.equal(full.maxBytes, 1 << 20);
    assert.ok(full.usedBytes <= full.maxBytes, JSON.stringify(full));
    assert.ok(
      full.usedBytes + full.waitingBytes > full.maxBytes,
      JSON.stringify(full),
    );
    assert.ok(full.waitingLines > 0);
    // The backlog is every spooled line, exactly.
    const spooledLines = backlog.lines;
    assert.ok(spooledLines > 0);
    assert.equal(
      backlog.bytes,
      te.encode(lines(1, spooledLines)).length - spooledLines,
    );
    await events.waitFor((e) => e.type === "disconnected");
    const retry = events.list.find((e) => e.type === "disconnected")!;
    assert.ok(retry.type === "disconnected" && retry.connected === false);
    stop.abort();
    assert.equal(await done, 0);
    assert.deepEqual(
      events.types().filter((t) => t === "full" || t === "resumed"),
      ["full"],
      "closing admits the waiting append, but that is not room",
    );
  });

  test("ship says so once acknowledgements make room, and the backlog drains to nothing", async () => {
    const dir = freshDir();
    const port = await quietPort();
    const events = new Events();
    const backlog = new ShipBacklog();
    const text = lines(1, 60_000);
    const done = ship(options(dir, port, {
      stdin: chunks(text, 64 * 1024),
      spoolBytes: 1 << 20,
      backlog,
      signal: new AbortController().signal,
      onEvent: events.push,
    }));
    await events.waitFor((e) => e.type === "full");
    assert.ok(backlog.lines > 0);
    await using _server = await startVaultServer(dir, port);
    assert.equal(await done, 60_000);
    const pressure = events.types().filter((t) =>
      t === "full" || t === "resumed"
    );
    assert.equal(pressure[0], "full");
    assert.equal(pressure[1], "resumed");
    assert.deepEqual([backlog.lines, backlog.bytes], [0, 0]);
    assert.equal(backlog.ackedLines, 60_000);
    assert.equal(await vaultLines(dir, "app"), text);
  });
});

describe("ship backlog", () => {
  test("ship counts lines an earlier run left in the spool", async () => {
    const dir = freshDir();
    const port = await quietPort();
    const stop = new AbortController();
    const text = lines(1, 500);
    const spooled = new ShipBacklog();
    const done = ship(options(dir, port, {
      stdin: chunks(text, 4096),
      backlog: spooled,
      signal: stop.signal,
      onEvent: () => {},
    }));
    await until(() => spooled.lines === 500, "500 lines spooled");
    stop.abort();
    await done;
    // The next run reads nothing new but knows what the spool holds.
    const backlog = new ShipBacklog();
    const events = new Events();
    await using _server = await startVaultServer(dir, port);
    const last = await ship(options(dir, port, {
      stdin: chunks("", 1),
      backlog,
      signal: new AbortController().signal,
      onEvent: (e) => {
        if (e.type === "connected") {
          assert.deepEqual([backlog.lines, backlog.bytes], [
            500,
            te.encode(text).length - 500,
          ]);
        }
        events.push(e);
      },
    }));
    assert.equal(last, 500);
    assert.ok(events.types().includes("connected"));
    assert.deepEqual([backlog.lines, backlog.bytes], [0, 0]);
    assert.equal(await vaultLines(dir, "app"), text);
  });

  test("ship with no inputs sends what the spool holds and ends; with nothing spooled it does not connect", async () => {
    const dir = freshDir();
    const port = await quietPort();
    const events = new Events();
    assert.equal(
      await ship(options(dir, port, {
        inputs: [],
        signal: new AbortController().signal,
        onEvent: events.push,
      })),
      0,
    );
    assert.deepEqual(events.types(), ["done"]);
  });
});

describe("ship takeover", () => {
  test("readTakeover and ship resume a file where an earlier source stopped, and send its rest", async () => {
    const dir = freshDir();
    const port = await quietPort();
    const log = path.join(dir, "auth.log");
    fs.writeFileSync(log, lines(1, 300, "auth"));
    // An earlier moat shipped every file as the host's source; the server
    // was down, so all of it is still in that spool.
    const earlier = path.join(dir, "ship-web1.json");
    const stop = new AbortController();
    const events = new Events();
    const backlog = new ShipBacklog();
    const old = ship({
      client: client(port),
      inputs: [log],
      statePath: earlier,
      source: "web1",
      backlog,
      signal: stop.signal,
      onEvent: events.push,
    });
    await until(() => backlog.lines === 300, "300 lines spooled");
    stop.abort();
    await old;
    fs.appendFileSync(log, lines(301, 400, "auth"));

    assert.equal(
      await readTakeover(earlier, { source: "other", paths: [log] }),
      undefined,
    );
    assert.equal(
      await readTakeover(path.join(dir, "none.json"), {
        source: "web1",
        paths: [log],
      }),
      undefined,
    );
    const takeover = await readTakeover(earlier, {
      source: "web1",
      paths: [log, path.join(dir, "never.log")],
    });
    assert.ok(takeover);
    assert.equal(takeover.unacked, 300);
    assert.deepEqual([...takeover.positions.keys()], [log]);
    assert.equal(
      takeover.positions.get(log)!.offset,
      te.encode(lines(1, 300, "auth")).length,
    );

    await using _server = await startVaultServer(dir, port);
    const drained = await ship({
      client: client(port),
      inputs: [],
      statePath: earlier,
      source: "web1",
      signal: new AbortController().signal,
      onEvent: () => {},
    });
    assert.equal(drained, 300);
    const follow = new AbortController();
    const moved = new ShipBacklog();
    const shipping = ship({
      client: client(port),
      inputs: [log],
      resume: takeover.positions,
      statePath: path.join(dir, "ship-auth.json"),
      source: "auth",
      backlog: moved,
      signal: follow.signal,
      onEvent: () => {},
    });
    await until(
      async () => (await vaultLines(dir, "auth")).split("\n").length > 100,
      "lines 301-400 stored",
    );
    follow.abort();
    await shipping;
    assert.equal(await vaultLines(dir, "web1"), lines(1, 300, "auth"));
    assert.equal(await vaultLines(dir, "auth"), lines(301, 400, "auth"));
  });
});

describe("ship after a failed append", () => {
  test("ship reconnects with backoff when the server's vault fails an append (ERR_INTERNAL, no server path), and ships every line once", async () => {
    const dir = freshDir();
    let failures = 2;
    // The first two appends fail as a full descriptor table would make them.
    // A Proxy, not Object.create: the Vault's methods use private fields,
    // so every method but source() runs on the vault itself.
    const failing = (vault: Vault): Vault =>
      new Proxy(vault, {
        get: (target, prop) => {
          if (prop !== "source") {
            const value = Reflect.get(target, prop, target);
            return typeof value === "function" ? value.bind(target) : value;
          }
          return (key: Parameters<Vault["source"]>[0]) => {
            const source = vault.source(key);
            return {
              key: source.key,
              id: source.id,
              get lastSeq() {
                return source.lastSeq;
              },
              get acceptedSeq() {
                return source.acceptedSeq;
              },
              append: (...args: Parameters<typeof source.append>) =>
                failures-- > 0
                  ? Promise.reject(
                    Object.assign(
                      new Error(`EMFILE: too many open files, open '${dir}'`),
                      { code: "EMFILE" },
                    ),
                  )
                  : source.append(...args),
            };
          };
        },
      });
    await using server = await startVaultServer(dir, 0, failing);
    const events = new Events();
    const text = lines(1, 300);
    const last = await ship(options(dir, server.port, {
      stdin: chunks(text, 1000),
      signal: new AbortController().signal,
      onEvent: events.push,
    }));
    assert.equal(last, 300);
    const lost = events.list.filter((e) => e.type === "disconnected");
    assert.equal(lost.length, 2);
    for (const e of lost) {
      assert.ok(e.type === "disconnected" && e.connected);
      assert.equal(
        e.message,
        "Server error: Internal error (see the server's audit log)",
      );
    }
    // Backoff doubles while the server keeps failing.
    assert.deepEqual(
      lost.map((e) => e.type === "disconnected" && e.retryMs),
      [200, 400],
    );
    assert.equal(await vaultLines(dir, "app"), text);
  });
});
