/**
 * Receipts end to end in one process: a real server and vault on an
 * in-memory network, real shippers with state files, and vaults that were
 * rolled back, cut, forked, re-keyed or that lie in their proofs. Each must
 * stop the shipper with `ERR_ROLLBACK` (exit 5), naming both checkpoints,
 * with its spool and state intact; a clean run and an older shipper must
 * work as before.
 *
 * @module
 */

import { after, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { openCheckpoint, parseVerifier } from "../lib/checkpoint.ts";
import { MoatError } from "../lib/errors.ts";
import { encodeFrame } from "../lib/framer.ts";
import { verifyConsistency } from "../lib/merkle.ts";
import {
  decodeShipReady,
  decodeShipReceipt,
  encodeShipBatch,
  Kind,
  SHIP_RECEIPT_MAX,
} from "../lib/protocol.ts";
import { RECEIPT_INTERVAL_MS } from "../lib/server/receipts.ts";
import {
  ship,
  type ShipOptions,
  type ShipperEvent,
} from "../lib/ship/shipper.ts";
import { ShipBacklog } from "../lib/ship/backlog.ts";
import { openSpool } from "../lib/ship/spool.ts";
import { readShipState } from "../lib/ship/state.ts";
import { openVault, type Vault } from "../lib/vault/store.ts";
import { tempDir } from "./_e2e.ts";
import {
  openFramed,
  readAll,
  startMemoryServer,
  type TestServer,
  within,
} from "./_server.ts";

const tmp = tempDir("moat-receipts-");
after(() => tmp[Symbol.dispose]());
let counter = 0;
function freshDir(): string {
  const dir = path.join(tmp.dir, `t${counter++}`);
  fs.mkdirSync(dir);
  return dir;
}

const te = new TextEncoder();

function lines(from: number, to: number, tag = "line"): string {
  let s = "";
  for (let i = from; i <= to; i++) s += `${tag} ${i}\n`;
  return s;
}

async function* once(text: string) {
  yield te.encode(text);
}

/** A vault in `dir` served in-process; `wrap` may make it lie. */
async function serve(dir: string, wrap?: (vault: Vault) => Vault) {
  const real = await openVault(dir, { sealIntervalMs: 0 });
  const vault = wrap ? wrap(real) : real;
  const t = await startMemoryServer({ vault });
  return {
    t,
    vault: real,
    async [Symbol.asyncDispose]() {
      await t[Symbol.asyncDispose]();
      await real.close();
    },
  };
}

/** The vault with one method replaced. */
function lying(vault: Vault, name: string, fn: unknown): Vault {
  return new Proxy(vault, {
    get(target, prop) {
      if (prop === name) return fn;
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

/** Ships `text` (or what the spool holds, with no text) and returns the events. */
async function shipTo(
  t: TestServer,
  state: string,
  text: string | undefined,
  extra: Partial<ShipOptions> = {},
): Promise<{ lastSeq: number; events: ShipperEvent[] }> {
  const events: ShipperEvent[] = [];
  const lastSeq = await ship({
    client: {
      net: t.net,
      server: { hostname: "127.0.0.1", port: t.port },
      version: "0.0.0-test",
      timeoutMs: 10_000,
    },
    inputs: text === undefined ? [] : ["-"],
    stdin: once(text ?? ""),
    statePath: state,
    source: "app",
    signal: new AbortController().signal,
    onEvent: (e) => events.push(e),
    ...extra,
  });
  return { lastSeq, events };
}

/** Ships and expects ERR_ROLLBACK; returns its message. */
async function shipRefused(
  t: TestServer,
  state: string,
  text: string | undefined,
  extra: Partial<ShipOptions> = {},
): Promise<string> {
  let message = "";
  await assert.rejects(shipTo(t, state, text, extra), (err: unknown) => {
    assert.ok(err instanceof MoatError, String(err));
    assert.equal(err.code, "ERR_ROLLBACK", err.message);
    assert.equal(err.exitCode, 5);
    message = err.message;
    return true;
  });
  assert.match(message, /^ROLLBACK OR FORK: /);
  assert.doesNotMatch(message, /[\n\r]/);
  return message;
}

/** Puts unacknowledged lines in a state's spool, as a shipper cut off would. */
async function spoolLines(state: string, text: string): Promise<void> {
  const spool = await openSpool(state, { source: "app" });
  try {
    const input = await spool.input("-");
    let offset = 0;
    await spool.append(
      input.id,
      text.trimEnd().split("\n").map((l) => {
        offset += l.length + 1;
        return { line: te.encode(l), partial: false, dev: 0, ino: 0, offset };
      }),
    );
  } finally {
    await spool.close();
  }
}

/** What a state and its spool hold. */
async function held(state: string) {
  const saved = await readShipState(state);
  assert.ok(saved);
  const spool = await openSpool(state, { source: "app" });
  const out = {
    acked: saved.acked,
    lastSeq: spool.lastSeq,
    vaultKey: saved.vaultKey,
    version: saved.version,
    checkpoint: saved.checkpoint === undefined || saved.vaultKey === undefined
      ? undefined
      : openCheckpoint(saved.checkpoint, parseVerifier(saved.vaultKey)),
  };
  await spool.close();
  return out;
}

function copyDir(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true });
}

test("ship keeps the vault's key and checkpoint in its state, and a restart checks the next one", async () => {
  const dir = freshDir();
  const state = path.join(dir, "ship.json");
  await using s = await serve(path.join(dir, "vault"));
  const first = await shipTo(s.t, state, lines(1, 30));
  assert.equal(first.lastSeq, 30);
  const pinned = first.events.filter((e) => e.type === "pinned");
  assert.deepEqual(pinned, [{
    type: "pinned",
    key: s.vault.checkpointVerifier,
  }]);
  const h = await held(state);
  assert.equal(h.version, 2);
  assert.equal(h.vaultKey, s.vault.checkpointVerifier);
  assert.equal(h.checkpoint?.size, 30);
  assert.equal(h.acked, 30);
  assert.equal(h.lastSeq, 30);
  const second = await shipTo(s.t, state, lines(31, 40));
  assert.equal(second.lastSeq, 40);
  assert.ok(!second.events.some((e) => e.type === "pinned"));
  assert.equal((await held(state)).checkpoint?.size, 40);
});

test("the server sends an older shipper no receipts, and a new one a receipt first, then at most one a second, none behind an ack it does not cover", async () => {
  const dir = freshDir();
  await using s = await serve(path.join(dir, "vault"));
  // An older shipper: no "receipts" in its Hello.
  const old = await openFramed(s.t, "ship", { hello: { source: "old" } });
  let frame = await within(old.reader.readFrame(), "ship ready");
  assert.equal(frame?.type, Kind.ShipReady);
  assert.equal(decodeShipReady(frame!.payload).vaultKey, undefined);
  await old.send(
    Kind.ShipBatch,
    encodeShipBatch([{ seq: 1, ts: 1, line: te.encode("a"), partial: false }]),
  );
  await old.conn.closeWrite();
  const rest = await readAll(old.conn);
  // One ShipAck frame (5 + 8 bytes), nothing else.
  assert.equal(rest.length, 13);
  assert.equal(rest[0], Kind.ShipAck);

  // A shipper with a frame limit below the largest receipt gets none.
  const small = await openFramed(s.t, "ship", {
    hello: { source: "small", receipts: 0, maxFrameSize: SHIP_RECEIPT_MAX - 1 },
  });
  frame = await within(small.reader.readFrame(), "ship ready");
  assert.equal(decodeShipReady(frame!.payload).vaultKey, undefined);
  small.conn.close();

  const c = await openFramed(s.t, "ship", {
    hello: { source: "new", receipts: 0 },
  });
  frame = await within(c.reader.readFrame(), "ship ready");
  const ready = decodeShipReady(frame!.payload);
  assert.equal(ready.vaultKey, s.vault.checkpointVerifier);
  const key = parseVerifier(ready.vaultKey!);
  frame = await within(c.reader.readFrame(), "the first receipt");
  assert.equal(frame?.type, Kind.ShipReceipt);
  let receipt = decodeShipReceipt(frame!.payload);
  let cp = openCheckpoint(receipt.note, key);
  assert.deepEqual([receipt.from, cp.size, receipt.proof.length], [0, 0, 0]);

  const started = performance.now();
  const batches = 40;
  const reading = (async () => {
    const seen: { type: number; value: number }[] = [];
    let acked = 0;
    for (;;) {
      const f = await within(c.reader.readFrame(), "acks and receipts");
      if (f === null) return seen;
      if (f.type === Kind.ShipAck) {
        acked = new DataView(f.payload.buffer, f.payload.byteOffset)
          .getFloat64(0, true);
        seen.push({ type: f.type, value: acked });
        // Everything acknowledged: ask for the receipt now.
        if (acked === batches) await c.send(Kind.ShipSync, new Uint8Array(0));
      } else if (f.type === Kind.ShipReceipt) {
        const r = decodeShipReceipt(f.payload);
        const next = openCheckpoint(r.note, key);
        // Every ack read before it is in its tree, and it extends the last.
        assert.ok(
          next.size >= acked,
          `receipt ${next.size} after ack ${acked}`,
        );
        assert.equal(r.from, cp.size);
        assert.ok(
          verifyConsistency(cp.size, next.size, cp.root, next.root, r.proof),
        );
        cp = next;
        receipt = r;
        seen.push({ type: f.type, value: next.size });
        if (next.size === batches) return seen;
      } else {
        assert.fail(`unexpected frame ${f.type}`);
      }
    }
  })();
  for (let i = 1; i <= batches; i++) {
    await c.send(
      Kind.ShipBatch,
      encodeShipBatch([{
        seq: i,
        ts: i,
        line: te.encode(`l${i}`),
        partial: false,
      }]),
    );
  }
  const seen = await reading;
  const elapsed = performance.now() - started;
  const receipts = seen.filter((f) => f.type === Kind.ShipReceipt).length;
  assert.equal(seen.filter((f) => f.type === Kind.ShipAck).length, batches);
  // One on the first ack, one a second after, one asked for.
  assert.ok(
    receipts <= 2 + Math.ceil(elapsed / RECEIPT_INTERVAL_MS),
    `${receipts} receipts in ${elapsed} ms`,
  );
  c.conn.close();
});

test("ship stops with exit 5 on a vault rolled back to an older copy, naming both checkpoints, its spool intact", async () => {
  const dir = freshDir();
  const vaultDir = path.join(dir, "vault");
  const state = path.join(dir, "ship.json");
  {
    await using s = await serve(vaultDir);
    await shipTo(s.t, state, lines(1, 10));
  }
  copyDir(vaultDir, path.join(dir, "old"));
  {
    await using s = await serve(vaultDir);
    await shipTo(s.t, state, lines(11, 20));
  }
  const before = await held(state);
  assert.equal(before.checkpoint?.size, 20);
  fs.rmSync(vaultDir, { recursive: true });
  fs.renameSync(path.join(dir, "old"), vaultDir);
  await spoolLines(state, lines(21, 25));
  await using s = await serve(vaultDir);
  const message = await shipRefused(s.t, state, undefined);
  const root20 = Buffer.from(before.checkpoint!.root).toString("base64");
  assert.match(
    message,
    /showed checkpoint "moat\/[0-9a-f]+\/[0-9a-f]+" size 10 root \S+/,
  );
  assert.ok(
    message.includes(`size 20 root ${root20} (a smaller tree)`),
    message,
  );
  // Nothing was sent, nothing forgotten.
  const after = await held(state);
  assert.deepEqual(
    [after.acked, after.lastSeq, after.checkpoint?.size],
    [20, 25, 20],
  );
  assert.equal(s.vault.stats.appends, 0);
  // And again on the next start.
  await shipRefused(s.t, state, undefined);
});

test("ship stops with exit 5 on a vault whose newest records were cut", async () => {
  const dir = freshDir();
  const vaultDir = path.join(dir, "vault");
  const state = path.join(dir, "ship.json");
  {
    await using s = await serve(vaultDir);
    await shipTo(s.t, state, lines(1, 10));
  }
  const sizes = segmentSizes(vaultDir);
  {
    await using s = await serve(vaultDir);
    await shipTo(s.t, state, lines(11, 20));
  }
  // Cut every segment back to what it held after the first ten records.
  for (const file of segmentSizes(vaultDir).keys()) {
    const size = sizes.get(file);
    if (size === undefined) fs.rmSync(file);
    else fs.truncateSync(file, size);
  }
  await using s = await serve(vaultDir);
  const message = await shipRefused(s.t, state, lines(21, 22));
  assert.match(message, /size 10 root .* size 20 root .* \(a smaller tree\)/);
});

/** Every file of the vault's source folders with its size. */
function segmentSizes(vaultDir: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const entry of fs.readdirSync(vaultDir, { recursive: true })) {
    const file = path.join(vaultDir, String(entry));
    if (
      /\.seg$|^\d+$/.test(path.basename(file)) && fs.statSync(file).isFile()
    ) {
      out.set(file, fs.statSync(file).size);
    }
  }
  return out;
}

test("ship stops with exit 5 on a fork: two copies of one vault grown apart, shown to the same state", async () => {
  const dir = freshDir();
  const a = path.join(dir, "a");
  const b = path.join(dir, "b");
  const state = path.join(dir, "ship.json");
  const twin = path.join(dir, "twin", "ship.json");
  {
    await using s = await serve(a);
    await shipTo(s.t, state, lines(1, 10));
  }
  copyDir(a, b);
  fs.mkdirSync(path.dirname(twin));
  fs.copyFileSync(state, twin);
  copyDir(`${state}.spool`, `${twin}.spool`);
  {
    await using s = await serve(a);
    await shipTo(s.t, state, lines(11, 20, "a"));
  }
  {
    await using s = await serve(b);
    await shipTo(s.t, twin, lines(11, 20, "b"));
  }
  // The same key, the same origin, the same size, another root.
  await using s = await serve(b);
  const message = await shipRefused(s.t, state, lines(21, 22, "a"));
  assert.match(
    message,
    /size 20 root .* size 20 root .* \(another root at the same size\)/,
  );
  // A larger tree grown apart fails its proof.
  await shipTo(s.t, twin, lines(21, 22, "b"));
  const larger = await shipRefused(s.t, state, undefined);
  // Still refused; the lines it read meanwhile wait in its spool.
  assert.deepEqual([(await held(state)).acked, (await held(state)).lastSeq], [
    20,
    22,
  ]);
  assert.match(
    larger,
    /size 22 root .*whose proof that it extends .*size 20 root .* fails/,
  );
});

test("ship stops with exit 5 on a vault with another key, and --vault-key refuses one at first contact", async () => {
  const dir = freshDir();
  const state = path.join(dir, "ship.json");
  let key: string;
  {
    await using s = await serve(path.join(dir, "a"));
    await shipTo(s.t, state, lines(1, 5));
    key = s.vault.checkpointVerifier;
  }
  await using s = await serve(path.join(dir, "b"));
  const message = await shipRefused(s.t, state, lines(6, 7));
  assert.ok(message.includes(`not the key ${key}`), message);
  assert.ok(
    message.includes(`signs with key ${s.vault.checkpointVerifier}`),
    message,
  );
  // A new state told the key of vault a: vault b is refused before a line is sent.
  const fresh = path.join(dir, "fresh.json");
  await shipRefused(s.t, fresh, lines(1, 2), { vaultKey: key });
  assert.equal((await held(fresh)).acked, 0);
  // Told b's key, it ships and pins nothing new.
  const ok = await shipTo(s.t, fresh, undefined, {
    vaultKey: s.vault.checkpointVerifier,
  });
  assert.equal(ok.lastSeq, 0);
  assert.ok(!ok.events.some((e) => e.type === "pinned"));
});

test("ship stops with exit 5 on a tampered consistency proof, and on a vault that stops signing", async () => {
  const dir = freshDir();
  const vaultDir = path.join(dir, "vault");
  const state = path.join(dir, "ship.json");
  {
    await using s = await serve(vaultDir);
    await shipTo(s.t, state, lines(1, 5));
  }
  {
    await using s = await serve(
      vaultDir,
      (v) =>
        lying(v, "consistencyProof", (...args: [never, number, number]) => {
          const proof = v.consistencyProof(...args).map((h) => h.slice());
          proof[0]![0]! ^= 1;
          return proof;
        }),
    );
    const message = await shipRefused(s.t, state, lines(6, 12));
    assert.match(
      message,
      /whose proof that it extends .* size 5 root .* fails/,
    );
  }
  assert.equal((await held(state)).checkpoint?.size, 5);
  await using s = await serve(
    vaultDir,
    (v) => lying(v, "checkpointVerifier", ""),
  );
  const message = await shipRefused(s.t, state, undefined);
  assert.match(
    message,
    /sends no signed checkpoint, but this shipper holds .* size 5 root /,
  );
});

test("ship --audit-every proves records unaltered, and stops with exit 5 on an altered or missing one", async () => {
  const dir = freshDir();
  const vaultDir = path.join(dir, "vault");
  const state = path.join(dir, "ship.json");
  // Audits run while records are shipped: a slow stdin keeps the session open.
  async function* slow(text: string, until: () => boolean) {
    for (const line of text.split(/(?<=\n)/)) yield te.encode(line);
    while (!until()) await new Promise((r) => setTimeout(r, 20));
  }
  {
    await using s = await serve(vaultDir);
    let audited = 0;
    const events: ShipperEvent[] = [];
    await shipTo(s.t, state, "", {
      stdin: slow(lines(1, 50), () => audited >= 3),
      auditEvery: 6000,
      onEvent: (e) => {
        events.push(e);
        if (e.type === "audited") audited++;
      },
    });
    assert.ok(audited >= 3);
  }
  const alter = (v: Vault) =>
    lying(v, "inclusionProof", (key: never, seq: number, size: number) => {
      const p = v.inclusionProof(key, seq, size);
      const leaf = p.leaf.slice();
      leaf[leaf.length - 1]! ^= 1;
      return { ...p, leaf };
    });
  {
    await using s = await serve(vaultDir, alter);
    const message = await shipRefused(s.t, state, "", {
      stdin: slow(lines(51, 60), () => false),
      auditEvery: 6000,
    });
    assert.match(
      message,
      /audit of record \d+ .* failed: the vault holds another record in its place \(altered\)/,
    );
  }
  const missing = (v: Vault) =>
    lying(v, "inclusionProof", () => {
      throw new RangeError("no such record");
    });
  await using s = await serve(vaultDir, missing);
  const message = await shipRefused(s.t, state, "", {
    stdin: slow(lines(61, 70), () => false),
    auditEvery: 6000,
  });
  assert.match(message, /failed: the vault cannot prove it/);
});

test("ship sends a frame-sized ShipSync only when asked, and a vault without receipts still takes an older state", async () => {
  // A shipper whose state predates receipts: pinned at the first receipt.
  const dir = freshDir();
  const state = path.join(dir, "ship.json");
  await spoolLines(state, lines(1, 3));
  const saved = await readShipState(state);
  assert.equal(saved?.version, 1);
  await using s = await serve(path.join(dir, "vault"));
  const r = await shipTo(s.t, state, undefined);
  assert.equal(r.lastSeq, 3);
  assert.equal((await held(state)).checkpoint?.size, 3);
  // The sync frame is empty.
  assert.deepEqual(
    encodeFrame({ type: Kind.ShipSync, payload: new Uint8Array(0) }),
    Uint8Array.of(Kind.ShipSync, 0, 0, 0, 0),
  );
});

test("ship trims from its spool only what a checkpoint it holds covers", async () => {
  const dir = freshDir();
  const vaultDir = path.join(dir, "vault");
  const state = path.join(dir, "ship.json");
  const backlog = new ShipBacklog();
  const stop = new AbortController();
  {
    // A vault that acknowledges but keeps showing its first checkpoint.
    await using s = await serve(vaultDir, (v) => {
      let first: ReturnType<Vault["checkpoint"]> | undefined;
      return lying(
        v,
        "checkpoint",
        (key: never) => first ??= v.checkpoint(key),
      );
    });
    const shipping = shipTo(s.t, state, lines(1, 20), {
      backlog,
      signal: stop.signal,
    });
    while (backlog.ackedLines < 20) {
      await within(new Promise((r) => setTimeout(r, 10)), "acks");
    }
    stop.abort();
    assert.equal((await shipping).lastSeq, 0);
  }
  let h = await held(state);
  assert.deepEqual([h.acked, h.lastSeq, h.checkpoint?.size], [0, 20, 0]);
  await using s = await serve(vaultDir);
  assert.equal((await shipTo(s.t, state, undefined)).lastSeq, 20);
  h = await held(state);
  assert.deepEqual([h.acked, h.lastSeq, h.checkpoint?.size], [20, 20, 20]);
});
