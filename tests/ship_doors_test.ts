/**
 * `moat ship --server a,b,c`: the door list, the rotation's waits, and a
 * shipper moving between in-process front doors of one vault (a door that
 * fails mid-batch, closes, is unreachable or busy), resuming from the new
 * door's lastSeq with nothing lost or stored twice; and the refusals that
 * stop it on any door.
 */

import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { compileAllowlist } from "../lib/allowlist.ts";
import { MoatError } from "../lib/errors.ts";
import {
  DoorRotation,
  doorText,
  isFatal,
  MAX_DOORS,
  parseDoors,
  SHIP_FATAL,
} from "../lib/ship/doors.ts";
import { ship, type ShipperEvent } from "../lib/ship/shipper.ts";
import { readShipState } from "../lib/ship/state.ts";
import { openSpool } from "../lib/ship/spool.ts";
import { openVault } from "../lib/vault/store.ts";
import { tempDir } from "./_e2e.ts";
import {
  client,
  door,
  Doors,
  gated,
  lines,
  stored,
  watched,
} from "./_doors.ts";
import { within } from "./_server.ts";

const tmp = tempDir("moat-doors-");
after(() => tmp[Symbol.dispose]());
let counter = 0;
function freshDir(): string {
  const dir = path.join(tmp.dir, `t${counter++}`);
  fs.mkdirSync(dir);
  return dir;
}

describe("parseDoors", () => {
  test("parseDoors takes comma lists and repeated values, IPv6 in brackets, a bare host on the default port", () => {
    assert.deepEqual(parseDoors(["a:1, b", "[::1]:7,10.0.0.1", "::1"], 99), [
      { hostname: "a", port: 1 },
      { hostname: "b", port: 99 },
      { hostname: "::1", port: 7 },
      { hostname: "10.0.0.1", port: 99 },
      { hostname: "::1", port: 99 },
    ]);
    assert.equal(doorText({ hostname: "::1", port: 7 }), "[::1]:7");
    assert.equal(doorText({ hostname: "h", port: 7 }), "h:7");
  });

  test("parseDoors refuses an empty entry, a bad port, a door twice and too many doors, in one line", () => {
    const bad: [string[], RegExp][] = [
      [["a:1,"], /an empty entry/],
      [[",a:1"], /an empty entry/],
      [["a:1", ""], /an empty entry/],
      [["a:99999"], /Invalid server address "a:99999"/],
      [["a:1,b:2", "a:1"], /a:1 is given twice/],
      [["[::1]:4320", "::1"], /\[::1\]:4320 is given twice/],
      [[
        Array.from({ length: MAX_DOORS + 1 }, (_, i) => `h${i}`).join(","),
      ], new RegExp(`${MAX_DOORS + 1} servers given: at most ${MAX_DOORS}`)],
      [[], /No server given/],
    ];
    for (const [values, message] of bad) {
      assert.throws(() => parseDoors(values), (err: unknown) => {
        assert.ok(err instanceof MoatError, String(err));
        assert.equal(err.code, "ERR_USAGE");
        assert.equal(err.exitCode, 2);
        assert.match(err.message, message);
        assert.doesNotMatch(err.message, /\n/);
        return true;
      }, JSON.stringify(values));
    }
  });
});

test("the README names exactly the codes that stop the shipper on any door", () => {
  const readme = fs.readFileSync(
    path.join(import.meta.dirname!, "..", "README.md"),
    "utf8",
  );
  const start = readme.indexOf("**Several front doors.**");
  assert.ok(start >= 0);
  const para = readme.slice(start, readme.indexOf("\n\n", start));
  const stops = para.slice(para.indexOf("What\nstops"));
  const named = new Set(
    [...stops.matchAll(/`(ERR_[A-Z_]+)`/g)].map((m) => m[1]!),
  );
  assert.deepEqual([...named].sort(), [...SHIP_FATAL].sort());
  // Named as what moves on, and so they do.
  for (const code of ["ERR_BUSY", "ERR_INTERNAL"] as const) {
    assert.ok(para.slice(0, para.indexOf("What\nstops")).includes(code));
    assert.equal(SHIP_FATAL.has(code), false, code);
  }
  assert.equal(SHIP_FATAL.has("ERR_TLS_VERIFY"), false);
  assert.equal(isFatal(new MoatError("ERR_ROLLBACK", "x")), true);
  assert.equal(isFatal(new MoatError("ERR_BUSY", "x")), false);
  assert.equal(isFatal(new Error("x")), false);
});

describe("DoorRotation", () => {
  const a = { hostname: "a", port: 1 };
  const b = { hostname: "b", port: 1 };
  const c = { hostname: "c", port: 1 };

  test("one door waits as a single server did: 0.2 s doubling to 10 s", () => {
    const doors = new DoorRotation([a]);
    const waits = Array.from({ length: 9 }, () => {
      const next = doors.failed();
      assert.deepEqual([next.from, next.to], [a, a]);
      return next.delayMs;
    });
    assert.deepEqual(waits, [
      200,
      400,
      800,
      1600,
      3200,
      6400,
      10_000,
      10_000,
      10_000,
    ]);
  });

  test("several doors: the next door at once, a wait only after a whole round failed", () => {
    const doors = new DoorRotation([a, b, c]);
    const seen = Array.from({ length: 7 }, () => {
      const { from, to, delayMs } = doors.failed();
      return `${from.hostname}>${to.hostname}:${delayMs}`;
    });
    assert.deepEqual(seen, [
      "a>b:0",
      "b>c:0",
      "c>a:200",
      "a>b:0",
      "b>c:0",
      "c>a:400",
      "a>b:0",
    ]);
  });

  test("a session that acknowledged something, or stayed up, starts the waits afresh; one that did neither does not", () => {
    let now = 0;
    const doors = new DoorRotation([a, b], { now: () => now });
    assert.equal(doors.failed().delayMs, 0);
    assert.equal(doors.failed().delayMs, 200);
    // Connected and at once lost: still the same run of failures.
    doors.connected();
    assert.equal(doors.failed().delayMs, 0);
    doors.connected();
    now += 9_999;
    assert.equal(doors.failed().delayMs, 400);
    // Acknowledged records: afresh.
    doors.connected();
    doors.progressed();
    assert.deepEqual(doors.failed(), { from: a, to: b, delayMs: 0 });
    assert.equal(doors.failed().delayMs, 200);
    // Up for the healthy time, acknowledging nothing (a quiet log): afresh.
    doors.connected();
    now += 10_000;
    assert.equal(doors.failed().delayMs, 0);
    assert.equal(doors.failed().delayMs, 200);
    doors.succeeded();
    assert.equal(doors.failed().delayMs, 0);
  });
});

describe("ship across front doors", () => {
  test("a door that fails mid-batch after storing it: the shipper moves on, resumes from the next door's lastSeq, nothing stored twice or lost", async () => {
    const dir = freshDir();
    const vault = await openVault(path.join(dir, "vault"), {
      sealIntervalMs: 0,
    });
    await using doors = new Doors();
    let failedAt = 0;
    // Door A stores the batch holding line 3000, then fails it (and all
    // after it, unstored): the ack never comes, so the shipper still holds
    // those lines unacknowledged.
    const a = await doors.open(watched(vault, async (records, append) => {
      // Appends start in order, several in flight at once.
      if (failedAt !== 0) throw new Error("the disk is gone");
      if (records.first <= 3000 && records.last >= 3000) {
        failedAt = records.last;
        await append();
        throw new Error("the disk went away");
      }
      return await append();
    }));
    const firstOnB: number[] = [];
    const b = await doors.open(watched(vault, (records, append) => {
      firstOnB.push(records.first);
      return append();
    }));
    const events: ShipperEvent[] = [];
    const text = lines(1, 6000);
    const last = await within(
      ship({
        client: client(doors.net, a.port),
        doors: [door(a.port), door(b.port)],
        inputs: ["-"],
        stdin: gated([{ text }]),
        statePath: path.join(dir, "ship.json"),
        source: "app",
        signal: new AbortController().signal,
        onEvent: (e) => events.push(e),
      }),
      "the shipper to finish",
    );
    assert.equal(last, 6000);
    assert.ok(failedAt >= 3000, "door A failed a batch");
    const lost = events.find((e) => e.type === "disconnected");
    assert.ok(lost?.type === "disconnected", JSON.stringify(events));
    assert.equal(lost.server, `127.0.0.1:${a.port}`);
    assert.equal(lost.next, `127.0.0.1:${b.port}`);
    assert.equal(lost.connected, true);
    assert.equal(lost.retryMs, 0);
    const onB = events.find((e) =>
      e.type === "connected" && e.server === `127.0.0.1:${b.port}`
    );
    assert.ok(onB?.type === "connected", JSON.stringify(events));
    // B holds what A stored, acknowledged or not; the shipper sends from there.
    assert.equal(onB.lastSeq, failedAt);
    assert.equal(firstOnB[0], failedAt + 1);
    assert.equal(await stored(vault.dir), text);
    await vault.close();
  });

  test("a door closed while shipping, then an unreachable one: the shipper goes round to a live door and loses nothing", async () => {
    const dir = freshDir();
    const vault = await openVault(path.join(dir, "vault"), {
      sealIntervalMs: 0,
    });
    await using doors = new Doors();
    let storedHalf!: () => void;
    const half = new Promise<void>((r) => (storedHalf = r));
    const a = await doors.open(watched(vault, async (records, append) => {
      const result = await append();
      if (records.last >= 1000) storedHalf();
      return result;
    }));
    const b = await doors.open(vault);
    // Nothing listens there.
    const dead = door(b.port + 100);
    let closedA!: () => void;
    const aClosed = new Promise<void>((r) => (closedA = r));
    const events: ShipperEvent[] = [];
    const text = lines(1, 2000);
    const shipping = ship({
      client: client(doors.net, a.port),
      doors: [door(a.port), dead, door(b.port)],
      inputs: ["-"],
      stdin: gated([
        { text: lines(1, 1000) },
        { text: lines(1001, 2000), gate: aClosed },
      ]),
      statePath: path.join(dir, "ship.json"),
      source: "app",
      signal: new AbortController().signal,
      onEvent: (e) => events.push(e),
    });
    await within(half, "door A to store line 1000");
    await a.server.close();
    closedA();
    assert.equal(await within(shipping, "the shipper to finish"), 2000);
    const moves = events.filter((e) => e.type === "disconnected").map((e) =>
      e.type === "disconnected" &&
      `${e.server} > ${e.next} ${e.connected} ${e.retryMs}`
    );
    assert.deepEqual(moves, [
      `127.0.0.1:${a.port} > ${doorText(dead)} true 0`,
      `${doorText(dead)} > 127.0.0.1:${b.port} false 0`,
    ]);
    const onB = events.find((e) =>
      e.type === "connected" && e.server === `127.0.0.1:${b.port}`
    );
    assert.ok(onB?.type === "connected" && onB.lastSeq >= 1000);
    assert.equal(await stored(vault.dir), text);
    await vault.close();
  });

  test("a busy door is passed over", async () => {
    const dir = freshDir();
    const vault = await openVault(path.join(dir, "vault"), {
      sealIntervalMs: 0,
    });
    await using doors = new Doors();
    const busy = await doors.open(vault, { maxConns: 0 });
    const b = await doors.open(vault);
    const events: ShipperEvent[] = [];
    const text = lines(1, 50);
    const last = await within(
      ship({
        client: client(doors.net, busy.port),
        doors: [door(busy.port), door(b.port)],
        inputs: ["-"],
        stdin: gated([{ text }]),
        statePath: path.join(dir, "ship.json"),
        source: "app",
        signal: new AbortController().signal,
        onEvent: (e) => events.push(e),
      }),
      "the shipper to finish",
    );
    assert.equal(last, 50);
    const lost = events.find((e) => e.type === "disconnected");
    assert.ok(lost?.type === "disconnected");
    assert.equal(lost.server, `127.0.0.1:${busy.port}`);
    assert.match(lost.message, /busy/i);
    assert.equal(await stored(vault.dir), text);
    await vault.close();
  });

  test("a door that refuses this shipper stops it, though the next door would take it", async () => {
    const dir = freshDir();
    const vault = await openVault(path.join(dir, "vault"), {
      sealIntervalMs: 0,
    });
    await using doors = new Doors();
    const refusing = await doors.open(vault, {
      allowlist: compileAllowlist({ deny: ["127.0.0.0/8"] }),
    });
    let reached = false;
    const b = await doors.open(watched(vault, (_records, append) => {
      reached = true;
      return append();
    }));
    await assert.rejects(
      within(
        ship({
          client: client(doors.net, refusing.port),
          doors: [door(refusing.port), door(b.port)],
          inputs: ["-"],
          stdin: gated([{ text: lines(1, 10) }]),
          statePath: path.join(dir, "ship.json"),
          source: "app",
          signal: new AbortController().signal,
          onEvent: () => {},
        }),
        "the shipper to stop",
      ),
      (err: unknown) =>
        err instanceof MoatError && err.code === "ERR_ACCESS_DENIED" &&
        err.exitCode === 3,
    );
    assert.equal(reached, false);
    const state = await readShipState(path.join(dir, "ship.json"));
    assert.equal(state?.acked ?? 0, 0);
    await vault.close();
  });

  test("a door of another vault (another checkpoint key) is a fork: exit 5, the spool kept", async () => {
    const dir = freshDir();
    const one = await openVault(path.join(dir, "one"), { sealIntervalMs: 0 });
    const other = await openVault(path.join(dir, "other"), {
      sealIntervalMs: 0,
    });
    await using doors = new Doors();
    const a = await doors.open(one);
    const b = await doors.open(other);
    const statePath = path.join(dir, "ship.json");
    // First contact through A pins its key.
    assert.equal(
      await within(
        ship({
          client: client(doors.net, a.port),
          doors: [door(a.port), door(b.port)],
          inputs: ["-"],
          stdin: gated([{ text: lines(1, 20) }]),
          statePath,
          source: "app",
          signal: new AbortController().signal,
          onEvent: () => {},
        }),
        "the first shipper",
      ),
      20,
    );
    await a.server.close();
    await assert.rejects(
      within(
        ship({
          client: client(doors.net, a.port),
          doors: [door(a.port), door(b.port)],
          inputs: ["-"],
          stdin: gated([{ text: lines(21, 30) }]),
          statePath,
          source: "app",
          signal: new AbortController().signal,
          onEvent: () => {},
        }),
        "the second shipper to stop",
      ),
      (err: unknown) =>
        err instanceof MoatError && err.code === "ERR_ROLLBACK" &&
        err.exitCode === 5 && err.message.includes(`127.0.0.1:${b.port}`),
    );
    const state = await readShipState(statePath);
    assert.equal(state?.vaultKey, one.checkpointVerifier);
    const spool = await openSpool(statePath, { source: "app" });
    try {
      assert.deepEqual([spool.ackedSeq, spool.lastSeq], [20, 30]);
    } finally {
      await spool.close();
    }
    assert.equal(other.source({ peer: "127.0.0.1", name: "app" }).lastSeq, 0);
    await one.close();
    await other.close();
  });
});
